"""MoPoE's paper estimator, stratified ELBO and stratified IWAE / DReG / SIWAE in plain torch,
with or without private latents ``w_m``."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood, mixture_log_prob, stratified_loss


def _mopoe_subset_posteriors(model, batch: MultimodalBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Each subset's product of experts ``(S, B, D)`` and the subsets inside each row ``(S, B)``."""
    loc, scale, observed = experts(model, batch)  # (B, M, D), (B, M)
    member = model.membership  # (S, M)
    inside = (member.unsqueeze(1) <= observed.unsqueeze(0)).all(-1)  # (S, B)
    precision = scale**-2
    total = torch.einsum("sm,bmd->sbd", member.to(loc.dtype), precision)  # sums over each subset's members
    weighted = torch.einsum("sm,bmd->sbd", member.to(loc.dtype), precision * loc)
    if model.config.prior_expert:
        total = total + model.prior_scale**-2
        weighted = weighted + model.prior_loc * model.prior_scale**-2
    return weighted / total, total.rsqrt(), inside


def _private_posteriors(model, batch: MultimodalBatch) -> dict[str, tuple[Tensor, Tensor]]:
    """``q(w_m | x_m)``'s location and scale ``(B, D_w)`` of every modality."""
    return {m: model.private_encoders[m](model.likelihoods[m].encoder_input(batch.data[m])) for m in model.names}


def _private_kl(model, batch: MultimodalBatch, posteriors: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
    """``sum_m [row observes m] KL(q(w_m | x_m) || N(0, I))`` of each row ``(B,)``."""
    total = 0.0
    for m, (loc, scale) in posteriors.items():
        kl = gaussian_kl(loc, scale, torch.zeros_like(loc), torch.ones_like(scale))
        total = total + torch.where(batch.row_mask(m), kl, torch.zeros_like(kl))
    return total


def mopoe_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MoPoE's paper estimator of ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]``: one subset
    per row (systematic draw over the row's subsets: one uniform for the batch), one ``z`` from
    it, each modality decoded once, the KL averaged over the row's subsets; summed over rows.
    With private latents, then one ``w_m ~ q(w_m | x_m)`` per modality (closed-form KL, rows
    observing ``m``)."""
    mu, sigma, inside = _mopoe_subset_posteriors(model, batch)
    B = inside.shape[1]
    counts = inside.sum(0)  # (B,)
    if model.config.subset_sampling == "balanced":
        u = (torch.rand(()) + torch.arange(B) / B) % 1.0
    else:
        u = torch.rand(B)
    rank = torch.minimum((u * counts).floor().long(), (counts - 1).clamp(min=0))
    pick = (inside.long().cumsum(0) > rank).long().argmax(0)  # (B,) the rank-th inside subset
    rows = torch.arange(B)
    z = D.Normal(mu[pick, rows], sigma[pick, rows]).rsample()  # (B, D)
    weights = inside / counts.clamp(min=1)
    kl = (weights * gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)).sum(0)
    private = None
    if model.private_dim:
        posteriors = _private_posteriors(model, batch)
        private = {m: D.Normal(loc, scale).rsample() for m, (loc, scale) in posteriors.items()}
        kl = kl + _private_kl(model, batch, posteriors)
    recon = log_likelihood(model, batch, z, private=private)
    has = counts > 0
    return -torch.where(has, recon - model.config.beta * kl, torch.zeros_like(kl)).sum()


def mopoe_stratified_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MoPoE's ``"stratified_elbo"``: ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]`` over the
    subsets inside each row, one sample from every subset (and one ``w_m`` per subset), summed
    over rows."""
    mu, sigma, inside = _mopoe_subset_posteriors(model, batch)
    S = inside.shape[0]
    z = D.Normal(mu, sigma).rsample((1,))  # one particle, as the vectorised objective draws it
    kl = gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    private = None
    if model.private_dim:
        posteriors = _private_posteriors(model, batch)
        private = {m: D.Normal(loc, scale).rsample((1, S)) for m, (loc, scale) in posteriors.items()}
        kl = kl + _private_kl(model, batch, posteriors)
    recon = log_likelihood(model, batch, z, scored=inside, private=private)[0]  # (S, B)
    term = torch.where(inside, recon - model.config.beta * kl, torch.zeros_like(kl))
    weights = inside / inside.sum(0, keepdim=True).clamp(min=1)  # a row with no subset inside adds 0
    return -(weights * term).sum()


def mopoe_iwae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MoPoE's ``"iwae"``, ``"dreg"`` and ``"siwae"``: ``K`` draws from every subset inside a row,
    weighted by the row's mixture of its subsets' products (``q(z|X) = mean_s q_s(z)``), and
    ``K`` draws of each ``w_m`` per subset; the stratified bound of
    :func:`~pyromv.testing.reference._common.stratified_loss`, summed over rows."""
    c = model.config
    K = c.num_particles
    mu, sigma, inside = _mopoe_subset_posteriors(model, batch)
    S = inside.shape[0]
    z = D.Normal(mu, sigma).rsample((K,))  # (K, S, B, D)
    dreg = c.objective == "dreg"
    q_mu, q_sigma = (mu.detach(), sigma.detach()) if dreg else (mu, sigma)
    log_q = mixture_log_prob(D.Normal, q_mu, q_sigma, inside, z)  # (K, S, B)
    log_p = D.Independent(D.Normal(model.prior_loc, model.prior_scale), 1).log_prob(z)
    latents, private = [z], None
    if model.private_dim:
        private = {}
        for m, (loc, scale) in _private_posteriors(model, batch).items():
            w = D.Normal(loc, scale).rsample((K, S))  # (K, S, B, D_w)
            if dreg:
                loc, scale = loc.detach(), scale.detach()
            log_ratio = (D.Normal(0.0, 1.0).log_prob(w) - D.Normal(loc, scale).log_prob(w)).sum(-1)
            log_p = log_p + torch.where(batch.row_mask(m), log_ratio, torch.zeros_like(log_ratio))
            private[m] = w
            latents.append(w)
    lw = log_likelihood(model, batch, z, scored=inside, private=private) + c.beta * (log_p - log_q)
    return stratified_loss(lw, inside, c.objective, latents)
