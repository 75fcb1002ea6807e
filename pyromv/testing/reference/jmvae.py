"""JMVAE-kl in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood, poe


def jmvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """JMVAE-kl's loss summed over rows: ``-E_q log p(X_O | z) + beta KL(q || p)`` with ``q`` the
    joint encoder on complete rows and the product of the observed unimodal experts elsewhere
    (the prior on rows observing nothing), plus ``alpha sum_m KL(q(z|X) || q(z|x_m))`` on
    complete rows; ``K`` particles averaged."""
    c = model.config
    loc, scale, mask = experts(model, batch)  # (B, M, D), (B, M)
    complete, empty = mask.all(-1, keepdim=True), ~mask.any(-1, keepdim=True)
    p_loc, p_scale = poe(loc, scale, mask.to(loc.dtype), model.prior_loc, model.prior_scale, False)
    p_loc = torch.where(empty, model.prior_loc, p_loc)
    p_scale = torch.where(empty, model.prior_scale, p_scale)
    j_loc, j_scale = model.joint_params(batch)
    q_loc, q_scale = torch.where(complete, j_loc, p_loc), torch.where(complete, j_scale, p_scale)
    z = D.Normal(q_loc, q_scale).rsample((c.num_particles,))  # (K, B, D)
    recon = log_likelihood(model, batch, z).mean(0)
    if c.analytic_kl:
        kl = gaussian_kl(q_loc, q_scale, model.prior_loc, model.prior_scale)
    else:
        kl = (D.Normal(q_loc, q_scale).log_prob(z) - D.Normal(model.prior_loc, model.prior_scale).log_prob(z)).sum(-1)
        kl = kl.mean(0)
    kl = torch.where(empty.squeeze(-1), torch.zeros_like(kl), kl)  # q = p exactly: KL 0 (and no noise)
    tied = gaussian_kl(j_loc.unsqueeze(-2), j_scale.unsqueeze(-2), loc, scale).sum(-1)  # (B,)
    penalty = torch.where(complete.squeeze(-1), c.alpha * tied, torch.zeros_like(tied))
    return -(recon - c.beta * kl).sum() + penalty.sum()
