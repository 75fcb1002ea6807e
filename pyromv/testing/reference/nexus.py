"""Nexus's bottom and top ELBOs with forced perceptual dropout, in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import gaussian_kl


def _dropped(observed: Tensor, hit: Tensor, frac: Tensor, keys: Tensor) -> Tensor:
    """Row by row: a hit row with ``n >= 2`` observed messages drops the ``k = floor(frac (n - 1)) + 1``
    observed ones with the smallest keys."""
    out = torch.zeros_like(observed)
    for b in range(observed.shape[0]):
        idx = observed[b].nonzero().flatten().tolist()
        n = len(idx)
        if n < 2 or not bool(hit[b]):
            continue
        k = int(float(frac[b]) * (n - 1)) + 1
        for j in sorted(idx, key=lambda i: float(keys[b, i]))[:k]:
            out[b, j] = True
    return out


def nexus_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-sum_b [sum_{m in O} (lambda_m log p(x_m | z_m) - beta beta_m KL(q(z_m|x_m) || N(0, I))
    + gamma_m log N(sg z_m; f_m(z_s), s^2)) - beta beta_s KL(q(z_s | msg) || N(0, I))]``, msg the
    mean of ``Linear_m(sg z_m)`` over the observed, not dropped modalities (the prior where none).

    Draws in the guide's order: ``z_m`` for each modality (every row), then (training, rate > 0)
    ``rand(B)`` hit, ``rand(B)`` subset size, ``rand(B, M)`` keys, then ``z_s``.
    """
    c = model.config
    names = model.names
    observed = torch.stack([batch.row_mask(m) for m in names], -1)  # (B, M)
    total = torch.zeros(observed.shape[0])
    bottoms = {}
    for j, m in enumerate(names):
        x = batch.data[m]
        loc, scale = model.encoders[m](model.likelihoods[m].encoder_input(x))
        z = D.Normal(loc, scale).rsample()
        bottoms[m] = z
        lp = model.likelihoods[m](model.decoders[m](z)).log_prob(x)
        features = batch.feature_mask(m)
        if features is not None:
            lp = lp * features
        lp = lp.reshape(lp.shape[0], -1).sum(-1)
        kl = gaussian_kl(loc, scale, torch.zeros(()), torch.ones(()))
        term = model.likelihood_weights[m] * lp - c.beta * c.bottom_beta * kl
        total = total + torch.where(observed[:, j], term, torch.zeros(()))
    msgs = torch.stack([model.message_encoders[m](bottoms[m].detach()) for m in names], 1)  # (B, M, Dm)
    keep = observed.clone()
    if model.training and c.dropout_rate > 0:
        hit = torch.rand(observed.shape[0]) < c.dropout_rate
        frac = torch.rand(observed.shape[0])
        keys = torch.rand(observed.shape)
        keep = observed & ~_dropped(observed, hit, frac, keys)
    count = keep.sum(-1)
    mean = (msgs * keep[..., None]).sum(1) / count.clamp(min=1)[:, None]
    loc, scale = model.top_encoder(mean)
    none = (count == 0)[:, None]
    loc = torch.where(none, model.prior_loc, loc)
    scale = torch.where(none, model.prior_scale, scale)
    z_top = D.Normal(loc, scale).rsample()
    total = total - c.beta * c.top_beta * gaussian_kl(loc, scale, model.prior_loc, model.prior_scale)
    for j, m in enumerate(names):
        lp = D.Normal(model.top_decoders[m](z_top), c.top_scale).log_prob(bottoms[m].detach()).sum(-1)
        total = total + torch.where(observed[:, j], c.gammas.get(m, c.gamma) * lp, torch.zeros(()))
    return -total.sum()
