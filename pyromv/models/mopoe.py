"""MoPoE: a mixture over subsets of products of experts (Sutter, Daunhawer & Vogt 2021)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..distributions.fusion import (
    AssignedMixture,
    MixtureOfExperts,
    ProductOfExperts,
    StratifiedMixture,
    assign_components,
)
from ..infer import ELBO, SIWAE, StratifiedELBO, StratifiedIWAE
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model

_OBJECTIVES = ("elbo", "stratified_elbo", "iwae", "dreg", "siwae")
_SUBSET_SAMPLING = ("balanced", "random")


@dataclass
class MoPoEConfig(ModelConfig):
    """Options of :class:`MoPoE`.

    Attributes
    ----------
    objective : str
        ``"elbo"`` (default): the paper's ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]``
        estimated as the paper's code does, one subset per row (``subset_sampling``), one decoder
        pass per modality, the KL averaged over every subset in closed form
        (:class:`~pyromv.distributions.AssignedMixture`): a step costs O(M) network passes.
        ``"stratified_elbo"``: the same objective with one sample from *every* subset of each
        row (lower variance, O(2^M) decoder passes). ``"iwae"``/``"dreg"``: stratified IWAE over
        subsets, samples scored by the mixture density (O(2^M) too). ``"siwae"``: the SIWAE of
        Morningstar et al. (AISTATS 2021) over the same samples, ``log sum_s w_s (1/K) sum_k
        p(X, z_sk) / q(z_sk | X)``, a bound that tends to ``log p(X_O)`` as ``K`` grows (not a
        setting of the MoPoE paper; standard, unbiased gradient; :class:`~pyromv.infer.SIWAE`).
    subset_sampling : str
        How ``"elbo"`` assigns subsets to rows: ``"balanced"`` (systematic: rows sharing a set of
        available subsets spread evenly over it) or ``"random"`` (independent per row). Both give
        each row a uniform subset, so both are unbiased.
    subsets : list of list of str, optional
        The subsets ``S`` of the mixture (default: every non-empty subset of the modalities).
    prior_expert : bool
        Include the prior as an expert in each subset's product.
    private_latent_dim : int
        Size of modality-specific latents ``w_m`` (0: none), the paper's extension with
        modality-specific subspaces: ``p(x_m | z, w_m)``, ``q(w_m | x_m)``.
    """

    objective: str = "elbo"
    subset_sampling: str = "balanced"
    subsets: list[list[str]] | None = None
    prior_expert: bool = False
    private_latent_dim: int = 0

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"MoPoE objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if self.subset_sampling not in _SUBSET_SAMPLING:
            raise ValueError(f"MoPoE subset_sampling must be one of {_SUBSET_SAMPLING}, got {self.subset_sampling!r}")
        if self.private_latent_dim < 0:
            raise ValueError(f"private_latent_dim must be >= 0, got {self.private_latent_dim}")


@register_model("mopoe")
class MoPoE(MultimodalVAE):
    r"""Mixture of products of experts (Sutter, Daunhawer & Vogt, "Generalized Multimodal
    ELBO", ICLR 2021).

    .. math:: q(z | X) = \frac{1}{|\mathcal S_O|} \sum_{s \in \mathcal S_O}
              \mathrm{PoE}\big(\{q_m(z | x_m)\}_{m \in s}\big), \qquad
              \mathcal L = \frac{1}{|\mathcal S_O|}\sum_{s \in \mathcal S_O}
              \Big(\mathbb E_{q_s}[\log p(X_O | z)] - \mathrm{KL}(q_s \| p)\Big)

    ``S_O`` are the configured subsets (default all non-empty ones) that lie inside the row's
    observed modalities ``O``: rows with missing modalities use only subsets of what they
    observe (with custom ``subsets``, a row that contains none of them adds nothing to the loss
    and encodes to the prior). The default objective draws one subset per row and decodes once
    (the paper's estimator); the stratified options put every subset in a vectorised
    ``pyro.plate("experts", |S|)`` in model and guide. With ``private_latent_dim > 0`` each
    modality also has a private latent ``w_m``.
    """

    config_class = MoPoEConfig
    max_plate_nesting = 2

    def __init__(self, modalities, config: MoPoEConfig | None = None) -> None:
        super().__init__(modalities, config)
        names = self.names
        if self.config.subsets is None:
            subsets = [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]
        else:
            subsets = [tuple(s) for s in self.config.subsets]
            for s in subsets:
                if not s:
                    raise ValueError("MoPoE subsets must be non-empty")
                for m in s:
                    if m not in names:
                        raise ValueError(f"MoPoE subset {list(s)} names unknown modality {m!r}; modalities: {names}")
        self.subsets = subsets
        membership = torch.tensor([[m in s for m in names] for s in subsets], dtype=torch.bool)
        self.register_buffer("membership", membership, persistent=False)  # (S, M)

    @property
    def stratified(self) -> bool:
        """Does the training objective sample every subset (``"stratified_elbo"``, ``"iwae"``,
        ``"dreg"``, ``"siwae"``)?"""
        return self.config.objective != "elbo"

    def _subset_posteriors(self, batch: MultimodalBatch) -> tuple[ProductOfExperts, Tensor]:
        """Per-subset PoE with batch shape ``(S, B)`` and the mask of subsets inside each row."""
        loc, scale, observed = self.experts(batch)  # (B, M, D), (B, M)
        inside = self._subsets_inside(observed)
        # a subset outside a row's observed modalities keeps all its members, so every product
        # stays finite (such subsets are masked)
        poe = ProductOfExperts.of_subsets(loc, scale, self.membership, self.prior_loc, self.prior_scale,
                                          include_prior=self.config.prior_expert)
        return poe, inside

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The mixture of the subset products inside each row's observed modalities (the prior
        for a row that observes nothing)."""
        poe, inside = self._subset_posteriors(batch)
        loc, scale, mask = self._prior_for_empty_rows(poe.loc.transpose(0, 1), poe.scale.transpose(0, 1),
                                                      inside.transpose(0, 1))  # (B, S, D)
        return MixtureOfExperts(dist.Normal(loc, scale).to_event(1), mask)

    def _subsets_inside(self, observed: Tensor) -> Tensor:
        """``(S, B)``: subset ``s`` lies within the modalities row ``b`` observes (``observed`` ``(B, M)``)."""
        return (self.membership.unsqueeze(1) <= observed.unsqueeze(0)).all(-1)

    def _inside(self, batch: MultimodalBatch) -> Tensor:
        return self._subsets_inside(torch.stack([batch.row_mask(m) for m in self.names], -1))

    # ------------------------------------------------------------------ the paper's estimator
    def model(self, batch: MultimodalBatch) -> None:
        """``z ~ p(z)`` (and ``w_m ~ p(w_m)``), ``x_m ~ p(x_m | z, w_m)``: once per row for
        ``"elbo"``, once per subset for the stratified objectives."""
        if self.stratified:
            return self.subsets_model(batch)
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size), poutine.mask(mask=self._inside(batch).any(0)):
            z = pyro.sample("z", self.prior())
            private = self.sample_private(batch, guide=False) if self.private_dim else None
            self.observe(batch, z, private)

    def guide(self, batch: MultimodalBatch) -> None:
        """``"elbo"``: ``z`` from one subset's product per row, with the KL of every subset
        (:class:`~pyromv.distributions.AssignedMixture`); otherwise one ``z`` per subset
        (:meth:`subsets_guide`). ``w_m ~ q(w_m | x_m)`` where there are private latents."""
        if self.stratified:
            return self.subsets_guide(batch, mixture_density=self.config.objective != "stratified_elbo")
        self._check_batch(batch)
        self._announce_params()
        poe, inside = self._subset_posteriors(batch)
        active = inside.transpose(0, 1)  # (B, S)
        weights = active / active.sum(-1, keepdim=True).clamp(min=1)
        assignment = assign_components(active, balanced=self.config.subset_sampling == "balanced")
        q = AssignedMixture(dist.Normal(poe.loc.transpose(0, 1), poe.scale.transpose(0, 1)).to_event(1),
                            weights, assignment)
        with pyro.plate("batch", batch.batch_size), poutine.mask(mask=active.any(-1)):
            pyro.sample("z", q)
            if self.private_dim:
                self.sample_private(batch, guide=True)

    # ------------------------------------------------------------------ every subset
    def subsets_model(self, batch: MultimodalBatch) -> None:
        """The model once per subset, under ``pyro.plate("experts", |S|)``: subset ``s`` of row
        ``b`` is scored only where it lies inside the row's observed modalities."""
        self.stratified_model(batch, self._inside(batch))

    def subsets_guide(self, batch: MultimodalBatch, mixture_density: bool = False) -> None:
        """One ``z`` per subset from its product of experts, scored by the subset's product or,
        with ``mixture_density``, by the row's whole mixture (the stratified IWAE's proposal)."""
        self._check_batch(batch)
        self._announce_params()
        poe, inside = self._subset_posteriors(batch)
        site = StratifiedMixture(poe, inside) if mixture_density else poe
        with pyro.plate("experts", len(self.subsets), dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            with poutine.mask(mask=inside):
                pyro.sample("z", site)
                if self.private_dim:
                    self.sample_private(batch, guide=True)

    # ------------------------------------------------------------------ objectives
    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The paper's objective with every subset sampled once and closed-form KL
        (:meth:`evaluation_model` / :meth:`evaluation_guide`), whatever the training objective:
        ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]``, a bound on ``log p(X_O)``."""
        return StratifiedELBO(analytic_kl=True, max_plate_nesting=2)

    def evaluation_model(self):
        return self.subsets_model

    def evaluation_guide(self):
        return self.subsets_guide

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        if c.objective == "elbo":
            return ELBO(num_particles=c.num_particles, beta=c.beta, max_plate_nesting=1)
        if c.objective == "stratified_elbo":
            return StratifiedELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=True, max_plate_nesting=2)
        if c.objective == "siwae":
            return SIWAE(num_particles=c.num_particles, beta=c.beta, max_plate_nesting=2)
        gradient = "dreg" if c.objective == "dreg" else "standard"
        return StratifiedIWAE(num_particles=c.num_particles, beta=c.beta, gradient=gradient, max_plate_nesting=2)
