"""MMVAE+'s stratified IWAE / DReG-IWAE / ELBO in plain torch, with auxiliary priors."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, log_likelihood, mixture_log_prob, stratified_loss

FAMILIES = {"normal": D.Normal, "laplace": D.Laplace}


def mmvae_plus_log_weights(model, batch: MultimodalBatch, log_prior_u=None) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Log-weights ``(K, M, B)`` of MMVAE+'s strata, the strata mask ``(M, B)`` and the sampled
    latents ``[u, w]``; ``log_prior_u(u)`` replaces the prior of ``u`` (CMVAE's mixture)."""
    c = model.config
    K, family, names = c.num_particles, FAMILIES[c.distribution], model.names
    loc, scale, mask = experts(model, batch)
    loc, scale, strata = loc.transpose(0, 1), scale.transpose(0, 1), mask.transpose(0, 1)  # (M, B, .)
    w_loc, w_scale = zip(*[model.private_encoders[m](model.likelihoods[m].encoder_input(batch.data[m]))
                           for m in names])
    w_loc, w_scale = torch.stack(w_loc), torch.stack(w_scale)  # (M, B, Dw)
    u = D.Independent(family(loc, scale), 1).rsample((K,))  # (K, M, B, D)
    w = D.Independent(family(w_loc, w_scale), 1).rsample((K,))  # (K, M, B, Dw)
    if c.objective == "dreg":  # log q rescored with detached parameters
        loc, scale, w_loc, w_scale = loc.detach(), scale.detach(), w_loc.detach(), w_scale.detach()
    log_q = mixture_log_prob(family, loc, scale, strata, u) + D.Independent(family(w_loc, w_scale), 1).log_prob(w)
    aux_scale = model.private_dim * torch.softmax(model.auxiliary_logits, -1)
    private = {}
    for n, name in enumerate(names):
        draw = family(torch.zeros_like(aux_scale[n]), aux_scale[n]).rsample(w.shape[:-1])
        own = (torch.arange(len(names)) == n).view(-1, 1, 1)
        private[name] = torch.where(own, w, draw)
    if log_prior_u is None:
        prior_scale = model.log_prior_scale.exp() if c.learn_prior_scale else model.prior_scale
        log_p_u = D.Independent(family(model.prior_loc, prior_scale), 1).log_prob(u)
    else:
        log_p_u = log_prior_u(u)
    log_p_w = D.Independent(family(torch.zeros(model.private_dim), torch.ones(model.private_dim)), 1).log_prob(w)
    lw = log_likelihood(model, batch, u, scored=strata, private=private) + c.beta * (log_p_u + log_p_w - log_q)
    return lw, strata, [u, w]


def mmvae_plus_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MMVAE+'s objective (``model.config.objective``), summed over rows."""
    lw, strata, latents = mmvae_plus_log_weights(model, batch)
    return stratified_loss(lw, strata, model.config.objective, latents)
