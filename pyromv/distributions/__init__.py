"""Likelihood heads and fusion distributions (product and mixture of experts)."""

from .fusion import MixtureOfExperts, ProductOfExperts
from .likelihoods import (
    LikelihoodHead,
    build_likelihood,
    register_likelihood,
    registered_likelihoods,
)

__all__ = [
    "LikelihoodHead",
    "MixtureOfExperts",
    "ProductOfExperts",
    "build_likelihood",
    "register_likelihood",
    "registered_likelihoods",
]
