"""TELBO's two stages in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood, poe


def _kl(loc: Tensor, scale: Tensor, z: Tensor, model, analytic: bool) -> Tensor:
    """``KL(N(loc, scale) || p)`` in closed form, or its Monte Carlo estimate averaged over the
    particles of ``z`` ``(K, ..., D)``."""
    if analytic:
        return gaussian_kl(loc, scale, model.prior_loc, model.prior_scale)
    log_q = D.Normal(loc, scale).log_prob(z).sum(-1)
    log_p = D.Normal(model.prior_loc, model.prior_scale).log_prob(z).sum(-1)
    return (log_q - log_p).mean(0)


def telbo_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """Stage 1, summed over rows: ``-E_q sum_m lambda_m log p(x_m | z) + beta KL(q || p)`` with
    ``q`` the joint encoder on complete rows, the product of the observed unimodal experts (no
    prior expert) on the others, the prior on rows observing nothing; ``K`` particles averaged."""
    c = model.config
    j_loc, j_scale = model.joint_params(batch)
    empty = torch.zeros(batch.batch_size, 1, dtype=torch.bool)
    q_loc, q_scale = j_loc, j_scale
    if not all(bool(batch.row_mask(m).all()) for m in model.names):  # complete batches skip the experts
        loc, scale, mask = experts(model, batch)  # (B, M, D), (B, M)
        complete, empty = mask.all(-1, keepdim=True), ~mask.any(-1, keepdim=True)
        p_loc, p_scale = poe(loc, scale, mask.to(loc.dtype), model.prior_loc, model.prior_scale, False)
        p_loc = torch.where(empty, model.prior_loc, p_loc)
        p_scale = torch.where(empty, model.prior_scale, p_scale)
        q_loc, q_scale = torch.where(complete, j_loc, p_loc), torch.where(complete, j_scale, p_scale)
    z = D.Normal(q_loc, q_scale).rsample((c.num_particles,))  # (K, B, D)
    recon = 0.0
    for m in model.names:
        only_m = {n: torch.tensor(n == m) for n in model.names}
        recon = recon + c.lambda_weights.get(m, 1.0) * log_likelihood(model, batch, z, term_masks=only_m)
    kl = _kl(q_loc, q_scale, z, model, c.analytic_kl)
    kl = torch.where(empty.squeeze(-1), torch.zeros_like(kl), kl)  # q = p exactly
    return -(recon.mean(0) - c.beta * kl).sum()


def telbo_unimodal_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """Stage 2, summed over rows: ``sum_{m in O} [-gamma_m E_{q_m} log p(x_m | z) + beta
    KL(q_m || p)]`` with each ``q_m``'s own mean and scale, ``K`` draws per modality (drawn as
    one ``(K, M, B, D)`` tensor)."""
    c = model.config
    loc, scale, mask = experts(model, batch)  # (B, M, D), (B, M)
    strata = mask.transpose(0, 1)  # (M, B)
    loc_t, scale_t = loc.transpose(0, 1), scale.transpose(0, 1)
    z = D.Normal(loc_t, scale_t).rsample((c.num_particles,))  # (K, M, B, D)
    M = len(model.names)
    recon = 0.0
    for i, m in enumerate(model.names):
        copy_i = torch.arange(M).unsqueeze(-1) == i  # (M, 1)
        only = {n: copy_i if n == m else torch.zeros_like(copy_i) for n in model.names}
        recon = recon + c.gamma_weights.get(m, 1.0) * log_likelihood(model, batch, z, term_masks=only, scored=strata)
    kl = _kl(loc_t, scale_t, z, model, c.analytic_kl)  # (M, B)
    kl = torch.where(strata, kl, torch.zeros_like(kl))
    return -(recon.mean(0).sum() - c.beta * kl.sum())
