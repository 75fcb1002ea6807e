"""MCVAE: every channel's encoder into one latent space, no fusion (Antelmi et al. 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..distributions.dropout import ImproperLogUniform, VariationalDropoutNormal
from ..distributions.fusion import MixtureOfExperts
from ..infer import ELBO, StratifiedELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model


@dataclass
class MCVAEConfig(ModelConfig):
    """Options of :class:`MCVAE` (defaults: the paper's non-sparse model).

    Attributes
    ----------
    sparse : bool
        The sparse MCVAE: ``q(z | x_c) = N(mu_c, alpha mu_c^2)`` with one
        learned ``log alpha`` per latent dimension shared by every channel, the improper
        log-uniform prior and Molchanov et al.'s KL approximation. The encoders' scale output
        is then unused.
    dropout_threshold : float
        Sparse model only: at inference (decoding) the dimensions whose dropout rate
        ``alpha / (1 + alpha)`` is not below this are pruned (set to 0), as the official code's
        ``apply_threshold``; 0.2 is the value of its example script (``log alpha < log 0.25``);
        0.5 is ``log alpha < 0``; 1 keeps every dimension.
    analytic_kl : bool
        Closed-form KL to the prior (the paper's code). Must stay on for ``sparse``: the
        log-uniform prior is improper, only Molchanov et al.'s approximation of its KL is defined.
    """

    sparse: bool = False
    dropout_threshold: float = 0.2
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if not 0.0 < self.dropout_threshold <= 1.0:
            raise ValueError(f"MCVAE dropout_threshold must be in (0, 1], got {self.dropout_threshold}")
        if self.sparse and not self.analytic_kl:
            raise ValueError("the sparse MCVAE needs analytic_kl=True: its log-uniform prior is improper, so the "
                             "KL has no Monte Carlo estimate (only Molchanov et al.'s approximation)")


@register_model("mcvae")
class MCVAE(MultimodalVAE):
    r"""Multi-channel VAE (Antelmi, Ayache, Robert & Lorenzi, "Sparse Multi-Channel Variational
    Autoencoder for the Joint Analysis of Heterogeneous Data", ICML 2019).

    .. math:: \mathcal L(X_O) = \sum_{c \in O} \Big(\sum_{i \in O}
              \mathbb E_{q(z | x_c)} \log p(x_i | z) - \beta\, \mathrm{KL}(q(z | x_c) \| p(z))\Big)

    No fusion: each channel ``c`` encodes on its own, and its posterior reconstructs every
    channel. The sum runs over the channels ``O`` a row observes (the paper has complete data;
    summing over the observed ones is the natural extension): each term is an ELBO of
    ``log p(X_O)`` with proposal ``q(z | x_c)``. Model and guide put one ``z`` per channel under
    ``pyro.plate("experts", M)`` and the plain :class:`~pyromv.infer.ELBO` sums over it, which is
    the paper's sum (weight 1 per channel; the KL is counted once per channel, not ``M^2`` times).
    The reparameterised gradient (one draw per channel, analytic KL) is unbiased for it.

    ``sparse=True``: ``q(z | x_c) = N(mu_c, alpha mu_c^2)`` with ``log alpha`` one parameter per
    dimension (:attr:`log_alpha`), the prior the improper log-uniform, and the KL Molchanov et
    al.'s approximation (:mod:`pyromv.distributions.dropout`). Dimensions with a dropout rate of
    ``dropout_threshold`` or more are pruned when decoding (:meth:`kept_dimensions`).

    :meth:`posterior` (``encode``, ``cross_generate``, importance sampling) is the uniform
    mixture of the observed channels' posteriors, the prior for a row that observes nothing:
    the paper predicts from each channel separately; the mixture's mean is the average of the
    channel means, and as a proposal it covers every channel's posterior.
    """

    config_class = MCVAEConfig
    max_plate_nesting = 2

    def __init__(self, modalities, config: MCVAEConfig | None = None) -> None:
        super().__init__(modalities, config)
        if self.config.sparse:
            #: ``log alpha`` of each latent dimension, shared by all channels (official init N(0, 0.01^2))
            self.log_alpha = nn.Parameter(0.01 * torch.randn(self.config.latent_dim))

    # ------------------------------------------------------------------ channels
    def _channels(self, batch: MultimodalBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Each channel's ``q(z | x_c)``: ``loc``, ``scale`` ``(B, M, D)``, mask ``(B, M)``."""
        loc, scale, mask = self.experts(batch)
        if self.config.sparse:
            scale = VariationalDropoutNormal(loc, self.log_alpha).scale
        return loc, scale, mask

    def _channel_guide(self, batch: MultimodalBatch) -> tuple[dist.TorchDistribution, Tensor]:
        """``q(z | x_c)`` of batch shape ``(M, B)`` and the strata mask ``(M, B)``."""
        loc, scale, mask = self.experts(batch)
        loc, strata = loc.transpose(0, 1), mask.transpose(0, 1)
        if self.config.sparse:
            q = VariationalDropoutNormal(loc, self.log_alpha)
        else:
            q = dist.Normal(loc, scale.transpose(0, 1))
        return q.to_event(1), strata

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The uniform mixture of the observed channels' ``q(z | x_c)`` (the prior for a row that
        observes nothing)."""
        loc, scale, mask = self._prior_for_empty_rows(*self._channels(batch))
        return MixtureOfExperts(dist.Normal(loc, scale).to_event(1), mask)

    def latent_prior(self) -> dist.TorchDistribution:
        """The prior of the objective: ``p(z)``, or the improper log-uniform when ``sparse``."""
        if self.config.sparse:
            return ImproperLogUniform((self.config.latent_dim,)).to_event(1)
        return self.prior()

    # ------------------------------------------------------------------ model / guide
    def model(self, batch: MultimodalBatch) -> None:
        """One ``z`` per channel (``pyro.plate("experts", M)``), each scoring every observed
        channel; channel ``c`` of a row is scored only where the row observes it."""
        self._check_batch(batch)
        self._announce_params()
        strata = torch.stack([batch.row_mask(m) for m in self.names], 0)  # (M, B)
        with pyro.plate("experts", len(self.names), dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            with poutine.mask(mask=strata):
                z = pyro.sample("z", self.latent_prior())
                self.observe(batch, z, scored=strata)

    def guide(self, batch: MultimodalBatch) -> None:
        """``z_c ~ q(z | x_c)`` for every channel a row observes."""
        self._check_batch(batch)
        self._announce_params()
        q, strata = self._channel_guide(batch)
        with pyro.plate("experts", len(self.names), dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            with poutine.mask(mask=strata):
                pyro.sample("z", q)

    # ------------------------------------------------------------------ objectives
    def default_loss(self) -> pyro.infer.ELBO:
        """The paper's objective: the ELBO summed over the channel plate."""
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=2)

    def evaluation_loss(self) -> pyro.infer.ELBO:
        r"""The mean over a row's observed channels of each channel's ELBO (``beta = 1``, closed-form
        KL): ``(1/|O|) sum_{c in O} [E_{q(z|x_c)} log p(X_O | z) - KL(q(z|x_c) || p)]``, a bound on
        ``log p(X_O)``. For the sparse model it is the same average with Molchanov et al.'s KL to
        the improper prior: defined up to a constant, not a bound on a normalised likelihood
        (comparable between sparse models only)."""
        return StratifiedELBO(analytic_kl=True, max_plate_nesting=2)

    def iw_model(self, batch: MultimodalBatch) -> None:
        """The importance-sampling model (``log_likelihood``); refused for the sparse model."""
        if self.config.sparse:
            raise ValueError(
                "log-likelihoods are undefined for the sparse MCVAE: its prior on z is the improper "
                "log-uniform p(z) ~ 1/|z|, so p(X) has no normalised value; compare sparse models by "
                "their evaluation loss, or use sparse=False"
            )
        return super().iw_model(batch)

    # ------------------------------------------------------------------ sparsity
    def dropout_rates(self) -> Tensor:
        """``alpha / (1 + alpha)`` of each latent dimension (sparse model only)."""
        if not self.config.sparse:
            raise ValueError("dropout rates exist only for the sparse MCVAE (config.sparse=True)")
        return torch.sigmoid(self.log_alpha.detach())

    def kept_dimensions(self) -> Tensor:
        """Boolean ``(D,)``: the latent dimensions kept at inference, those whose dropout rate is
        below ``config.dropout_threshold`` (every dimension for the non-sparse model)."""
        if not self.config.sparse:
            return torch.ones(self.config.latent_dim, dtype=torch.bool, device=self.prior_loc.device)
        threshold = self.config.dropout_threshold
        if threshold >= 1.0:
            return torch.ones_like(self.log_alpha, dtype=torch.bool)
        return self.log_alpha.detach() < math.log(threshold / (1.0 - threshold))

    def _prune(self, z: Tensor) -> Tensor:
        return z * self.kept_dimensions().to(z.dtype) if self.config.sparse else z

    def decode(self, z: Tensor, private: dict[str, Tensor] | None = None) -> dict[str, dist.TorchDistribution]:
        """``p(x_m | z)`` for every modality, pruned dimensions of ``z`` set to 0 (sparse model)."""
        return super().decode(self._prune(z), private)

    def _point(self, z: Tensor, targets, private: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        return super()._point(self._prune(z), targets, private)
