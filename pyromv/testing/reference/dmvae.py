"""DMVAE's sum of joint and unimodal ELBOs with private latents, in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood, poe


def dmvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-sum_b sum_t [sum_{m in O} log p(x_m | z_t, w_{t,m}) - beta KL(q_t || p)
    - beta sum_{m in O} KL(q(w_m|x_m) || p)]`` over the joint term ``t = 0`` (PoE with the prior
    of the observed experts; dropped on rows observing one modality when the unimodal terms have
    the prior expert too) and the unimodal terms ``t = m`` (rows observing ``m``), one ``z``
    per (term, row) drawn first, then one ``w_m`` per (term, row) for each modality in order."""
    names = model.names
    loc, scale, mask = experts(model, batch)  # (B, M, D), (B, M)
    j_mu, j_sigma = poe(loc, scale, mask, model.prior_loc, model.prior_scale, True)
    if model.config.unimodal_prior_expert:
        u_mu, u_sigma = poe(loc.unsqueeze(-2), scale.unsqueeze(-2), torch.ones_like(mask[..., None]),
                            model.prior_loc, model.prior_scale, True)  # each expert with the prior
    else:
        u_mu, u_sigma = loc, scale
    mu = torch.cat([j_mu.unsqueeze(0), u_mu.transpose(0, 1)])  # (1 + M, B, D)
    sigma = torch.cat([j_sigma.unsqueeze(0), u_sigma.transpose(0, 1)])
    joint = torch.ones_like(mask[:, :1])
    if model.config.unimodal_prior_expert:  # a row observing one modality counts that ELBO once
        joint = mask.sum(-1, keepdim=True) != 1
    active = torch.cat([joint, mask], -1).transpose(0, 1)  # (1 + M, B)
    z = D.Normal(mu, sigma).rsample()
    kl = torch.where(active, gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale), torch.zeros(()))
    private = None
    if model.private_dim:
        private = {}
        zeros = torch.zeros(model.private_dim)
        for j, m in enumerate(names):
            w_loc, w_scale = model.private_encoders[m](model.likelihoods[m].encoder_input(batch.data[m]))
            private[m] = D.Normal(w_loc.expand(mu.shape[:2] + w_loc.shape[-1:]),
                                  w_scale.expand(mu.shape[:2] + w_loc.shape[-1:])).rsample()
            w_kl = gaussian_kl(w_loc, w_scale, zeros, torch.ones_like(zeros))  # (B,)
            kl = kl + torch.where(active & mask[:, j], w_kl, torch.zeros(()))
    recon = log_likelihood(model, batch, z, scored=active, private=private)
    return -(recon - model.config.beta * kl).sum()
