"""CRMVAE's objective in plain torch."""

from __future__ import annotations

import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood
from .mvtcae import expert_kls, poe_without_prior


def crmvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-sum_b pi [sum_m (E_q log p(x_m|z) + E_{q_m} log p(x_m|z_m)) - beta (sum_m KL(q||q_m)
    + KL(q||p))]``, ``pi = 1 / (n + 1)``: one ``z ~ q(z|X_O)`` then one ``z_m ~ q_m`` of every
    expert per row, each ``z_m`` decoding its own modality only; closed-form KLs."""
    beta = model.config.beta
    loc, scale, mask = experts(model, batch)
    pi = 1.0 / (mask.sum(-1).to(loc.dtype) + 1.0)
    mu, sigma = poe_without_prior(model, loc, scale, mask)
    z = D.Normal(mu, sigma).rsample()
    z_own = D.Normal(loc, scale).rsample()  # (B, M, D)
    recon = log_likelihood(model, batch, z)
    own = {m: j for j, m in enumerate(model.names)}
    recon_own = sum(log_likelihood(model, batch.restrict([m]), z_own[:, j]) for m, j in own.items())
    kl = gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale) + expert_kls(mu, sigma, loc, scale, mask)
    return -(pi * (recon + recon_own - beta * kl)).sum()
