"""MVTCAE: a product of experts without prior expert, trained with a total-correlation objective
(Hwang, Kim, Hong & Kim 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..distributions.fusion import ProductOfExperts
from ..infer import ELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model


def fuse_without_prior(model: MultimodalVAE, batch: MultimodalBatch) -> tuple[ProductOfExperts, Tensor, Tensor, Tensor]:
    """``q(z | X_O) ∝ prod_{m in O} q_m(z | x_m)`` (no prior expert) and the experts.

    Returns the product (batch shape ``(B,)``) and the experts' ``loc``, ``scale`` ``(B, M, D)``
    and mask ``(B, M)``. A row that observes nothing has no product; it gets the prior as its one
    expert, so ``q(z | nothing) = p(z)``.
    """
    loc, scale, mask = model.experts(batch)
    q = ProductOfExperts(*model._prior_for_empty_rows(loc, scale, mask), include_prior=False)
    return q, loc, scale, mask


def kl_to_experts(q: dist.TorchDistribution, loc: Tensor, scale: Tensor, mask: Tensor) -> Tensor:
    r"""``sum_{m in O} KL(q(z | X_O) || q_m(z | x_m))`` of each row, ``(B,)``, in closed form;
    each Gaussian with its own parameters (0 on a row observing nothing)."""
    joint = dist.Normal(q.mean.unsqueeze(-2), q.base_dist.scale.unsqueeze(-2)).to_event(1)
    kl = kl_divergence(joint, dist.Normal(loc, scale).to_event(1))  # (B, M)
    return torch.where(mask, kl, torch.zeros_like(kl)).sum(-1)


@dataclass
class MVTCAEConfig(ModelConfig):
    """Options of :class:`MVTCAE` (defaults: the paper's PolyMNIST setting, ``TC_RATIO = 5/6`` and
    ``BETA = 2.5`` in the official code's ``main_mmnist.py``; that code's latent size is 512).

    Attributes
    ----------
    alpha : float
        The total-correlation ratio ``a`` in [0, 1]: ``0`` is the beta-ELBO of the product of
        experts, ``1`` drops the KL to the prior.
    beta : float
        Weight of both KL terms.
    analytic_kl : bool
        Closed-form ``KL(q(z|X) || p)`` in the ELBO (the expert KLs are always closed form).
    """

    alpha: float = 5.0 / 6.0
    beta: float = 2.5
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"MVTCAE alpha must be in [0, 1], got {self.alpha}")


@register_model("mvtcae")
class MVTCAE(MultimodalVAE):
    r"""Multi-View Total Correlation Auto-Encoder (Hwang, Kim, Hong & Kim, NeurIPS 2021).

    .. math:: q(z | X_O) \propto \prod_{m \in O} q_m(z | x_m), \qquad
              \mathcal L = \frac{n - a}{n} \sum_{m \in O} \mathbb E_{q(z|X_O)} \log p(x_m | z)
              - \beta \Big[(1 - a)\, \mathrm{KL}(q(z|X_O) \| p) + \frac{a}{n} \sum_{m \in O}
              \mathrm{KL}(q(z|X_O) \| q_m)\Big]

    with ``n = |O|`` the number of modalities a row observes (the paper's ``M`` for complete
    rows; the natural extension for incomplete ones). The product has no prior expert; a row that
    observes nothing is encoded as the prior and adds nothing to the loss. ``a = 0`` gives the
    beta-ELBO of the product of experts.

    In Pyro: the model scales each row's likelihood sites by ``(n - a) / n``, the objective is
    :class:`~pyromv.infer.ELBO` with latent weight ``beta (1 - a)``, and the expert KLs are a
    guide factor ``pyro.factor("mvtcae_kl", beta a / n * sum_m KL, has_rsample=True)`` (a
    guide factor is subtracted from the ELBO). A KL warm-up from the trainer anneals the KL to
    the prior only. The estimator draws one reparameterised ``z`` per row and particle, the KLs
    in closed form: value and gradient are unbiased for ``L``. The reported loss
    (:meth:`evaluation_model`, :meth:`evaluation_guide`) is the plain ELBO of ``q(z | X_O)``.
    """

    config_class = MVTCAEConfig

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        return fuse_without_prior(self, batch)[0]

    def _recon_weights(self, batch: MultimodalBatch) -> Tensor | None:
        """``(n - a) / n`` per row (``None`` when every weight is 1)."""
        alpha = self.config.alpha
        if alpha == 0:
            return None
        n = batch.observed_counts().to(self.prior_loc.dtype)
        return torch.where(n > 0, (n - alpha) / n.clamp_min(1), torch.ones_like(n))

    def model(self, batch: MultimodalBatch) -> None:
        """``z ~ p(z)``; ``x_m ~ p(x_m | z)`` for each observed modality, weighted ``(n - a) / n``."""
        self._check_batch(batch)
        self._announce_params()
        weights = self._recon_weights(batch)
        with pyro.plate("batch", batch.batch_size):
            z = pyro.sample("z", self.prior())
            if weights is None:
                self.observe(batch, z)
                return
            scored = weights > 0  # a = 1 leaves one-modality rows without a reconstruction term
            with poutine.scale(scale=torch.where(scored, weights, torch.ones_like(weights))):
                self.observe(batch, z, scored=None if bool(scored.all()) else scored)

    def guide(self, batch: MultimodalBatch) -> None:
        """``z ~ q(z | X_O)`` and the factor ``beta a / n * sum_{m in O} KL(q(z|X_O) || q_m)``."""
        self._check_batch(batch)
        self._announce_params()
        q, loc, scale, mask = fuse_without_prior(self, batch)
        c = self.config
        with pyro.plate("batch", batch.batch_size):
            pyro.sample("z", q)
            if c.alpha > 0:
                n = mask.sum(-1).clamp_min(1).to(loc.dtype)
                pyro.factor("mvtcae_kl", c.beta * c.alpha / n * kl_to_experts(q, loc, scale, mask),
                            has_rsample=True)

    def evaluation_model(self):
        """The unweighted model: with :meth:`evaluation_guide`, the ELBO of ``q(z | X_O)``."""
        return self.iw_model

    def evaluation_guide(self):
        """``z ~ q(z | X_O)`` without the expert-KL factor."""
        return self.iw_guide

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta * (1.0 - c.alpha), analytic_kl=c.analytic_kl,
                    max_plate_nesting=1)
