"""MHVAE's subset-averaged hierarchical ELBO in plain torch."""

from __future__ import annotations

import itertools

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import gaussian_kl, log_likelihood, poe


def _bottom_up(model, batch: MultimodalBatch) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Features of levels 1 .. L-1 ``(B, M, F)``, top experts ``(B, M, D)``, observed ``(B, M)``."""
    levels = model.config.num_levels - 1
    feats, locs, scales, observed = [[] for _ in range(levels)], [], [], []
    for m in model.names:
        loc, scale = model.encoders[m](model.likelihoods[m].encoder_input(batch.data[m]))
        h = torch.cat([loc, torch.log(scale)], dim=-1)
        for level in range(levels):
            feats[level].append(h)
            h = model.bottom_up[m][level](h)
        top_loc, top_scale = model.top_experts[m](h)
        locs.append(top_loc)
        scales.append(top_scale)
        observed.append(batch.row_mask(m))
    return ([torch.stack(f, 1) for f in feats], torch.stack(locs, 1), torch.stack(scales, 1),
            torch.stack(observed, 1))


def _subsets(model, observed: Tensor) -> tuple[Tensor, Tensor]:
    """Membership ``(S, B, M)`` and active entries ``(S, B)``: every non-empty subset, or
    ``max_subsets`` uniform draws per row among the subsets of what it observes (one float64
    uniform per draw and row, its integer ``1 .. 2^n - 1`` read in binary over the observed
    modalities)."""
    B, M = observed.shape
    cap = model.config.max_subsets
    if cap is None or 2**M - 1 <= cap:
        subsets = [s for r in range(1, M + 1) for s in itertools.combinations(range(M), r)]
        member = torch.zeros(len(subsets), B, M, dtype=torch.bool)
        for i, s in enumerate(subsets):
            member[i, :, list(s)] = True
        active = torch.stack([observed[:, list(s)].all(1) for s in subsets])
        return member, active
    n = observed.sum(1).double()
    u = torch.rand(cap, B, dtype=torch.float64)
    top = 2.0**n - 1
    k = torch.minimum(torch.floor(u * top) + 1, top.clamp(min=1)).long()  # (cap, B)
    member = torch.zeros(cap, B, M, dtype=torch.bool)
    seen = torch.zeros(B, dtype=torch.long)  # observed modalities before j
    for j in range(M):
        member[:, :, j] = observed[:, j] & ((k // 2**seen) % 2 == 1)
        seen = seen + observed[:, j].long()
    return member, observed.any(1).expand(cap, B)


def _kl(mu, sigma, p_loc, p_scale, z, analytic: bool) -> Tensor:
    if analytic:
        return gaussian_kl(mu, sigma, p_loc, p_scale)
    return D.Normal(mu, sigma).log_prob(z).sum(-1) - D.Normal(p_loc, p_scale).log_prob(z).sum(-1)


def mhvae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """Negative ``sum_b sum_s w_sb E_{q_s}[log p(X_O | z_1) - beta sum_l KL_l]``: for each subset
    entry, ``z_L`` from the product of the prior and the subset's top experts, then each level
    from the product of ``p(z_l | z_{l+1})`` and the subset's posterior blocks; ``K`` particles;
    ``w_sb`` uniform over each row's active entries; summed over rows."""
    c = model.config
    feats, top_loc, top_scale, observed = _bottom_up(model, batch)
    member, active = _subsets(model, observed)
    S, B, M = member.shape
    K = c.num_particles
    mu, sigma = poe(top_loc.expand(S, B, M, -1), top_scale.expand(S, B, M, -1), member.float(),
                    model.prior_loc, model.prior_scale, True)
    z = D.Normal(mu, sigma).rsample((K,))  # (K, S, B, D)
    kl = _kl(mu, sigma, model.prior_loc, model.prior_scale, z, c.analytic_kl)
    L = c.num_levels
    for i in range(L - 1):
        h = model.top_down[i](z)
        p_loc, p_scale = model.prior_blocks[i](h)
        f = feats[L - 2 - i]
        x = torch.cat([h.unsqueeze(-2).expand(K, S, B, M, -1), f.expand(K, S, B, M, -1)], -1)
        if c.shared_posterior_blocks:
            loc, scale = model.posterior_blocks[i](x)
        else:
            pairs = [model.posterior_blocks[m][i](x[..., j, :]) for j, m in enumerate(model.names)]
            loc, scale = torch.stack([p[0] for p in pairs], -2), torch.stack([p[1] for p in pairs], -2)
        mu, sigma = poe(loc, scale, member.float().expand(K, S, B, M), p_loc, p_scale, True)
        z = D.Normal(mu, sigma).rsample()
        kl = kl + _kl(mu, sigma, p_loc, p_scale, z, c.analytic_kl)
    recon = log_likelihood(model, batch, z, scored=active)  # (K, S, B)
    elbo = torch.where(active, recon - c.beta * kl, torch.zeros_like(recon)).mean(0)
    weights = active / active.sum(0, keepdim=True).clamp(min=1)
    return -(weights * elbo).sum()
