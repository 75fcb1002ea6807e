"""MMVAE: mixture-of-experts fusion trained with stratified bounds (Shi et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..distributions.fusion import MixtureOfExperts, StratifiedMixture
from ..infer import SIWAE, StratifiedELBO, StratifiedIWAE
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model

_OBJECTIVES = ("iwae", "dreg", "elbo", "siwae")
_FAMILIES = {"normal": dist.Normal, "laplace": dist.Laplace}


@dataclass
class MMVAEConfig(ModelConfig):
    """Options of :class:`MMVAE` (defaults follow the paper's MNIST-SVHN setting).

    Attributes
    ----------
    objective : str
        Stratified ``"iwae"`` (default), ``"dreg"``, ``"elbo"`` or ``"siwae"``. ``"dreg"`` is the DReG-IWAE of
        the paper's code; for ``K > 1`` its gradient is biased on rows that mix several experts
        (the score of ``log q_mix`` is not the score of the sampling expert, so Tucker et al.'s
        identity does not apply; measured about 7% of the gradient's norm on the linear-Gaussian
        oracle, tests/infer/test_gradient_estimators.py). ``"iwae"`` uses the unbiased standard
        gradient of the same bound. ``"siwae"``: the SIWAE of Morningstar et al. (AISTATS 2021),
        ``log sum_m (1/|O|) (1/K) sum_k w_mk`` with the log outside the sum over experts, a bound
        that tends to ``log p(X_O)`` as ``K`` grows (not a setting of the MMVAE paper; standard,
        unbiased gradient; :class:`~pyromv.infer.SIWAE`).
    num_particles : int
        ``K`` particles per expert.
    distribution : str
        ``"laplace"`` or ``"normal"``: family of the posterior experts *and* the prior.
    learn_prior_scale : bool
        Learn the prior's per-dimension scale (the paper's code option ``learn_prior``).
    """

    objective: str = "iwae"
    num_particles: int = 10
    distribution: str = "laplace"
    learn_prior_scale: bool = False

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"MMVAE objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if self.distribution not in _FAMILIES:
            raise ValueError(f"MMVAE distribution must be one of {sorted(_FAMILIES)}, got {self.distribution!r}")


@register_model("mmvae")
class MMVAE(MultimodalVAE):
    r"""Mixture-of-experts multimodal VAE (Shi, Siddharth, Paige & Torr, NeurIPS 2019).

    .. math:: q(z | X) = \frac{1}{|O|} \sum_{m \in O} q_m(z | x_m), \qquad
              \mathcal L = \frac{1}{|O|} \sum_{m \in O} \mathbb E_{z_{1:K} \sim q_m}
              \Big[\log \frac1K \sum_k \frac{p(X_O, z_k)}{q(z_k | X_O)}\Big]

    ``O`` is the set of modalities a row observes: rows with missing modalities mix only their
    observed experts. The guide samples every expert under ``pyro.plate("experts", M)`` and
    scores each sample with the whole mixture (:class:`~pyromv.distributions.StratifiedMixture`);
    the default objective is the stratified IWAE, with the paper's DReG-IWAE and the stratified
    ELBO as options (:class:`~pyromv.infer.StratifiedIWAE`, :class:`~pyromv.infer.StratifiedELBO`).
    As ``K`` grows the stratified IWAE tends to ``(1/|O|) sum_m log E_{q_m}[p(X, z) / q(z|X)]``,
    which is below ``log p(X)`` where the experts disagree (Jensen), unlike the plain IWAE; the
    ``"siwae"`` option (:class:`~pyromv.infer.SIWAE`) puts the log outside the average over experts
    and tends to ``log p(X)``. Prior and
    experts are Laplace (default) or Normal; the prior scale can be learned.
    """

    config_class = MMVAEConfig
    max_plate_nesting = 2

    def __init__(self, modalities, config: MMVAEConfig | None = None) -> None:
        super().__init__(modalities, config)
        if self.config.learn_prior_scale:
            self.log_prior_scale = nn.Parameter(self.prior_scale.log().clone())

    @property
    def family(self) -> type:
        """Distribution family of the unimodal experts (``config.distribution``)."""
        return _FAMILIES[self.config.distribution]

    def prior(self) -> dist.TorchDistribution:
        scale = self.log_prior_scale.exp() if self.config.learn_prior_scale else self.prior_scale
        return self.family(self.prior_loc, scale).to_event(1)

    def _strata(self, batch: MultimodalBatch) -> Tensor:
        return torch.stack([batch.row_mask(m) for m in self.names], 0)  # (M, B)

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The mixture of each row's observed experts (the prior for a row that observes nothing)."""
        loc, scale, mask = self._prior_for_empty_rows(*self.experts(batch))
        return MixtureOfExperts(self.family(loc, scale).to_event(1), mask)

    def model(self, batch: MultimodalBatch) -> None:
        """``z ~ p(z)``, ``x_m ~ p(x_m | z)``, once per expert of each row."""
        self.stratified_model(batch, self._strata(batch))

    def guide(self, batch: MultimodalBatch) -> None:
        """One ``z`` from each observed expert, scored by the mixture of the observed experts."""
        self.stratified_guide(batch)

    def stratified_guide(self, batch: MultimodalBatch, then: Callable[[], None] | None = None) -> None:
        """``z`` from each observed expert under ``pyro.plate("experts", M)``, scored by the
        mixture of the row's observed experts; ``then()`` samples further sites (private latents)
        inside the same plates and strata mask."""
        self._check_batch(batch)
        self._announce_params()
        loc, scale, mask = self.experts(batch)
        experts = self.family(loc.transpose(0, 1), scale.transpose(0, 1)).to_event(1)  # (M, B)
        strata = mask.transpose(0, 1)
        with pyro.plate("experts", len(self.names), dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            with poutine.mask(mask=strata):
                pyro.sample("z", StratifiedMixture(experts, strata))
                if then is not None:
                    then()

    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The stratified ELBO (one particle per stratum), a bound on ``log p(X_O)``."""
        return StratifiedELBO(max_plate_nesting=2)

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        if c.objective == "elbo":
            return StratifiedELBO(num_particles=c.num_particles, beta=c.beta, max_plate_nesting=2)
        if c.objective == "siwae":
            return SIWAE(num_particles=c.num_particles, beta=c.beta, max_plate_nesting=2)
        gradient = "dreg" if c.objective == "dreg" else "standard"
        return StratifiedIWAE(num_particles=c.num_particles, beta=c.beta, gradient=gradient, max_plate_nesting=2)
