"""MCVAE's objective (plain and sparse) in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood


def _molchanov_kl(log_alpha: Tensor) -> Tensor:
    """Molchanov et al. (2017, eq. 14): -KL ~ k1 sigmoid(k2 + k3 log a) - log(1 + 1/a) / 2 - k1,
    ``log a`` clipped to [-8, 8] as in the official MCVAE code."""
    la = log_alpha.clamp(-8.0, 8.0)
    neg_kl = 0.63576 * torch.sigmoid(1.87320 + 1.48695 * la) - 0.5 * torch.log1p(torch.exp(-la)) - 0.63576
    return -neg_kl


def mcvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-sum_b sum_{c in O_b} [sum_{i in O_b} E_{q(z|x_c)} log p(x_i|z) - beta KL_c]`` with ``K``
    draws per channel (drawn as one ``(K, M, B, D)`` tensor) and the closed-form (or, sparse,
    Molchanov's) KL."""
    K, beta = model.config.num_particles, model.config.beta
    loc, scale, mask = experts(model, batch)  # (B, M, D), (B, M)
    if model.config.sparse:
        log_alpha = model.log_alpha
        scale = torch.exp(0.5 * log_alpha) * (loc.abs() + 1e-8)  # variance alpha mu^2
        kl = _molchanov_kl(log_alpha).sum(-1).expand(mask.shape)
    else:
        kl = gaussian_kl(loc, scale, model.prior_loc, model.prior_scale)  # (B, M)
    strata = mask.transpose(0, 1)  # (M, B)
    z = D.Normal(loc.transpose(0, 1), scale.transpose(0, 1)).rsample((K,))  # (K, M, B, D)
    ll = log_likelihood(model, batch, z, scored=strata)  # (K, M, B)
    ll = torch.where(strata, ll, torch.zeros_like(ll)).mean(0)
    kl = torch.where(mask, kl, torch.zeros_like(kl))
    return -(ll.sum() - beta * kl.sum())
