"""Hand-written torch losses for MVAE, MMVAE and MoPoE.

Each function computes, with plain torch on a model's own networks, the loss that the
model's Pyro objective computes: same estimator, same order of random draws, so under the same
seed the values and gradients agree. They serve two purposes: the equality tests check the
Pyro objectives against them, and the benchmarks report pyromv's per-step cost as a ratio to
them (Pyro's tracing is the only difference). Like the models, they decode only the latents
whose likelihood an estimator scores.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as D
from torch import Tensor

from ..data.batch import MultimodalBatch


def _experts(model, batch: MultimodalBatch) -> tuple[Tensor, Tensor, Tensor]:
    locs, scales, masks = [], [], []
    for m in model.names:
        loc, scale = model.encoders[m](model.likelihoods[m].encoder_input(batch.data[m]))
        locs.append(loc)
        scales.append(scale)
        masks.append(batch.row_mask(m))
    return torch.stack(locs, -2), torch.stack(scales, -2), torch.stack(masks, -1)


def _log_likelihood(model, batch: MultimodalBatch, z: Tensor, term_masks: dict[str, Tensor] | None = None,
                    scored: Tensor | None = None) -> Tensor:
    """``sum_m w_m mask_m log p(x_m | z)``, shape ``z.shape[:-1]``; only the latents that a
    modality's mask (and ``scored``, broadcastable to ``z.shape[:-1]``) keeps are decoded."""
    shape = z.shape[:-1]
    total = torch.zeros(shape, dtype=z.dtype, device=z.device)
    for mod in model.modalities:
        rows = batch.row_mask(mod.name)
        if term_masks is not None:
            rows = rows & term_masks[mod.name]
        if scored is not None:
            rows = rows & scored
        rows = rows.expand(shape)
        if not bool(rows.any()):
            continue
        fn = model.likelihoods[mod.name](model.decoders[mod.name](z[rows]))
        lp = fn.log_prob(batch.data[mod.name].expand(shape + mod.shape)[rows])
        features = batch.feature_mask(mod.name)
        if features is not None:
            lp = lp * features.expand(shape + mod.shape)[rows]
        lp = lp.flatten(1).sum(-1) if mod.shape else lp
        total = total + model.likelihood_weights[mod.name] * lp.new_zeros(shape).masked_scatter(rows, lp)
    return total


def _gaussian_kl(loc: Tensor, scale: Tensor, prior_loc: Tensor, prior_scale: Tensor) -> Tensor:
    var_ratio = (scale / prior_scale) ** 2
    t1 = ((loc - prior_loc) / prior_scale) ** 2
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log()).sum(-1)


def _poe(loc: Tensor, scale: Tensor, mask: Tensor, prior_loc: Tensor, prior_scale: Tensor,
         include_prior: bool) -> tuple[Tensor, Tensor]:
    precision = mask.unsqueeze(-1) / scale**2
    total = precision.sum(-2)
    weighted = (precision * loc).sum(-2)
    if include_prior:
        total = total + prior_scale**-2
        weighted = weighted + prior_loc * prior_scale**-2
    return weighted / total, total.rsqrt()


def mvae_elbo_reference(model, batch: MultimodalBatch) -> Tensor:
    """Negative joint ELBO of an MVAE (PoE with prior expert, analytic KL), summed over rows."""
    loc, scale, mask = _experts(model, batch)
    mu, sigma = _poe(loc, scale, mask, model.prior_loc, model.prior_scale, True)
    z = D.Normal(mu, sigma).rsample()
    recon = _log_likelihood(model, batch, z)
    kl = _gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    return -(recon - model.config.beta * kl).sum()


