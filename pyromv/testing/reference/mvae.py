"""MVAE's joint ELBO and sub-sampled objective in plain torch."""

from __future__ import annotations

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
    loc, scale, mask = experts(model, batch)
    chosen = (member.unsqueeze(1) & mask.unsqueeze(0)).to(loc.dtype)  # (T, B, M)
    mu, sigma = poe(loc.unsqueeze(0), scale.unsqueeze(0), chosen, model.prior_loc, model.prior_scale, True)
    z = D.Normal(mu, sigma).rsample()  # (T, B, D)
    term_masks = {m: member[:, j].unsqueeze(-1) for j, m in enumerate(names)}
    recon = log_likelihood(model, batch, z, term_masks)
    kl = gaussian_kl(mu, sigma, model.prior_loc, model.prior_scale)
    return -(recon - model.config.beta * kl).sum()
