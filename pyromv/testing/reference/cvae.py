"""The CVAE's ELBO (Sohn, Lee & Yan 2015) in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import gaussian_kl


def _zero_filled(model, batch: MultimodalBatch, name: str) -> Tensor:
    """Encoder input of ``name`` flattened, zero at missing rows and entries."""
    x = model.likelihoods[name].encoder_input(batch.data[name])
    keep = batch.obs_mask[name]
    while keep.dim() < x.dim():
        keep = keep.unsqueeze(-1)
    return (x * keep.to(x.dtype)).flatten(1)


def cvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-sum_b [1_y (1/K) sum_k w_y log p(y | z_k, c) - beta KL(q(z | y, c) || p(z | c))]`` (analytic
    KL) or with ``beta (log p(z_k | c) - log q(z_k | y, c))`` in place of the KL (Monte Carlo);
    ``c`` enters every network zero-filled with one availability bit per modality; rows missing
    ``y`` take ``q = p(z | c)``. The ``K`` draws ``z ~ q`` are the only random numbers."""
    cfg = model.config
    y = model.main
    B = batch.batch_size
    parts = []
    for m in model.conditioning:
        parts += [_zero_filled(model, batch, m), batch.row_mask(m).unsqueeze(-1).float()]
    c = torch.cat(parts, -1) if parts else torch.zeros(B, 0)
    if model.prior_net is not None:
        p_loc, p_scale = model.prior_net(c)
    else:
        p_loc = model.prior_loc.expand(B, -1)
        p_scale = model.prior_scale.expand(B, -1)
    q_loc, q_scale = model.recognition(torch.cat([_zero_filled(model, batch, y), c], -1))
    has_y = batch.row_mask(y)
    q_loc = torch.where(has_y.unsqueeze(-1), q_loc, p_loc)
    q_scale = torch.where(has_y.unsqueeze(-1), q_scale, p_scale)
    K = cfg.num_particles
    z = D.Normal(q_loc, q_scale).rsample((K,) if K > 1 else ())  # ([K,] B, D)
    zs = z if K > 1 else z.unsqueeze(0)
    recon = torch.zeros(zs.shape[:-1])
    if bool(has_y.any()):
        h = torch.cat([zs, c.expand(K, B, c.shape[-1])], -1)[:, has_y]  # decode scored rows only
        lp = model.likelihoods[y](model.decoders[y](h)).log_prob(batch.data[y][has_y].expand(K, *h.shape[1:-1],
                                                                                              *model.modality(y).shape))
        features = batch.feature_mask(y)
        if features is not None:
            lp = lp * features[has_y]
        lp = lp.flatten(2).sum(-1) if lp.dim() > 2 else lp
        recon[:, has_y] = model.likelihood_weights[y] * lp
    if cfg.analytic_kl:
        latent = -gaussian_kl(q_loc, q_scale, p_loc, p_scale)
        return -(recon.mean(0).sum() + cfg.beta * latent.sum())
    log_p = D.Normal(p_loc, p_scale).log_prob(zs).sum(-1)
    log_q = D.Normal(q_loc, q_scale).log_prob(zs).sum(-1)
    return -(recon + cfg.beta * (log_p - log_q)).mean(0).sum()
