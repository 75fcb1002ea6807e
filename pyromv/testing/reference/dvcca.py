"""DVCCA's (VCCA and VCCA-private) ELBO in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import gaussian_kl, log_likelihood, poe


def dvcca_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-sum_b [sum_{m in O} log p(x_m | z, h_m) - beta KL(q(z|x_1) || p) - beta sum_{m in O}
    KL(q(h_m|x_m) || p)]``; rows missing ``x_1`` use ``PoE(p, other observed experts)``. One ``z``
    per row drawn first, then each ``h_m`` in modality order."""
    view = model.view
    mu, sigma = model.encoders[view](model.likelihoods[view].encoder_input(batch.data[view]))
    others = [m for m in model.names if m != view]
    has_view = batch.row_mask(view).unsqueeze(-1)
    if others:
        if not model.config.poe_extension and bool((~has_view.squeeze(-1) & torch.stack(
                [batch.row_mask(m) for m in others], -1).any(-1)).any()):
            raise ValueError(f"rows miss the encoding view {view!r}")
        if model.config.poe_extension:
            parts = [model.encoders[m](model.likelihoods[m].encoder_input(batch.data[m])) for m in others]
            seen = torch.stack([batch.row_mask(m) for m in others], -1)
            f_mu, f_sigma = poe(torch.stack([p[0] for p in parts], -2), torch.stack([p[1] for p in parts], -2),
                                seen, model.prior_loc, model.prior_scale, True)
        else:
            f_mu, f_sigma = model.prior_loc.expand_as(mu), model.prior_scale.expand_as(sigma)
    else:
        f_mu, f_sigma = model.prior_loc.expand_as(mu), model.prior_scale.expand_as(sigma)
    mu, sigma = torch.where(has_view, mu, f_mu), torch.where(has_view, sigma, f_sigma)
    z = D.Normal(mu, sigma).rsample()
    kl = gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    private = None
    if model.private_dim:
        private = {}
        zeros = torch.zeros(model.private_dim)
        for m in model.names:
            h_loc, h_scale = model.private_encoders[m](model.likelihoods[m].encoder_input(batch.data[m]))
            private[m] = D.Normal(h_loc, h_scale).rsample()
            h_kl = gaussian_kl(h_loc, h_scale, zeros, torch.ones_like(zeros))
            kl = kl + torch.where(batch.row_mask(m), h_kl, torch.zeros(()))
    recon = log_likelihood(model, batch, z, private=private)
    return -(recon - model.config.beta * kl).sum()
