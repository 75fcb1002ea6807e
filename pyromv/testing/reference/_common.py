"""Shared pieces of the reference losses: experts, likelihoods, Gaussian KL and products."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...data.batch import MultimodalBatch


def experts(model, batch: MultimodalBatch) -> tuple[Tensor, Tensor, Tensor]:
    locs, scales, masks = [], [], []
    for m in model.names:
        loc, scale = model.encoders[m](model.likelihoods[m].encoder_input(batch.data[m]))
        locs.append(loc)
        scales.append(scale)
        masks.append(batch.row_mask(m))
    return torch.stack(locs, -2), torch.stack(scales, -2), torch.stack(masks, -1)


def log_likelihood(model, batch: MultimodalBatch, z: Tensor, term_masks: dict[str, Tensor] | None = None,
                    scored: Tensor | None = None, private: dict[str, Tensor] | None = None) -> Tensor:
    """``sum_m w_m mask_m log p(x_m | z[, w_m])``, shape ``z.shape[:-1]``; only the latents that a
    modality's mask (and ``scored``, broadcastable to ``z.shape[:-1]``) keeps are decoded.
    ``private[m]`` (broadcastable to ``z.shape[:-1] + (D_w,)``) is concatenated to ``z`` as the
    decoder input of modality ``m``."""
    shape = z.shape[:-1]
    total = torch.zeros(shape, dtype=z.dtype, device=z.device)
    for mod in model.modalities:
        rows = batch.row_mask(mod.name)
        if term_masks is not None:
            rows = rows & term_masks[mod.name]
        if scored is not None:
            rows = rows & scored
        rows = rows.expand(shape)
        if not bool(rows.any()):
            continue
        h = z
        if private is not None:
            w = private[mod.name]
            h = torch.cat([z, w.expand(shape + w.shape[-1:])], -1)
        fn = model.likelihoods[mod.name](model.decoders[mod.name](h[rows]))
        lp = fn.log_prob(batch.data[mod.name].expand(shape + mod.shape)[rows])
        features = batch.feature_mask(mod.name)
        if features is not None:
            lp = lp * features.expand(shape + mod.shape)[rows]
        lp = lp.flatten(1).sum(-1) if mod.shape else lp
        total = total + model.likelihood_weights[mod.name] * lp.new_zeros(shape).masked_scatter(rows, lp)
    return total


def gaussian_kl(loc: Tensor, scale: Tensor, prior_loc: Tensor, prior_scale: Tensor) -> Tensor:
    var_ratio = (scale / prior_scale) ** 2
    t1 = ((loc - prior_loc) / prior_scale) ** 2
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log()).sum(-1)


def poe(loc: Tensor, scale: Tensor, mask: Tensor, prior_loc: Tensor, prior_scale: Tensor,
         include_prior: bool) -> tuple[Tensor, Tensor]:
    precision = mask.unsqueeze(-1) / scale**2
    total = precision.sum(-2)
    weighted = (precision * loc).sum(-2)
    if include_prior:
        total = total + prior_scale**-2
        weighted = weighted + prior_loc * prior_scale**-2
    return weighted / total, total.rsqrt()


def mixture_log_prob(family, loc: Tensor, scale: Tensor, strata: Tensor, z: Tensor) -> Tensor:
    """``log (1/|active|) sum_{j active} q_j(z_e)`` for draws ``z`` ``(K, E, B, D)`` of experts
    ``family(loc, scale)`` ``(E, B, D)`` with the active mask ``strata`` ``(E, B)``."""
    comp = torch.distributions.Independent(family(loc, scale), 1).log_prob(z.unsqueeze(-3))  # (K, E, E_j, B)
    log_w = torch.zeros_like(strata, dtype=z.dtype).masked_fill(~strata, float("-inf"))
    log_w = log_w - log_w.logsumexp(0, keepdim=True)
    return torch.logsumexp(comp + log_w, -2)


def stratified_loss(lw: Tensor, strata: Tensor, bound: str, latents: list[Tensor] = ()) -> Tensor:
    """Negative stratified bound from log-weights ``(K, E, B)``: ``"iwae"``, ``"dreg"`` (the
    normalised weights multiply the gradient reaching each of ``latents`` ``(K, E, B, .)``) or
    ``"elbo"``, strata averaged uniformly over the active ones of each row; ``"siwae"``: the log
    of the strata-weighted average of the per-stratum importance averages."""
    K = lw.shape[0]
    lw = torch.where(strata, lw, torch.zeros_like(lw))
    weights = strata / strata.sum(0, keepdim=True)
    if bound == "elbo":
        return -(lw.mean(0) * weights).sum()
    if bound == "siwae":
        terms = torch.where(strata, lw + weights.clamp(min=1e-300).log() - math.log(K), float("-inf"))
        return -torch.logsumexp(terms.flatten(0, 1), 0)[strata.any(0)].sum()
    value = ((torch.logsumexp(lw, 0) - math.log(K)) * weights).sum()
    if bound != "dreg":
        return -value
    normalized = torch.softmax(lw.detach(), 0)
    for z in latents:
        if z.requires_grad:
            z.register_hook(lambda grad: grad * normalized.unsqueeze(-1))
    surrogate = (weights * (normalized * lw).sum(0)).sum()
    return -(value.detach() + surrogate - surrogate.detach())
