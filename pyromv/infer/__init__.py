"""Objectives (``pyro.infer.ELBO`` subclasses), importance weights and KL schedules."""

from .annealing import KLWarmup
from .bounds import IWAE, SIWAE, StratifiedELBO, StratifiedIWAE
from .elbo import ELBO
from .importance import importance_log_weights, iwae_bound
from .scaling import LatentScaleMessenger, scale_latents
from .subsets import SubsampledELBO

__all__ = [
    "ELBO",
    "IWAE",
    "KLWarmup",
    "LatentScaleMessenger",
    "SIWAE",
    "StratifiedELBO",
    "StratifiedIWAE",
    "SubsampledELBO",
    "importance_log_weights",
    "iwae_bound",
    "scale_latents",
]
