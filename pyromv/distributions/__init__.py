"""Likelihood heads, fusion distributions (product and mixture of experts) and flow posteriors."""

from .detach import detach_distribution
from .dropout import ImproperLogUniform, VariationalDropoutNormal, log_uniform_kl
from .flow_posterior import EmpiricalRows, RowwiseChoice, flow_posterior, masked_autoregressive_flow
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
    "EmpiricalRows",
    "GatheredLikelihood",
    "ImproperLogUniform",
    "LikelihoodHead",
    "MixedColumns",
    "MixtureOfExperts",
    "ProductOfExperts",
    "RowwiseChoice",
    "SharedScaleLaplace",
    "SharedScaleNormal",
    "StratifiedMixture",
    "TabularHead",
    "VariationalDropoutNormal",
    "assign_components",
    "build_likelihood",
    "detach_distribution",
    "flow_posterior",
    "log_uniform_kl",
    "masked_autoregressive_flow",
    "register_likelihood",
    "registered_likelihoods",
    "select_component",
]
