"""MMVAE's stratified IWAE / DReG-IWAE in plain torch."""

from __future__ import annotations

import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, log_likelihood, mixture_log_prob, stratified_loss


def mmvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MMVAE's stratified DReG-IWAE (or IWAE) with ``K`` particles per expert, summed over rows."""
    K = model.config.num_particles
    family = {"normal": D.Normal, "laplace": D.Laplace}[model.config.distribution]
    loc, scale, mask = experts(model, batch)  # (B, M, D), (B, M)
    loc, scale, strata = loc.transpose(0, 1), scale.transpose(0, 1), mask.transpose(0, 1)  # (M, B, .)
    z = D.Independent(family(loc, scale), 1).rsample((K,))  # (K, M, B, D)
    dreg = model.config.objective == "dreg"
    q_loc, q_scale = (loc.detach(), scale.detach()) if dreg else (loc, scale)
    log_q = mixture_log_prob(family, q_loc, q_scale, strata, z)  # (K, M, B)
    prior_scale = model.log_prior_scale.exp() if model.config.learn_prior_scale else model.prior_scale
    log_prior = D.Independent(family(model.prior_loc, prior_scale), 1).log_prob(z)
    lw = log_likelihood(model, batch, z, scored=strata) + model.config.beta * (log_prior - log_q)
    return stratified_loss(lw, strata, model.config.objective, [z])
