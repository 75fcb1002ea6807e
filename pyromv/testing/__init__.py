"""Tools for testing and benchmarking pyromv (hand-written reference losses, one per model)."""

from . import reference
from .reference import *  # noqa: F403 (the reference losses, listed in reference.__all__)

__all__ = ["reference", *reference.__all__]
