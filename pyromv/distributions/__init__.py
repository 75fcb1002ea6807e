"""Likelihood heads and fusion distributions (product and mixture of experts)."""

from .detach import detach_distribution
from .dropout import ImproperLogUniform, VariationalDropoutNormal, log_uniform_kl
from .fusion import (
    AssignedMixture,
    MixtureOfExperts,
    ProductOfExperts,
    StratifiedMixture,
    assign_components,
    select_component,
)
from .gathered import GatheredLikelihood
from .likelihoods import (
    LikelihoodHead,
    build_likelihood,
    register_likelihood,
    registered_likelihoods,
)
from .location_scale import SharedScaleLaplace, SharedScaleNormal
from .tabular import MixedColumns, TabularHead

__all__ = [
    "AssignedMixture",
    "GatheredLikelihood",
    "ImproperLogUniform",
    "LikelihoodHead",
    "MixedColumns",
    "MixtureOfExperts",
    "ProductOfExperts",
    "SharedScaleLaplace",
    "SharedScaleNormal",
    "StratifiedMixture",
    "TabularHead",
    "VariationalDropoutNormal",
    "assign_components",
    "build_likelihood",
    "detach_distribution",
    "log_uniform_kl",
    "register_likelihood",
    "registered_likelihoods",
    "select_component",
]
