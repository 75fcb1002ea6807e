"""Tools for testing and benchmarking pyromv: hand-written reference losses (one per model) and
the check that a model's objective equals its reference."""

from . import reference
from .equality import assert_matches_reference, assert_same_loss_and_grads
from .reference import *  # noqa: F403 (the reference losses, listed in reference.__all__)

__all__ = ["assert_matches_reference", "assert_same_loss_and_grads", "reference", *reference.__all__]
