"""mmJSD: a mixture of unimodal experts regularised by a multimodal Jensen-Shannon divergence with
a dynamic prior (Sutter, Daunhawer & Vogt 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.poutine.messenger import Messenger
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..distributions.fusion import MixtureOfExperts, ProductOfExperts, StratifiedMixture
from ..infer import StratifiedELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model


@dataclass
class MMJSDConfig(ModelConfig):
    """Options of :class:`MMJSD`.

    Attributes
    ----------
    alpha : float
        Weight of the Jensen-Shannon term. Default 2.5: the weight of the divergence terms in the
        official code's MNIST-SVHN-Text script (``job_mst.sh``: ``--beta=2.5`` with
        ``beta_content = 1``; the code's flag default is 5.0).
    private_latent_dim : int
        Size of the modality-specific latents ``w_m`` (0: none), the paper's "modality-specific
        subspaces": ``p(x_m | z, w_m)``, ``q(w_m | x_m)``, each with its KL to ``N(0, I)``
        weighted by ``beta``. The paper's reproduction script runs without them (0).
    beta : float
        Weight of the private latents' KL terms (no effect without private latents; the
        shared ``z`` is regularised by the Jensen-Shannon term alone).
    num_particles : int
        Samples per expert of the reconstruction term.
    """

    alpha: float = 2.5
    private_latent_dim: int = 0

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if not self.alpha >= 0:
            raise ValueError(f"mmJSD alpha must be >= 0, got {self.alpha}")
        if self.private_latent_dim < 0:
            raise ValueError(f"private_latent_dim must be >= 0, got {self.private_latent_dim}")


class _ScaleSite(Messenger):
    """Multiply the log-density of the sample site ``name`` by ``scale`` (0 allowed, unlike
    ``poutine.scale``): the site is still sampled and its value used, but scores nothing."""

    def __init__(self, name: str, scale: float) -> None:
        super().__init__()
        self.name, self.scale = name, float(scale)

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] == self.name:
            msg["scale"] = self.scale * msg["scale"]


@register_model("mmjsd")
class MMJSD(MultimodalVAE):
    r"""Multimodal Jensen-Shannon divergence VAE (Sutter, Daunhawer & Vogt, "Multimodal
    Generative Learning Utilizing Jensen-Shannon-Divergence", NeurIPS 2020).

    With ``O`` the modalities a row observes, ``q_0 = p`` and weights ``pi_j = 1 / (|O| + 1)``
    over ``{p} ∪ O``, the dynamic prior is the weighted geometric mean of the experts,
    ``f ∝ prod_j q_j^{pi_j}`` (Gaussian, precision ``sum_j pi_j / sigma_j^2``), and

    .. math:: \mathcal L = \frac{1}{|O|} \sum_{e \in O} \mathbb E_{q_e(z|x_e)}
              \Big[\sum_{m \in O} \log p(x_m | z)\Big]
              - \alpha \sum_{j \in \{0\} \cup O} \pi_j\, \mathrm{KL}(q_j \| f)

    (the reconstruction is under the mixture of the observed unimodal experts, the second term
    the generalised Jensen-Shannon divergence ``JS_pi(q_1..q_M, p)``). With private latents,
    ``- beta sum_m KL(q(w_m | x_m) || p(w_m))`` is added and ``x_m`` is decoded from ``(z, w_m)``.

    Estimator: the mixture expectation is stratified as in MMVAE (one reparameterised ``z`` per
    observed expert under ``pyro.plate("experts", M)``, weighted ``1/|O|``), so the loss and its
    gradient are unbiased for ``L``; the JS term is closed form (a guide factor, subtracted from
    the ELBO), the private KLs too. The shared ``z`` site itself scores nothing in training
    (its ``log p(z) - log q(z)`` is multiplied by 0): ``z`` is regularised by the JS term only.

    The reported loss (:meth:`evaluation_loss`) is instead the stratified ELBO of the mixture
    guide with the prior ``p`` (beta 1, no JS term), a true bound on ``log p(X_O)``.

    Missing modalities (an extension: the paper trains on complete data): the experts a row
    misses are dropped from ``f``, from the JS sum and from the mixture, and ``pi`` is renormalised
    over ``{p} ∪ O``. A row that observes nothing encodes to the prior and adds nothing.
    """

    config_class = MMJSDConfig
    max_plate_nesting = 2

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The mixture of each row's observed unimodal experts (the prior for a row that
        observes nothing)."""
        loc, scale, mask = self._prior_for_empty_rows(*self.experts(batch))
        return MixtureOfExperts(dist.Normal(loc, scale).to_event(1), mask)

    def dynamic_prior(self, loc: Tensor, scale: Tensor, mask: Tensor) -> ProductOfExperts:
        """``f``: the geometric mean of the prior and the observed experts, weights
        ``1 / (|O| + 1)`` (experts ``loc``, ``scale`` ``(B, M, D)``, ``mask`` ``(B, M)``)."""
        pi = 1.0 / (mask.sum(-1, keepdim=True) + 1).to(loc.dtype)  # (B, 1)
        return ProductOfExperts(loc, scale, mask, self.prior_loc, self.prior_scale,
                                weights=pi.unsqueeze(-1), prior_weight=pi)

    def js_divergence(self, batch: MultimodalBatch) -> Tensor:
        """``JS_pi = sum_{j in {p} ∪ O} pi_j KL(q_j || f)`` of each row, shape ``(B,)``."""
        return self._js(*self.experts(batch))

    def _js(self, loc: Tensor, scale: Tensor, mask: Tensor) -> Tensor:
        f = self.dynamic_prior(loc, scale, mask)
        pi = 1.0 / (mask.sum(-1) + 1).to(loc.dtype)  # (B,)
        fb = f.base_dist
        f_each = dist.Normal(fb.loc.unsqueeze(-2), fb.scale.unsqueeze(-2)).to_event(1)
        kl_experts = kl_divergence(dist.Normal(loc, scale).to_event(1), f_each)  # (B, M)
        kl_experts = torch.where(mask, kl_experts, torch.zeros_like(kl_experts)).sum(-1)
        kl_prior = kl_divergence(self.prior().expand(pi.shape), f)  # (B,)
        return pi * (kl_prior + kl_experts)

    def _strata(self, batch: MultimodalBatch) -> Tensor:
        return torch.stack([batch.row_mask(m) for m in self.names], 0)  # (M, B)

    # ------------------------------------------------------------------ training pair
    def model(self, batch: MultimodalBatch) -> None:
        """One ``z`` per expert under ``pyro.plate("experts", M)``, ``x_m ~ p(x_m | z[, w_m])``;
        the ``z`` site scores nothing (the JS term in the guide regularises ``z``)."""
        with _ScaleSite("z", 0.0):
            self.stratified_model(batch, self._strata(batch))

    def guide(self, batch: MultimodalBatch) -> None:
        """``z_e ~ q_e(z | x_e)`` for every observed expert ``e`` (scoring nothing), private
        ``w_m ~ q(w_m | x_m)``, and the factor ``alpha * JS_pi`` of each row."""
        self._stratified_guide(batch, training=True)

    def _stratified_guide(self, batch: MultimodalBatch, training: bool) -> None:
        self._check_batch(batch)
        self._announce_params()
        loc, scale, mask = self.experts(batch)
        experts = dist.Normal(loc.transpose(0, 1), scale.transpose(0, 1)).to_event(1)  # (M, B)
        strata = mask.transpose(0, 1)
        rows = pyro.plate("batch", batch.batch_size, dim=-1)  # entered twice: one plate object
        with pyro.plate("experts", len(self.names), dim=-2), rows:
            with poutine.mask(mask=strata):
                if training:
                    with _ScaleSite("z", 0.0):
                        pyro.sample("z", experts)
                else:
                    pyro.sample("z", StratifiedMixture(experts, strata))
                if self.private_dim:
                    self.sample_private(batch, guide=True)
        if training and self.config.alpha > 0:
            with rows:
                pyro.factor("mmjsd_js", self.config.alpha * self._js(loc, scale, mask), has_rsample=True)

    # ------------------------------------------------------------------ objectives
    def scored_model(self, batch: MultimodalBatch) -> None:
        """The stratified model with ``z`` scored by the prior ``p`` (the evaluation model)."""
        self.stratified_model(batch, self._strata(batch))

    def scored_guide(self, batch: MultimodalBatch) -> None:
        """One ``z`` per observed expert scored by the mixture density, no JS factor (the
        evaluation guide)."""
        self._stratified_guide(batch, training=False)

    def evaluation_model(self):
        return self.scored_model

    def evaluation_guide(self):
        return self.scored_guide

    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The stratified ELBO of the mixture guide with the prior ``p`` (beta 1, no JS term):
        ``(1/|O|) sum_e E_{q_e}[log p(X_O, z[, w]) - log q(z | X_O)[ - log q(w | X)]]``, a bound
        on ``log p(X_O)`` (use with :meth:`evaluation_model` / :meth:`evaluation_guide`)."""
        return StratifiedELBO(max_plate_nesting=2)

    def default_loss(self) -> pyro.infer.ELBO:
        """``-L`` summed over rows: stratified reconstruction, closed-form JS factor and private KLs."""
        c = self.config
        return StratifiedELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=True, max_plate_nesting=2)
