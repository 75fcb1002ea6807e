"""The multimodal adversarial autoencoder's single-optimiser loss in plain torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.batch import MultimodalBatch
from ._common import experts, log_likelihood


def cross_reconstruction(model, batch: MultimodalBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(sum_b (1/|O_b|) sum_{e,m in O_b} log p(x_bm | z_be), codes (M, B, D), strata (M, B),
    weights 1/|O_b| (B,))``."""
    loc, _, mask = experts(model, batch)
    codes, strata = loc.transpose(0, 1), mask.transpose(0, 1)
    weights = 1.0 / strata.sum(0).clamp(min=1).to(loc.dtype)
    recon = (log_likelihood(model, batch, codes, scored=strata) * weights).sum()
    return recon, codes, strata, weights


def _logits(net: nn.Sequential, z: Tensor, detach: bool) -> Tensor:
    h = z
    for layer in net:
        if isinstance(layer, nn.Linear):
            w, b = (layer.weight.detach(), layer.bias.detach()) if detach else (layer.weight, layer.bias)
            h = h @ w.T + b
        else:
            h = torch.relu(h)
    return h[..., 0]


def maae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """Cross reconstruction, ``a * (1/|O_b|) sum_e -log D(z_be)`` (discriminator detached) and
    the discriminator's ``-log D(z~_b) - (1/|O_b|) sum_e log(1 - D(z_be))`` (codes detached) on
    ``B`` prior draws ``z~ = loc + scale * randn``."""
    recon, codes, strata, weights = cross_reconstruction(model, batch)
    net = model.discriminator
    generator = -F.logsigmoid(_logits(net, codes, detach=True)) * strata
    generator = model.config.adversarial_weight * (generator * weights).sum()
    real = model.prior_loc + model.prior_scale * torch.randn(batch.batch_size, model.latent_dim)
    fake = -torch.log1p(-torch.sigmoid(_logits(net, codes.detach(), detach=False))) * strata
    discriminator = -F.logsigmoid(_logits(net, real, detach=False)) + weights * fake.sum(0)
    return -recon + generator + discriminator.sum()
