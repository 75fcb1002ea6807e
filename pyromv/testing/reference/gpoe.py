"""gPoE's ELBO in plain torch: the weighted product of the observed experts, reparameterised
latents and the closed-form (or Monte Carlo) KL to the prior."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood


def gpoe_posterior(model, batch: MultimodalBatch) -> tuple[Tensor, Tensor]:
    """``Lambda = [p] + sum_m mask_m a_m / sigma_m^2`` (the prior also for rows with no expert),
    ``mu = Lambda^-1 ([mu_0 / sigma_0^2] + sum_m mask_m a_m mu_m / sigma_m^2)``; returns ``(loc, scale)``."""
    loc, scale, mask = experts(model, batch)
    a = torch.sigmoid(model.weight_logits)  # (M, D)
    w = mask.unsqueeze(-1) * a / scale**2  # (B, M, D)
    prior = (torch.ones_like(mask[:, :1]) if model.config.prior_expert else ~mask.any(-1, keepdim=True)).to(loc.dtype)
    precision = prior / model.prior_scale**2 + w.sum(-2)
    mean = (prior * model.prior_loc / model.prior_scale**2 + (w * loc).sum(-2)) / precision
    return mean, precision.rsqrt()


def gpoe_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """The negative ELBO with ``K`` particles and weight ``beta``, summed over rows."""
    c = model.config
    q_loc, q_scale = gpoe_posterior(model, batch)
    z = D.Normal(q_loc, q_scale).rsample((c.num_particles,))  # (K, B, D)
    rec = log_likelihood(model, batch, z).mean(0)  # (B,)
    if c.analytic_kl:
        kl = gaussian_kl(q_loc, q_scale, model.prior_loc, model.prior_scale)
    else:
        log_q = D.Normal(q_loc, q_scale).log_prob(z).sum(-1)
        log_p = D.Normal(model.prior_loc, model.prior_scale).log_prob(z).sum(-1)
        kl = (log_q - log_p).mean(0)
    return -(rec - c.beta * kl).sum()
