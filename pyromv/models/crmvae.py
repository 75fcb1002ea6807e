"""CRMVAE: a product of experts without prior expert, coordinated with its unimodal experts and
trained to reconstruct each modality from its own expert (Suzuki & Matsuo 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..infer import ELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .mvtcae import fuse_without_prior, kl_to_experts
from .registry import register_model


@dataclass
class CRMVAEConfig(ModelConfig):
    """Options of :class:`CRMVAE`.

    Attributes
    ----------
    beta : float
        Weight of the KL terms (2.5 is MultiVae's default, as in MVTCAE's PolyMNIST setting;
        the paper's own value was not verified).
    analytic_kl : bool
        Closed-form ``KL(q(z|X) || p)`` in the ELBO (the expert KLs are always closed form).
    """

    beta: float = 2.5
    analytic_kl: bool = True


@register_model("crmvae")
class CRMVAE(MultimodalVAE):
    r"""Coordination-based multimodal VAE with unimodal reconstructions (Suzuki & Matsuo,
    "Mitigating the Limitations of Multimodal VAEs with Coordination-Based Approach", 2023,
    https://openreview.net/forum?id=Rn8u4MYgeNJ).

    .. math:: q(z | X_O) \propto \prod_{m \in O} q_m(z | x_m), \qquad \pi = \frac{1}{n + 1}, \\
              \mathcal L = \pi \sum_{m \in O} \Big[\mathbb E_{q(z|X_O)} \log p(x_m | z)
              + \mathbb E_{q_m(z|x_m)} \log p(x_m | z)\Big]
              - \beta \pi \Big[\sum_{m \in O} \mathrm{KL}(q(z|X_O) \| q_m) + \mathrm{KL}(q(z|X_O) \| p)\Big]

    with ``n = |O|`` the number of modalities a row observes (the paper's ``M`` on complete
    rows). Each unimodal term reconstructs only its own modality, from a draw of its own expert.
    No prior expert; a row that observes nothing is encoded as the prior and adds nothing.

    In Pyro: model and guide scale every site of row ``b`` by ``pi_b``; the objective is
    :class:`~pyromv.infer.ELBO` with latent weight ``beta`` (the ``pi KL(q || p)`` term and the
    joint reconstructions); the expert KLs are the guide factor ``crmvae_kl``; the unimodal
    reconstructions draw ``z_m ~ q_m`` for every expert at once (a masked auxiliary site
    ``z_unimodal`` of event shape ``(M, D)``: it adds no density to the bound, its
    reparameterised draws feed the guide factor ``crmvae_unimodal``). A KL
    warm-up from the trainer anneals the KL to the prior only. One reparameterised draw of each
    latent per row and particle, KLs in closed form: value and gradient are unbiased for ``L``.
    The reported loss (:meth:`evaluation_model`, :meth:`evaluation_guide`) is the plain ELBO of
    ``q(z | X_O)``.
    """

    config_class = CRMVAEConfig

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        return fuse_without_prior(self, batch)[0]

    def _weights(self, batch: MultimodalBatch) -> Tensor:
        """``pi = 1 / (n + 1)`` per row."""
        return 1.0 / (batch.observed_counts().to(self.prior_loc.dtype) + 1.0)

    def model(self, batch: MultimodalBatch) -> None:
        """``z ~ p(z)``, ``x_m ~ p(x_m | z)`` for each observed modality, row ``b`` weighted ``pi_b``."""
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size), poutine.scale(scale=self._weights(batch)):
            z = pyro.sample("z", self.prior())
            self.observe(batch, z)

    def guide(self, batch: MultimodalBatch) -> None:
        """``z ~ q(z | X_O)``, the expert KLs, and ``z_m ~ q_m`` with the unimodal reconstructions."""
        self._check_batch(batch)
        self._announce_params()
        q, loc, scale, mask = fuse_without_prior(self, batch)
        with pyro.plate("batch", batch.batch_size), poutine.scale(scale=self._weights(batch)):
            pyro.sample("z", q)
            pyro.factor("crmvae_kl", self.config.beta * kl_to_experts(q, loc, scale, mask), has_rsample=True)
            self._unimodal_reconstructions(batch, loc, scale, mask)

    def _unimodal_reconstructions(self, batch: MultimodalBatch, loc: Tensor, scale: Tensor, mask: Tensor) -> None:
        """The factor ``-sum_{m in O} log p(x_m | z_m)``, ``z_m ~ q_m`` (call inside the batch
        plate): one draw of every expert (event shape ``(M, D)``), modality ``m`` decoded from its
        own draw on the rows observing it."""
        with poutine.mask(mask=torch.zeros_like(mask[:, 0])):  # a draw, not a density of the bound
            z = pyro.sample("z_unimodal", dist.Normal(loc, scale).to_event(2), infer={"is_auxiliary": True})
        total = 0.0
        for j, m in enumerate(self.names):
            observed = mask[:, j]
            if bool(observed.any()):
                fn = self.likelihood(m, z[..., j, :], observed, batch.feature_mask(m))
                total = total + self.likelihood_weights[m] * fn.log_prob(batch.data[m])
        pyro.factor("crmvae_unimodal", -total * torch.ones_like(loc[:, 0, 0]), has_rsample=True)

    def evaluation_model(self):
        """The unweighted model: with :meth:`evaluation_guide`, the ELBO of ``q(z | X_O)``."""
        return self.iw_model

    def evaluation_guide(self):
        """``z ~ q(z | X_O)`` without the coordination terms."""
        return self.iw_guide

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=1)
