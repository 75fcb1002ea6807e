"""MMVAE's stratified IWAE / DReG-IWAE in plain torch."""

from __future__ import annotations

import math

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, log_likelihood


def mmvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MMVAE's stratified DReG-IWAE (or IWAE) with ``K`` particles per expert, summed over rows."""
    K = model.config.num_particles
    family = {"normal": D.Normal, "laplace": D.Laplace}[model.config.distribution]
    loc, scale, mask = experts(model, batch)  # (B, M, D), (B, M)
    loc, scale, strata = loc.transpose(0, 1), scale.transpose(0, 1), mask.transpose(0, 1)  # (M, B, .)
    z = D.Independent(family(loc, scale), 1).rsample((K,))  # (K, M, B, D)
    dreg = model.config.objective == "dreg"
    q_loc, q_scale = (loc.detach(), scale.detach()) if dreg else (loc, scale)
    comp = D.Independent(family(q_loc, q_scale), 1).log_prob(z.unsqueeze(-3))  # (K, M, M_j, B)
    log_w = torch.where(strata, torch.zeros_like(strata, dtype=z.dtype), torch.full_like(strata, -math.inf,
                                                                                           dtype=z.dtype))
    log_w = log_w - log_w.logsumexp(0, keepdim=True)
    log_q = torch.logsumexp(comp + log_w, -2)  # (K, M, B)
    prior_scale = model.log_prior_scale.exp() if model.config.learn_prior_scale else model.prior_scale
    log_prior = D.Independent(family(model.prior_loc, prior_scale), 1).log_prob(z)
    beta = model.config.beta
    lw = log_likelihood(model, batch, z, scored=strata) + beta * (log_prior - log_q)
    lw = torch.where(strata, lw, torch.zeros_like(lw))
    weights = strata / strata.sum(0, keepdim=True)
    bound = ((torch.logsumexp(lw, 0) - math.log(K)) * weights).sum()
    if not dreg:
        return -bound
    normalized = torch.softmax(lw.detach(), 0)
    if z.requires_grad:
        z.register_hook(lambda grad: grad * normalized.unsqueeze(-1))
    surrogate = (weights * (normalized * lw).sum(0)).sum()
    return -(bound.detach() + surrogate - surrogate.detach())
