"""mmJSD's training loss in plain torch: stratified reconstruction under the mixture of the
observed unimodal experts, the closed-form Jensen-Shannon term with the dynamic prior, and the
private latents' closed-form KL."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood


def mmjsd_js(loc: Tensor, scale: Tensor, mask: Tensor, prior_loc: Tensor, prior_scale: Tensor) -> Tensor:
    """``sum_{j in {p} ∪ O} pi_j KL(q_j || f)`` per row, ``pi_j = 1 / (|O| + 1)``, ``f`` the
    geometric mean of the prior and the observed experts (``loc``/``scale`` ``(B, M, D)``)."""
    pi = 1.0 / (mask.sum(-1, keepdim=True) + 1.0)  # (B, 1)
    w = (mask * pi).unsqueeze(-1)  # (B, M, 1)
    precision = pi / prior_scale**2 + (w / scale**2).sum(-2)  # (B, D)
    f_loc = (pi * prior_loc / prior_scale**2 + (w * loc / scale**2).sum(-2)) / precision
    f_scale = precision.rsqrt()
    kl_prior = gaussian_kl(prior_loc.expand_as(f_loc), prior_scale.expand_as(f_scale), f_loc, f_scale)
    kl_experts = gaussian_kl(loc, scale, f_loc.unsqueeze(-2), f_scale.unsqueeze(-2))  # (B, M)
    return pi.squeeze(-1) * (kl_prior + (mask * kl_experts).sum(-1))


def mmjsd_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-L`` summed over rows, drawing ``K`` latents per expert (then ``K`` private latents per
    expert and modality), in the Pyro guide's order."""
    c = model.config
    K = c.num_particles
    loc, scale, mask = experts(model, batch)  # (B, M, D), (B, M)
    strata = mask.transpose(0, 1)  # (M, B)
    M = strata.shape[0]
    z = D.Normal(loc.transpose(0, 1), scale.transpose(0, 1)).rsample((K,))  # (K, M, B, D)
    private, kl_private = None, torch.zeros_like(strata, dtype=z.dtype)
    if model.private_dim:
        private = {}
        for m in model.names:
            w_loc, w_scale = model.private_encoders[m](model.likelihoods[m].encoder_input(batch.data[m]))
            private[m] = D.Normal(w_loc, w_scale).rsample((K, M))  # (K, M, B, Dw)
            kl = gaussian_kl(w_loc, w_scale, torch.zeros_like(w_loc), torch.ones_like(w_scale))  # (B,)
            kl_private = kl_private + torch.where(strata & batch.row_mask(m), kl, torch.zeros_like(kl))
    lw = log_likelihood(model, batch, z, scored=strata, private=private) - c.beta * kl_private  # (K, M, B)
    weights = strata / strata.sum(0, keepdim=True).clamp(min=1)
    js = mmjsd_js(loc, scale, mask.to(loc.dtype), model.prior_loc, model.prior_scale)
    bound = (weights * lw.mean(0)).sum() - c.alpha * (weights.sum(0) * js).sum()
    return -bound
