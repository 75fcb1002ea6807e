"""The multimodal WAE-MMD loss in plain torch."""

from __future__ import annotations

import torch
from torch import Tensor

from ...data.batch import MultimodalBatch
from .maae import cross_reconstruction


def _imq(x: Tensor, y: Tensor, constants: list[float]) -> Tensor:
    sq = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1) - 2.0 * x @ y.T
    return sum(C / (C + sq) for C in constants)


def mwae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """Cross reconstruction plus ``B * lambda * MMD^2`` (unbiased, inverse multiquadratics summed
    over ``C = 2 d s sigma^2``) between the observed codes and as many prior draws."""
    c = model.config
    recon, codes, strata, _ = cross_reconstruction(model, batch)
    pooled = codes.transpose(0, 1)[strata.transpose(0, 1)]  # row-major: another order, the same set
    n = pooled.shape[0]
    if n < 2:
        return -recon
    prior = model.prior_loc + model.prior_scale * torch.randn(n, c.latent_dim)
    constants = [2.0 * c.latent_dim * float(s) * c.prior_scale**2 for s in c.kernel_scales]
    off = ~torch.eye(n, dtype=torch.bool)
    mmd = (_imq(pooled, pooled, constants)[off].sum() / (n * (n - 1))
           + _imq(prior, prior, constants)[off].sum() / (n * (n - 1))
           - 2.0 * _imq(pooled, prior, constants).mean())
    return -recon + batch.batch_size * c.mmd_weight * mmd
