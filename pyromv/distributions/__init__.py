"""Likelihood heads and fusion distributions (product and mixture of experts)."""

from .detach import detach_distribution
from .fusion import MixtureOfExperts, ProductOfExperts, StratifiedMixture
from .likelihoods import (
    LikelihoodHead,
    build_likelihood,
    register_likelihood,
    registered_likelihoods,
)
from .tabular import MixedColumns, TabularHead

__all__ = [
    "LikelihoodHead",
    "MixedColumns",
    "MixtureOfExperts",
    "ProductOfExperts",
    "StratifiedMixture",
    "TabularHead",
    "build_likelihood",
    "detach_distribution",
    "register_likelihood",
    "registered_likelihoods",
]