def mvae_reference_loss(model, batch: MultimodalBatch, num_random_subsets: int | None = None) -> Tensor:
    """MVAE's sub-sampled objective (joint + unimodal + k random subsets of size 2..M-1), all
    terms in one pass: encoders once, one PoE and one ``z`` per (term, row)."""
    import itertools

    names = model.names
    k = model.config.num_random_subsets if num_random_subsets is None else num_random_subsets
    subsets = [tuple(names)] + [(m,) for m in names]
    middle = [s for r in range(2, len(names)) for s in itertools.combinations(names, r)]
    if middle and k:
        subsets += [middle[int(i)] for i in torch.randint(len(middle), (k,))]
    member = torch.tensor([[m in s for m in names] for s in subsets])  # (T, M)
    loc, scale, mask = _experts(model, batch)
    experts = (member.unsqueeze(1) & mask.unsqueeze(0)).to(loc.dtype)  # (T, B, M)
    mu, sigma = _poe(loc.unsqueeze(0), scale.unsqueeze(0), experts, model.prior_loc, model.prior_scale, True)
    z = D.Normal(mu, sigma).rsample()  # (T, B, D)
    term_masks = {m: member[:, j].unsqueeze(-1) for j, m in enumerate(names)}
    recon = _log_likelihood(model, batch, z, term_masks)
    kl = _gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    return -(recon - model.config.beta * kl).sum()


def mmvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MMVAE's stratified DReG-IWAE (or IWAE) with ``K`` particles per expert, summed over rows."""
    K = model.config.num_particles
    family = {"normal": D.Normal, "laplace": D.Laplace}[model.config.distribution]
    loc, scale, mask = _experts(model, batch)  # (B, M, D), (B, M)
    loc, scale, strata = loc.transpose(0, 1), scale.transpose(0, 1), mask.transpose(0, 1)  # (M, B, .)
    z = D.Independent(family(loc, scale), 1).rsample((K,))  # (K, M, B, D)
    dreg = model.config.objective == "dreg"
    q_loc, q_scale = (loc.detach(), scale.detach()) if dreg else (loc, scale)
    comp = D.Independent(family(q_loc, q_scale), 1).log_prob(z.unsqueeze(-3))  # (K, M, M_j, B)
    log_w = torch.where(strata, torch.zeros_like(strata, dtype=z.dtype), torch.full_like(strata, -math.inf,
                                                                                           dtype=z.dtype))
    log_w = log_w - log_w.logsumexp(0, keepdim=True)
    log_q = torch.logsumexp(comp + log_w, -2)  # (K, M, B)
    prior_scale = model.log_prior_scale.exp() if model.config.learn_prior_scale else model.prior_scale
    log_prior = D.Independent(family(model.prior_loc, prior_scale), 1).log_prob(z)
    beta = model.config.beta
    lw = _log_likelihood(model, batch, z, scored=strata) + beta * (log_prior - log_q)
    lw = torch.where(strata, lw, torch.zeros_like(lw))
    weights = strata / strata.sum(0, keepdim=True)
    bound = ((torch.logsumexp(lw, 0) - math.log(K)) * weights).sum()
    if not dreg:
        return -bound
    normalized = torch.softmax(lw.detach(), 0)
    if z.requires_grad:
        z.register_hook(lambda grad: grad * normalized.unsqueeze(-1))
    surrogate = (weights * (normalized * lw).sum(0)).sum()
    return -(bound.detach() + surrogate - surrogate.detach())


def _mopoe_subset_posteriors(model, batch: MultimodalBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Each subset's product of experts ``(S, B, D)`` and the subsets inside each row ``(S, B)``."""
    loc, scale, observed = _experts(model, batch)  # (B, M, D), (B, M)
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
    recon = _log_likelihood(model, batch, z)
    weights = inside / counts.clamp(min=1)
    kl = (weights * _gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)).sum(0)
    has = counts > 0
    return -torch.where(has, recon - model.config.beta * kl, torch.zeros_like(kl)).sum()


def mopoe_stratified_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """MoPoE's ``"stratified_elbo"``: ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]`` over the
    subsets inside each row, one sample from every subset, summed over rows."""
    mu, sigma, inside = _mopoe_subset_posteriors(model, batch)
    z = D.Normal(mu, sigma).rsample((1,))  # one particle, as the vectorised objective draws it
    recon = _log_likelihood(model, batch, z, scored=inside)[0]  # (S, B)
    kl = _gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    term = torch.where(inside, recon - model.config.beta * kl, torch.zeros_like(kl))
    weights = inside / inside.sum(0, keepdim=True).clamp(min=1)  # a row with no subset inside adds 0
    return -(weights * term).sum()
