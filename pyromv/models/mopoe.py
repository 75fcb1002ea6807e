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
from ..distributions.fusion import MixtureOfExperts, ProductOfExperts, StratifiedMixture
from ..infer import StratifiedELBO, StratifiedIWAE
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model

_OBJECTIVES = ("elbo", "iwae", "dreg")


@dataclass
class MoPoEConfig(ModelConfig):
    """Options of :class:`MoPoE`.

    Attributes
    ----------
    objective : str
        ``"elbo"``: the paper's ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]`` with analytic
        per-subset KL; ``"iwae"``/``"dreg"``: stratified IWAE over subsets, samples scored by
        the mixture density.
    subsets : list of list of str, optional
        The subsets ``S`` of the mixture (default: every non-empty subset of the modalities).
    prior_expert : bool
        Include the prior as an expert in each subset's product.
    private_latent_dim : int
        Size of modality-specific latents ``w_m`` (0: none), the paper's extension with
        modality-specific subspaces: ``p(x_m | z, w_m)``, ``q(w_m | x_m)``.
    """

    objective: str = "elbo"
    subsets: list[list[str]] | None = None
    prior_expert: bool = False
    private_latent_dim: int = 0

    def validate(self) -> None:
        super().validate()
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"MoPoE objective must be one of {_OBJECTIVES}, got {self.objective!r}")
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
    and encodes to the prior). The subsets are one vectorised ``pyro.plate("experts", |S|)`` in model and guide.
    With ``private_latent_dim > 0`` each modality also has a private latent ``w_m``.
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

    def _subset_posteriors(self, batch: MultimodalBatch) -> tuple[ProductOfExperts, Tensor]:
        """Per-subset PoE with batch shape ``(S, B)`` and the mask of subsets inside each row."""
        loc, scale, observed = self.experts(batch)  # (B, M, D), (B, M)
        member = self.membership  # (S, M)
        inside = (member.unsqueeze(1) <= observed.unsqueeze(0)).all(-1)  # (S, B): s within O_b
        # inactive subsets keep all their members so every product stays finite (they are masked)
        experts = member.unsqueeze(1).expand(-1, observed.shape[0], -1)
        poe = ProductOfExperts(loc.unsqueeze(0).expand(len(self.subsets), -1, -1, -1),
                               scale.unsqueeze(0).expand(len(self.subsets), -1, -1, -1),
                               experts, self.prior_loc, self.prior_scale, include_prior=self.config.prior_expert)
        return poe, inside

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The mixture of the subset products inside each row's observed modalities (the prior
        for a row that observes nothing)."""
        poe, inside = self._subset_posteriors(batch)
        loc, scale, mask = self._prior_for_empty_rows(poe.loc.transpose(0, 1), poe.scale.transpose(0, 1),
                                                      inside.transpose(0, 1))  # (B, S, D)
        return MixtureOfExperts(dist.Normal(loc, scale).to_event(1), mask)

    def model(self, batch: MultimodalBatch) -> None:
        """``z ~ p(z)`` (and ``w_m ~ p(w_m)``), ``x_m ~ p(x_m | z, w_m)``, once per subset."""
        self._check_batch(batch)
        self._announce_params()
        inside = self._inside(batch)
        with pyro.plate("experts", len(self.subsets), dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            with poutine.mask(mask=inside):
                z = pyro.sample("z", self.prior())
                private = self.sample_private(batch, guide=False) if self.private_dim else None
                self.observe(batch, z, private)

    def _inside(self, batch: MultimodalBatch) -> Tensor:
        observed = torch.stack([batch.row_mask(m) for m in self.names], -1)  # (B, M)
        return (self.membership.unsqueeze(1) <= observed.unsqueeze(0)).all(-1)

    def guide(self, batch: MultimodalBatch) -> None:
        """One ``z`` per subset from its product of experts (and ``w_m ~ q(w_m | x_m)``)."""
        self._check_batch(batch)
        self._announce_params()
        poe, inside = self._subset_posteriors(batch)
        site = poe if self.config.objective == "elbo" else StratifiedMixture(poe, inside)
        with pyro.plate("experts", len(self.subsets), dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            with poutine.mask(mask=inside):
                pyro.sample("z", site)
                if self.private_dim:
                    self.sample_private(batch, guide=True)

    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The stratified ELBO (one particle per stratum), a bound on ``log p(X_O)``."""
        return StratifiedELBO(analytic_kl=True, max_plate_nesting=2)

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        if c.objective == "elbo":
            return StratifiedELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=True, max_plate_nesting=2)
        gradient = "dreg" if c.objective == "dreg" else "standard"
        return StratifiedIWAE(num_particles=c.num_particles, beta=c.beta, gradient=gradient, max_plate_nesting=2)
