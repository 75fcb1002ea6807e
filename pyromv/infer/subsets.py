"""Sums of an objective over modality subsets: MVAE's sub-sampled training."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from pyro.infer.elbo import ELBO as PyroELBO
from pyro.infer.util import torch_item

from ..data.batch import MultimodalBatch
from .elbo import ELBO


class SubsampledELBO(PyroELBO):
    r"""MVAE's sub-sampled training objective (Wu & Goodman 2018, Sec. 3.1).

    .. math:: \mathcal L(X) = \mathrm{ELBO}(X) + \sum_{m} \mathrm{ELBO}(x_m)
              + \sum_{j=1}^{k} \mathrm{ELBO}(X_{S_j}),\quad S_j \text{ random subsets}

    Each term is the base objective on the batch with every modality outside the subset
    marked missing, so on partially observed rows a term bounds ``log p`` of what the row
    observes inside the subset (rows that observe nothing of it contribute exactly 0: their
    posterior is the prior). The ``k`` subsets are drawn each step uniformly among the subsets
    of size 2 to M-1 (torch's global RNG, so seeded runs repeat).

    Parameters
    ----------
    base : pyro.infer.ELBO
        Objective for each term (default :class:`~pyromv.infer.ELBO`).
    num_random_subsets : int
        ``k`` in the paper.
    joint, unimodal : bool
        Include the joint term and the M unimodal terms.
    vectorize : bool
        Evaluate all terms in one pass: the model and guide are called once with the keyword
        ``subsets=[names, ...]`` and must put one copy of the latents per subset in a plate
        (as :class:`~pyromv.models.MVAE` does), so the base objective's sum over that plate is
        the sum of the terms. Otherwise each term is a separate pass on a restricted batch.
    """

    def __init__(
        self, base: PyroELBO | None = None, num_random_subsets: int = 1, joint: bool = True,
        unimodal: bool = True, vectorize: bool = False,
    ) -> None:
        super().__init__()
        if num_random_subsets < 0:
            raise ValueError(f"num_random_subsets must be >= 0, got {num_random_subsets}")
        self.base = base if base is not None else ELBO()
        self.num_random_subsets = num_random_subsets
        self.joint = joint
        self.unimodal = unimodal
        self.vectorize = vectorize

    # beta and the KL warm-up factor live on the base objective
    @property
    def beta(self) -> float:
        return self.base.beta

    @beta.setter
    def beta(self, value: float) -> None:
        self.base.beta = value

    @property
    def kl_anneal(self) -> float:
        return self.base.kl_anneal

    @kl_anneal.setter
    def kl_anneal(self, value: float) -> None:
        self.base.kl_anneal = value

    def _get_trace(self, model, guide, args, kwargs):
        return self.base._get_trace(model, guide, args, kwargs)

    def subsets(self, names: Sequence[str]) -> list[tuple[str, ...]]:
        """The subsets for one step: joint, unimodal, then ``k`` random ones."""
        names = tuple(names)
        out: list[tuple[str, ...]] = []
        if self.joint:
            out.append(names)
        if self.unimodal:
            out.extend((m,) for m in names)
        middle = [s for r in range(2, len(names)) for s in itertools.combinations(names, r)]
        if middle and self.num_random_subsets:
            picks = torch.randint(len(middle), (self.num_random_subsets,))
            out.extend(middle[int(i)] for i in picks)
        if not out:
            raise ValueError("SubsampledELBO has no terms: enable joint, unimodal or random subsets")
        return out

    def differentiable_loss(self, model, guide, batch: MultimodalBatch, *args, **kwargs) -> torch.Tensor:
        if not isinstance(batch, MultimodalBatch):
            raise TypeError(f"SubsampledELBO needs a MultimodalBatch, got {type(batch).__name__}")
        if self.vectorize:
            subsets = [list(s) for s in self.subsets(batch.names)]
            return self.base.differentiable_loss(model, guide, batch, *args, subsets=subsets, **kwargs)
        total = 0.0
        for subset in self.subsets(batch.names):
            term = batch if len(subset) == len(batch.names) else batch.restrict(subset)
            total = total + self.base.differentiable_loss(model, guide, term, *args, **kwargs)
        return total

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)
