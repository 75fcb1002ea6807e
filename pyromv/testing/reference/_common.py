"""Shared pieces of the reference losses: experts, likelihoods, Gaussian KL and products."""

from __future__ import annotations

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
