"""MVAE's joint ELBO, IWAE and sub-sampled objective in plain torch."""

from __future__ import annotations

import math

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood, poe


def mvae_elbo_reference(model, batch: MultimodalBatch) -> Tensor:
    """Negative joint ELBO of an MVAE (PoE with prior expert, analytic KL), summed over rows."""
    loc, scale, mask = experts(model, batch)
    mu, sigma = poe(loc, scale, mask, model.prior_loc, model.prior_scale, True)
    z = D.Normal(mu, sigma).rsample()
    recon = log_likelihood(model, batch, z)
    kl = gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    return -(recon - model.config.beta * kl).sum()


def mvae_reference_loss(model, batch: MultimodalBatch, num_random_subsets: int | None = None) -> Tensor:
    """MVAE's sub-sampled objective, all terms in one pass: encoders once, one PoE and one ``z``
    per (term, row). The terms of each row (joint over what it observes, its unimodal terms
    unless it observes one modality, ``k`` random subsets of its modalities) are the objective's
    own draw (:meth:`~pyromv.infer.SubsampledELBO.terms`, tested against enumeration)."""
    from ...infer import SubsampledELBO

    k = model.config.num_random_subsets if num_random_subsets is None else num_random_subsets
    loc, scale, mask = experts(model, batch)
    member = SubsampledELBO(num_random_subsets=k).terms(mask)  # (T, B, M)
    mu, sigma = poe(loc.unsqueeze(0), scale.unsqueeze(0), (member & mask).to(loc.dtype), model.prior_loc,
                    model.prior_scale, True)
    z = D.Normal(mu, sigma).rsample()  # (T, B, D)
    term_masks = {m: member[..., j] for j, m in enumerate(model.names)}
    recon = log_likelihood(model, batch, z, term_masks)
    kl = gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    return -(recon - model.config.beta * kl).sum()


def mvae_iwae_reference(model, batch: MultimodalBatch) -> Tensor:
    """MVAE's ``"iwae"``: ``K`` draws from the joint PoE of each row's observed experts (prior
    expert included), ``-sum_rows [logsumexp_k (log p(X|z_k) + beta log p(z_k) / q(z_k)) - log K]``."""
    K = model.config.num_particles
    loc, scale, mask = experts(model, batch)
    mu, sigma = poe(loc, scale, mask, model.prior_loc, model.prior_scale, True)
    z = D.Normal(mu, sigma).rsample((K,))  # (K, B, D)
    log_p = D.Independent(D.Normal(model.prior_loc, model.prior_scale), 1).log_prob(z)
    log_q = D.Independent(D.Normal(mu, sigma), 1).log_prob(z)
    lw = log_likelihood(model, batch, z) + model.config.beta * (log_p - log_q)
    return -(torch.logsumexp(lw, 0) - math.log(K)).sum()
