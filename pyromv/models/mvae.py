"""MVAE: product-of-experts fusion with sub-sampled training (Wu & Goodman 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..distributions.fusion import ProductOfExperts
from ..infer import ELBO, IWAE, SubsampledELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model

_OBJECTIVES = ("subsampled", "elbo", "iwae")


@dataclass
class MVAEConfig(ModelConfig):
    """Options of :class:`MVAE`.

    Attributes
    ----------
    objective : str
        ``"subsampled"`` (the paper's: joint + unimodal + ``num_random_subsets`` ELBOs),
        ``"elbo"`` (the joint ELBO alone) or ``"iwae"`` (joint IWAE with ``num_particles``).
    num_random_subsets : int
        ``k`` random subsets per row and step in the sub-sampled objective (of size 2 to
        ``|O| - 1`` among the modalities ``O`` the row observes).
    analytic_kl : bool
        Closed-form KL in the ELBO terms.
    """

    objective: str = "subsampled"
    num_random_subsets: int = 1
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"MVAE objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if self.num_random_subsets < 0:
            raise ValueError(f"num_random_subsets must be >= 0, got {self.num_random_subsets}")


@register_model("mvae")
class MVAE(MultimodalVAE):
    r"""Multimodal VAE with a product-of-experts guide (Wu & Goodman, NeurIPS 2018).

    .. math:: q(z | X_S) \propto p(z) \prod_{m \in S} q_m(z | x_m)

    The prior is one of the experts, so any subset ``S`` of observed modalities, the empty
    one included, gives a proper posterior. Trained by default with the sub-sampled objective
    ``ELBO(X) + sum_m ELBO(x_m) + sum_{j<=k} ELBO(X_{S_j})``
    (:class:`~pyromv.infer.SubsampledELBO`); ``objective="elbo"`` uses the joint ELBO alone
    and ``"iwae"`` the joint IWAE. Rows with missing modalities fuse only their observed
    experts and each ELBO term bounds the likelihood of what the row observes; the sub-sampled
    objective of a row observing ``O`` is the paper's objective over ``O`` (a row with one
    modality counts its one ELBO once, not as joint *and* unimodal term).
    """

    config_class = MVAEConfig
    max_plate_nesting = 2  # the vectorised subsets of the sub-sampled objective

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        loc, scale, mask = self.experts(batch)
        return ProductOfExperts(loc, scale, mask, self.prior_loc, self.prior_scale)

    def _term_membership(self, subsets: Tensor | Sequence[Sequence[str]]) -> Tensor:
        """``(T, B, M)`` or ``(T, 1, M)`` membership of each term from a boolean tensor or from
        lists of modality names."""
        if torch.is_tensor(subsets):
            if subsets.dtype != torch.bool or subsets.dim() != 3 or subsets.shape[-1] != len(self.names):
                raise ValueError(f"subsets must be a boolean (T, B, {len(self.names)}) tensor, got "
                                 f"{tuple(subsets.shape)} {subsets.dtype}")
            return subsets
        for s in subsets:
            for m in s:
                self.modality(m)
        member = torch.tensor([[m in s for m in self.names] for s in subsets], device=self.prior_loc.device)
        return member.unsqueeze(1)

    def model(self, batch: MultimodalBatch, subsets: Tensor | Sequence[Sequence[str]] | None = None) -> None:
        """``z ~ p(z)``, ``x_m ~ p(x_m | z)``; with ``subsets`` (a ``(T, B, M)`` membership of
        each term and row, or ``T`` lists of names), one copy of ``z`` per term under
        ``pyro.plate("experts", T)``, each observing only its subset (the sub-sampled
        objective's terms in one vectorised pass, encoders run once)."""
        if subsets is None:
            return super().model(batch)
        self._check_batch(batch)
        self._announce_params()
        member = self._term_membership(subsets)
        term_masks = {m: member[..., j] for j, m in enumerate(self.names)}
        with pyro.plate("experts", member.shape[0], dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            z = pyro.sample("z", self.prior())
            self.observe(batch, z, term_masks=term_masks)

    def guide(self, batch: MultimodalBatch, subsets: Tensor | Sequence[Sequence[str]] | None = None) -> None:
        """``z ~ q(z | X_obs)``; with ``subsets``, ``z_t ~ q(z | X_{obs ∩ S_t})`` for each term."""
        if subsets is None:
            return super().guide(batch)
        self._check_batch(batch)
        self._announce_params()
        member = self._term_membership(subsets)
        loc, scale, mask = self.experts(batch)  # (B, M, D), (B, M)
        T = member.shape[0]
        experts = member & mask.unsqueeze(0)  # (T, B, M)
        q = ProductOfExperts(loc.expand((T,) + loc.shape), scale.expand((T,) + scale.shape), experts,
                             self.prior_loc, self.prior_scale)
        with pyro.plate("experts", T, dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            pyro.sample("z", q)

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        if c.objective == "iwae":
            return IWAE(num_particles=c.num_particles, beta=c.beta, max_plate_nesting=self.max_plate_nesting)
        elbo = ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl,
                    max_plate_nesting=self.max_plate_nesting)
        if c.objective == "elbo":
            return elbo
        return SubsampledELBO(elbo, num_random_subsets=c.num_random_subsets, vectorize=True)
