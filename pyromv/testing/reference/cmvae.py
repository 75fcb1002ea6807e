"""CMVAE's objective in plain torch, with the cluster expectation written as the paper does."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import stratified_loss
from .mmvae_plus import FAMILIES, mmvae_plus_log_weights


def cmvae_cluster_term(model, u: Tensor) -> Tensor:
    """``E_{q(c|u)}[log pi_c + log p(u | c) - log q(c | u)]`` with ``q(c | u)`` the softmax of
    ``log pi_c + log p(u | c)`` over the active clusters, shape ``u.shape[:-1]``."""
    family = FAMILIES[model.config.distribution]
    scale = model.log_prior_scale.exp() if model.config.learn_prior_scale else model.prior_scale
    logits = model.cluster_logits.masked_fill(~model.active_clusters, float("-inf"))
    log_pi = torch.log_softmax(logits, -1)
    log_p_u_c = D.Independent(family(model.cluster_means, scale), 1).log_prob(u.unsqueeze(-2))  # (..., C)
    joint = log_pi + log_p_u_c
    q = torch.softmax(joint, -1)
    terms = torch.where(q > 0, joint - q.clamp(min=1e-300).log(), torch.zeros_like(joint))
    return (q * terms).sum(-1)


def cmvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """CMVAE's objective (``model.config.objective``), summed over rows."""
    lw, strata, latents = mmvae_plus_log_weights(model, batch, lambda u: cmvae_cluster_term(model, u))
    return stratified_loss(lw, strata, model.config.objective, latents)
