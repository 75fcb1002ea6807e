"""gPoE: a generalised (weighted) product of experts with learned weights (Cao & Fleet 2014;
multi-view-AE's ``weighted_mVAE``, Lawry Aguila, Chapman & Altmann 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..distributions.fusion import ProductOfExperts
from ..infer import ELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model


@dataclass
class GPoEConfig(ModelConfig):
    """Options of :class:`GPoE`.

    Attributes
    ----------
    prior_expert : bool
        Include the prior ``p(z)`` (weight 1) in every row's product. multi-view-AE's
        ``weighted_mVAE`` has no prior expert (default False); a row that observes nothing then
        encodes to the prior.
    analytic_kl : bool
        Closed-form ``KL(q(z | X) || p(z))`` in the ELBO.
    """

    prior_expert: bool = False
    analytic_kl: bool = True


@register_model("gpoe")
class GPoE(MultimodalVAE):
    r"""Generalised product-of-experts VAE (Cao & Fleet, "Generalized Product of Experts for
    Automatic and Principled Fusion of Gaussian Process Predictions", 2014; the ``weighted_mVAE``
    of Lawry Aguila, Chapman & Altmann, "Multi-view-AE: A Python package for multi-view
    autoencoder models", JOSS 2023).

    .. math:: \Lambda_d = [\sigma_{0,d}^{-2}] + \sum_{m \in O} a_{m,d}\, \sigma_{m,d}^{-2}, \qquad
              \mu_d = \Lambda_d^{-1}\Big([\mu_{0,d} \sigma_{0,d}^{-2}] + \sum_{m \in O} a_{m,d}\,
              \mu_{m,d}\, \sigma_{m,d}^{-2}\Big)

    with one learned weight ``a_{m,d} = sigmoid(theta_{m,d})`` in ``(0, 1)`` per modality and latent
    dimension, initialised to ``1/M`` (the bracketed prior expert only with ``prior_expert``).
    Trained with the ELBO ``E_q[log p(X_O | z)] - beta KL(q(z | X_O) || p(z))`` (reparameterised,
    an unbiased gradient of the bound).

    Missing modalities: a missing expert has weight 0 (dropped from the product); the weights
    are not renormalised (multi-view-AE does not normalise them). A row observing nothing is the
    prior.
    """

    config_class = GPoEConfig

    def __init__(self, modalities, config: GPoEConfig | None = None) -> None:
        super().__init__(modalities, config)
        M, D = len(self.names), self.config.latent_dim
        # a = 1/M at the start; one modality starts at a = 0.999 (the sigmoid never reaches 1)
        start = min(1.0 / M, 0.999)
        self.weight_logits = nn.Parameter(torch.full((M, D), math.log(start / (1.0 - start))))

    def modality_weights(self) -> Tensor:
        """The weights ``a_{m,d}`` in ``(0, 1)``, shape ``(M, D)`` (modalities in model order)."""
        return torch.sigmoid(self.weight_logits)

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The weighted product of each row's observed experts (and the prior expert where
        configured, or where a row observes nothing)."""
        loc, scale, mask = self.experts(batch)
        if self.config.prior_expert:
            prior_weight = None
        else:  # the prior only for rows with no expert
            prior_weight = (~mask.any(-1, keepdim=True)).to(loc.dtype)
        return ProductOfExperts(loc, scale, mask, self.prior_loc, self.prior_scale,
                                weights=self.modality_weights(), prior_weight=prior_weight)

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=1)
