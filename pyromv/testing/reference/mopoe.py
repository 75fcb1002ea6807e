"""MoPoE's paper estimator and stratified ELBO in plain torch."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood


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


def mopoe_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MoPoE's paper estimator of ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]``: one subset
    per row (systematic draw over the row's subsets: one uniform for the batch), one ``z`` from
    it, each modality decoded once, the KL averaged over the row's subsets; summed over rows."""
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
    recon = log_likelihood(model, batch, z)
    weights = inside / counts.clamp(min=1)
    kl = (weights * gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)).sum(0)
    has = counts > 0
    return -torch.where(has, recon - model.config.beta * kl, torch.zeros_like(kl)).sum()


def mopoe_stratified_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MoPoE's ``"stratified_elbo"``: ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]`` over the
    subsets inside each row, one sample from every subset, summed over rows."""
    mu, sigma, inside = _mopoe_subset_posteriors(model, batch)
    z = D.Normal(mu, sigma).rsample((1,))  # one particle, as the vectorised objective draws it
    recon = log_likelihood(model, batch, z, scored=inside)[0]  # (S, B)
    kl = gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    term = torch.where(inside, recon - model.config.beta * kl, torch.zeros_like(kl))
    weights = inside / inside.sum(0, keepdim=True).clamp(min=1)  # a row with no subset inside adds 0
    return -(weights * term).sum()

