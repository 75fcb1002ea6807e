"""MVTCAE's objective in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood, poe


def poe_without_prior(model, loc: Tensor, scale: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Product of the observed experts; the prior for a row that observes nothing."""
    mu, sigma = poe(loc, scale, mask.to(loc.dtype), model.prior_loc, model.prior_scale, False)
    empty = ~mask.any(-1, keepdim=True)
    safe_mu = torch.where(empty, model.prior_loc.expand_as(mu), mu)
    safe_sigma = torch.where(empty, model.prior_scale.expand_as(sigma), sigma)
    return safe_mu, safe_sigma


def expert_kls(mu: Tensor, sigma: Tensor, loc: Tensor, scale: Tensor, mask: Tensor) -> Tensor:
    """``sum_{m observed} KL(N(mu, sigma) || N(loc_m, scale_m))`` per row."""
    kl = gaussian_kl(mu.unsqueeze(-2), sigma.unsqueeze(-2), loc, scale)  # (B, M)
    return torch.where(mask, kl, torch.zeros_like(kl)).sum(-1)


def mvtcae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-sum_b [(n-a)/n sum_m E_q log p(x_m|z) - beta ((1-a) KL(q||p) + a/n sum_m KL(q||q_m))]``,
    one reparameterised ``z`` per row, closed-form KLs (``n`` observed modalities of the row)."""
    alpha, beta = model.config.alpha, model.config.beta
    loc, scale, mask = experts(model, batch)
    n = mask.sum(-1).to(loc.dtype)
    mu, sigma = poe_without_prior(model, loc, scale, mask)
    z = D.Normal(mu, sigma).rsample()
    recon = log_likelihood(model, batch, z)
    weight = torch.where(n > 0, (n - alpha) / n.clamp_min(1), torch.ones_like(n))
    kl_prior = gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    kl_experts = expert_kls(mu, sigma, loc, scale, mask)
    objective = weight * recon - beta * ((1 - alpha) * kl_prior + alpha / n.clamp_min(1) * kl_experts)
    return -objective.sum()
