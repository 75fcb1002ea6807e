"""Sums of an objective over modality subsets: MVAE's sub-sampled training."""

from __future__ import annotations

import torch
from pyro.infer.elbo import ELBO as PyroELBO
from pyro.infer.util import torch_item
from torch import Tensor

from ..data.batch import MultimodalBatch
from .elbo import ELBO


def random_middle_subsets(observed: Tensor, k: int) -> Tensor:
    """``k`` subsets of each row's observed modalities, uniform over those of size 2 to ``|O| - 1``.

    ``observed`` is ``(B, M)``; returns ``(k, B, M)``, an empty subset for a row with fewer than
    three observed modalities (it has no such subset). A size ``r`` is drawn with probability
    ``C(|O|, r) / N`` (``N`` the number of such subsets), then ``r`` of the observed modalities
    uniformly, so every subset has probability ``1 / N``; nothing is enumerated, whatever ``M``.
    """
    B, M = observed.shape
    n = observed.sum(-1)  # (B,)
    r = torch.arange(M + 1, device=observed.device)
    log_choose = (torch.lgamma(n.unsqueeze(-1) + 1.0) - torch.lgamma(r + 1.0)
                  - torch.lgamma((n.unsqueeze(-1) - r).clamp(min=0) + 1.0))
    allowed = (r >= 2) & (r <= n.unsqueeze(-1) - 1)  # (B, M + 1)
    has = allowed.any(-1)
    weights = torch.where(allowed, log_choose.exp(), torch.zeros_like(log_choose))
    weights = torch.where(has.unsqueeze(-1), weights, torch.ones_like(weights))  # rows without: any draw, masked
    size = torch.multinomial(weights.repeat(k, 1), 1).view(k, B, 1)
    keys = torch.rand(k, B, M, device=observed.device).masked_fill(~observed, 2.0)
    rank = keys.argsort(-1).argsort(-1)  # position of each modality in a random order of the observed ones
    return (rank < size) & observed & has.unsqueeze(-1)


class SubsampledELBO(PyroELBO):
    r"""MVAE's sub-sampled training objective (Wu & Goodman 2018, Sec. 3.1), row by row.

    .. math:: \mathcal L(X_O) = \mathrm{ELBO}(X_O) + \sum_{m \in O} \mathrm{ELBO}(x_m)
              + \sum_{j=1}^{k} \mathrm{ELBO}(X_{S_j}),\qquad S_j \subset O,\ 2 \le |S_j| \le |O| - 1

    On a complete row this is the paper's objective. A row that observes only ``O`` gets the
    same objective over its own modalities: its joint term is over ``O``, its unimodal terms are
    those of the modalities it observes, and its ``k`` random subsets are drawn uniformly among
    the subsets of ``O`` of size 2 to ``|O| - 1`` (none when ``|O| < 3``). When ``|O| = 1`` the joint
    and the unimodal term are the same ELBO and it is counted once (the unimodal copy is
    dropped), so no row's likelihood is counted twice for the same subset. Each term is the base
    objective on the batch with the modalities outside the row's subset marked missing: a term
    that is empty for a row adds exactly 0 (its posterior is the prior). Random subsets come
    from torch's global RNG, drawn per row, so seeded runs repeat.

    Parameters
    ----------
    base : pyro.infer.ELBO
        Objective for each term (default :class:`~pyromv.infer.ELBO`).
    num_random_subsets : int
        ``k`` in the paper.
    joint, unimodal : bool
        Include the joint term and the unimodal terms.
    vectorize : bool
        Evaluate all terms in one pass: the model and guide are called once with the keyword
        ``subsets``, a ``(T, B, M)`` boolean membership of each term and row, and must put one
        copy of the latents per term in a plate (as :class:`~pyromv.models.MVAE` does), so the
        base objective's sum over that plate is the sum of the terms. Otherwise each term is a
        separate pass on a batch whose row masks are cut to the term.
    """

    def __init__(
        self, base: PyroELBO | None = None, num_random_subsets: int = 1, joint: bool = True,
        unimodal: bool = True, vectorize: bool = False,
    ) -> None:
        super().__init__()
        if num_random_subsets < 0:
            raise ValueError(f"num_random_subsets must be >= 0, got {num_random_subsets}")
        if not (joint or unimodal or num_random_subsets):
            raise ValueError("SubsampledELBO has no terms: enable joint, unimodal or random subsets")
        self.base = base if base is not None else ELBO()
        self.num_random_subsets = num_random_subsets
        self.joint = joint
        self.unimodal = unimodal
        self.vectorize = vectorize

    # beta and the KL warm-up factor live on the base objective
    @property
    def beta(self) -> float:
        """KL weight of the wrapped objective."""
        return self.base.beta

    @beta.setter
    def beta(self, value: float) -> None:
        self.base.beta = value

    @property
    def kl_anneal(self) -> float:
        """Current KL annealing factor of the wrapped objective."""
        return self.base.kl_anneal

    @kl_anneal.setter
    def kl_anneal(self, value: float) -> None:
        self.base.kl_anneal = value

    def _get_trace(self, model, guide, args, kwargs):
        return self.base._get_trace(model, guide, args, kwargs)

    def terms(self, observed: Tensor) -> Tensor:
        """The step's terms: ``(T, B, M)`` membership of term ``t`` for row ``b``, from the rows'
        observed modalities ``(B, M)``; ``T = [joint] + M [unimodal] + k``, in that order."""
        B, M = observed.shape
        out = []
        if self.joint:
            out.append(observed.unsqueeze(0))
        if self.unimodal:
            single = torch.eye(M, dtype=torch.bool, device=observed.device).unsqueeze(1) & observed  # (M, B, M)
            if self.joint:  # on a row with one modality, its unimodal term is its joint term
                single = single & (observed.sum(-1) > 1).unsqueeze(-1)
            out.append(single)
        if self.num_random_subsets:
            out.append(random_middle_subsets(observed, self.num_random_subsets))
        return torch.cat(out, 0)

    def differentiable_loss(self, model, guide, batch: MultimodalBatch, *args, **kwargs) -> torch.Tensor:
        """Sum over rows of the negative objective, differentiable (one subset term set per row)."""
        if not isinstance(batch, MultimodalBatch):
            raise TypeError(f"SubsampledELBO needs a MultimodalBatch, got {type(batch).__name__}")
        observed = torch.stack([batch.row_mask(m) for m in batch.names], -1)
        terms = self.terms(observed)
        if self.vectorize:
            return self.base.differentiable_loss(model, guide, batch, *args, subsets=terms, **kwargs)
        total = observed.new_zeros((), dtype=torch.get_default_dtype())
        for term in terms:
            if not bool(term.any()):
                continue  # empty for every row: exactly 0
            cut = batch.with_row_masks({m: term[:, j] for j, m in enumerate(batch.names)})
            total = total + self.base.differentiable_loss(model, guide, cut, *args, **kwargs)
        return total

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float; its gradients are accumulated in the parameters' ``.grad``."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)
