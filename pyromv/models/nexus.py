"""Nexus: modality-level VAEs under a shared top latent fed by averaged messages (Vasco et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..infer import ELBO
from ..nn.mlp import MLPDecoder, MLPEncoder
from ..nn.registry import build_decoder, build_encoder
from .base import MultimodalVAE, _plate_shape
from .config import ModelConfig
from .registry import register_model


@dataclass
class NexusConfig(ModelConfig):
    """Options of :class:`Nexus` (defaults: the official code's MHD settings where they apply).

    Attributes
    ----------
    bottom_latent_dim : int
        Size of every modality's bottom latent ``z_m`` (0: ``latent_dim``). The paper sizes them
        per modality (image 64, trajectory 16, sound 128, label 5); here one size for all.
    message_dim : int
        Size of each message ``msg_m = Linear(z_m)`` (the paper's 512).
    top_hidden_dims : list of int
        Hidden layers of the top encoder ``q(z_sigma | mean message)`` and of each top decoder
        ``z_sigma -> mean of p(z_m | z_sigma)`` (the paper's ``[512, 512]``).
    top_scale : float
        Standard deviation ``s`` of ``p(z_m | z_sigma) = N(f_m(z_sigma), s^2 I)``. Default
        ``1/sqrt(2)``: the official code's squared error ``gamma ||z_m - f_m||^2`` is
        ``-gamma log N(z_m; f_m, 1/2)`` up to a constant.
    bottom_beta : float
        ``beta_m``: weight of each bottom ``KL(q(z_m | x_m) || N(0, I))`` (paper 1).
    top_beta : float
        ``beta_sigma``: weight of the top ``KL(q(z_sigma | .) || N(0, I))`` (paper 1).
    gamma : float
        ``gamma_m``: weight of each top reconstruction ``log p(z_m | z_sigma)`` (paper 1 for
        image and sound, 50 for trajectory and label: use ``gammas``).
    gammas : dict of str to float
        Per-modality ``gamma_m`` overriding ``gamma``. The bottom reconstruction weights
        ``lambda_m`` are the modalities' own ``rescale``.
    dropout_rate : float
        Forced perceptual dropout: probability that a training row drops a random non-empty
        proper subset of its observed messages (the paper's 0.2).
    analytic_kl : bool
        Closed-form KL terms (the official code computes them in closed form).
    """

    bottom_latent_dim: int = 0
    message_dim: int = 512
    top_hidden_dims: list[int] = field(default_factory=lambda: [512, 512])
    top_scale: float = 0.5 ** 0.5
    bottom_beta: float = 1.0
    top_beta: float = 1.0
    gamma: float = 1.0
    gammas: dict[str, float] = field(default_factory=dict)
    dropout_rate: float = 0.2
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.bottom_latent_dim < 0:
            raise ValueError(f"Nexus bottom_latent_dim must be >= 0, got {self.bottom_latent_dim}")
        if self.message_dim < 1:
            raise ValueError(f"Nexus message_dim must be >= 1, got {self.message_dim}")
        if any(int(h) < 1 for h in self.top_hidden_dims):
            raise ValueError(f"Nexus top_hidden_dims must be positive, got {list(self.top_hidden_dims)}")
        if not self.top_scale > 0:
            raise ValueError(f"Nexus top_scale must be positive, got {self.top_scale}")
        for name in ("bottom_beta", "top_beta", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"Nexus {name} must be >= 0, got {getattr(self, name)}")
        for m, g in self.gammas.items():
            if g < 0:
                raise ValueError(f"Nexus gammas[{m!r}] must be >= 0, got {g}")
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ValueError(f"Nexus dropout_rate must be in [0, 1], got {self.dropout_rate}")


def perceptual_dropout(observed: Tensor, rate: float) -> Tensor:
    """Forced perceptual dropout, vectorised over rows: ``True`` where a message is dropped.

    Each row (leading dims of the ``(..., M)`` mask ``observed``) with ``n >= 2`` observed
    modalities is hit with probability ``rate``; a hit row drops ``k ~ U{1, ..., n - 1}`` of
    them, a uniformly random ``k``-subset (the ``k`` observed ones with the smallest uniform
    keys). Draws, in order: ``rand(rows)`` (hit), ``rand(rows)`` (k), ``rand(rows, M)`` (keys).
    """
    rows = observed.shape[:-1]
    n = observed.sum(-1)
    hit = torch.rand(rows, device=observed.device) < rate
    k = (torch.rand(rows, device=observed.device) * (n - 1).clamp(min=0)).floor() + 1
    keys = torch.rand(observed.shape, device=observed.device).masked_fill(~observed, 2.0)
    rank = keys.argsort(-1).argsort(-1)
    return observed & (hit & (n >= 2)).unsqueeze(-1) & (rank < k.unsqueeze(-1))


class _Given(Messenger):
    """Give the latent site ``name`` a value drawn beforehand; it stays latent (scored by its
    ``fn``), so a guide can draw part of a site before the sites it conditions."""

    def __init__(self, name: str, value: Tensor) -> None:
        super().__init__()
        self.name, self.value = name, value

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.name and not msg["is_observed"]:
            msg["value"], msg["done"] = self.value, True


def _scaled(weight: float):
    return poutine.scale(scale=weight) if weight != 1.0 else nullcontext()


@register_model("nexus")
class Nexus(MultimodalVAE):
    r"""Nexus (Vasco, Yin, Melo & Paiva, "Leveraging hierarchy in multimodal generative models for
    effective cross-modality inference", Neural Networks 146, 2022).

    Each modality has a VAE with a bottom latent ``z_m`` (``q(z_m | x_m)``, ``p(x_m | z_m)``,
    prior ``N(0, I)``); a top latent ``z_sigma`` (site ``z``) is encoded from the mean of the
    messages ``msg_m = Linear_m(sg(z_m))`` of the observed modalities and decodes each bottom
    latent, ``p(z_m | z_sigma) = N(f_m(z_sigma), s^2 I)``. The paper's loss (negated), per row
    observing ``O``, one draw ``z_m ~ q(z_m | x_m)`` used in both levels:

    .. math:: \sum_{m \in O} \big(\lambda_m \mathbb E \log p(x_m | z_m) - \beta\beta_m
              \mathrm{KL}(q(z_m|x_m) \| N(0, I))\big) + \sum_{m \in O} \gamma_m \mathbb E
              \log p(\mathrm{sg}(z_m) | z_\sigma) - \beta\beta_\sigma
              \mathrm{KL}(q(z_\sigma | \bar{msg}) \| N(0, I))

    ``sg`` stops gradients (the top level does not train the bottom one). During training the
    forced perceptual dropout (:func:`perceptual_dropout`) removes random subsets of the messages
    before averaging. The gradient is the reparameterised gradient of this loss: unbiased for it.
    It is not an ELBO of one generative model; the reported bound (:meth:`evaluation_model`) is
    the ELBO of the hierarchy ``p(z_sigma) \prod_m p(z_m | z_sigma) p(x_m | z_m)`` that
    generation uses, with the same guide, no dropout and ``beta = 1``: a bound on ``log p(X_O)``.

    Missing modalities: their bottom terms are masked, their messages left out of the average;
    a row observing nothing gets ``q(z_sigma) = p(z_sigma)``.
    """

    models_missingness = False  # its own observation sites: Modality.missingness is refused

    config_class = NexusConfig

    def __init__(self, modalities, config: NexusConfig | None = None) -> None:
        super().__init__(modalities, config)
        c = self.config
        unknown = set(c.gammas) - set(self.names)
        if unknown:
            raise ValueError(f"Nexus gammas name unknown modalities {sorted(unknown)}; the model has {self.names}")
        self.bottom_dim = c.bottom_latent_dim or c.latent_dim
        if self.bottom_dim != c.latent_dim:  # the base built the networks for latent_dim
            for m in self.modalities:
                head = self.likelihoods[m.name]
                self.encoders[m.name] = build_encoder(m.encoder.name, m.encoder.kwargs, head.input_shape,
                                                      self.bottom_dim, mask_aware=m.mask_aware == "on")
                self.decoders[m.name] = build_decoder(m.decoder.name, m.decoder.kwargs, self.bottom_dim,
                                                      head.param_shape)
        self.message_encoders = nn.ModuleDict({m: nn.Linear(self.bottom_dim, c.message_dim) for m in self.names})
        self.top_encoder = MLPEncoder((c.message_dim,), c.latent_dim, list(c.top_hidden_dims), "leaky_relu")
        self.top_decoders = nn.ModuleDict({
            m: MLPDecoder(c.latent_dim, (self.bottom_dim,), list(c.top_hidden_dims), "leaky_relu")
            for m in self.names
        })
        self.gammas = {m: float(c.gammas.get(m, c.gamma)) for m in self.names}
        self.register_buffer("bottom_loc", torch.zeros(self.bottom_dim))
        self.register_buffer("bottom_scale", torch.ones(self.bottom_dim))

    # ------------------------------------------------------------------ distributions
    def bottom_posterior(self, batch: MultimodalBatch, name: str) -> dist.TorchDistribution:
        """``q(z_m | x_m)`` of each row, batch shape ``(B,)``."""
        loc, scale = self.apply_encoder(self.encoders[name], name, batch)
        return dist.Normal(loc, scale).to_event(1)

    def bottom_prior(self) -> dist.TorchDistribution:
        """The bottom ELBOs' prior ``N(0, I)`` of each ``z_m``."""
        return dist.Normal(self.bottom_loc, self.bottom_scale).to_event(1)

    def top_conditional(self, name: str, z: Tensor) -> dist.TorchDistribution:
        """``p(z_m | z_sigma) = N(f_m(z_sigma), s^2 I)``."""
        loc = self.top_decoders[name](z)
        return dist.Normal(loc, torch.full_like(loc, self.config.top_scale)).to_event(1)

    def top_posterior(self, bottoms: dict[str, Tensor], observed: Tensor, dropout: bool = False
                      ) -> dist.TorchDistribution:
        """``q(z_sigma | mean of the messages of the observed modalities)`` from bottom latents
        ``bottoms[m]`` ``(..., B, D_m)`` (detached here) and the ``(B, M)`` mask ``observed``;
        ``dropout``: forced perceptual dropout first (one draw per row and particle). Rows with
        no message left get the prior."""
        msgs = torch.stack([self.message_encoders[m](bottoms[m].detach()) for m in self.names], -2)
        keep = observed.expand(msgs.shape[:-1])
        if dropout:
            keep = keep & ~perceptual_dropout(keep, self.config.dropout_rate)
        count = keep.sum(-1, keepdim=True)
        mean = (msgs * keep.unsqueeze(-1)).sum(-2) / count.clamp(min=1)
        loc, scale = self.top_encoder(mean)
        empty = count == 0
        loc = torch.where(empty, self.prior_loc, loc)
        scale = torch.where(empty, self.prior_scale, scale)
        return dist.Normal(loc, scale).to_event(1)

    def _observed_mask(self, batch: MultimodalBatch) -> Tensor:
        return torch.stack([batch.row_mask(m) for m in self.names], -1)

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """``q(z_sigma | X_O)`` with each message computed at the mean of ``q(z_m | x_m)`` (a
        plug-in, deterministic; the guide draws ``z_m``)."""
        bottoms = {m: self.bottom_posterior(batch, m).mean for m in self.names}
        return self.top_posterior(bottoms, self._observed_mask(batch))

    # ------------------------------------------------------------------ model / guide
    def _observe(self, batch: MultimodalBatch, bottoms: dict[str, Tensor]) -> None:
        """Sites ``x_{m} ~ p(x_m | z_m)`` (weight ``lambda_m``), masked where ``m`` is missing."""
        for i in pyro.plate("modalities", len(self.modalities)):
            m = self.names[i]
            rows = batch.row_mask(m)
            if not bool(rows.any()):
                continue
            fn = self.likelihood(m, bottoms[m], rows, batch.feature_mask(m))
            with poutine.mask(mask=rows), _scaled(self.likelihood_weights[m]):
                pyro.sample(f"x_{m}", fn, obs=batch.data[m])

    def model(self, batch: MultimodalBatch) -> None:
        """The paper's two levels: ``z_m ~ N(0, I)``, ``x_m ~ p(x_m | z_m)`` (bottom ELBOs) and
        ``z_sigma ~ N(0, I)``, the observed site ``zbar_{m}`` scoring ``p(sg(z_m) | z_sigma)``
        (top ELBO), for the observed modalities."""
        self._check_batch(batch)
        self._announce_params()
        c = self.config
        with pyro.plate("batch", batch.batch_size):
            bottoms = {}  # drawn in the guide's order (the mean-field check of analytic KL)
            for m in self.names:
                with poutine.mask(mask=batch.row_mask(m)), _scaled(c.bottom_beta):
                    bottoms[m] = pyro.sample(f"z_{m}", self.bottom_prior())
            with _scaled(c.top_beta):
                z = pyro.sample("z", self.prior())
            self._observe(batch, bottoms)
            for m in self.names:
                rows = batch.row_mask(m)
                if not bool(rows.any()):
                    continue
                with poutine.mask(mask=rows), _scaled(self.gammas[m]):
                    pyro.sample(f"zbar_{m}", self.top_conditional(m, z), obs=bottoms[m].detach())

    def guide(self, batch: MultimodalBatch) -> None:
        """``z_m ~ q(z_m | x_m)`` (observed ``m``), then ``z_sigma ~ q(z_sigma | messages)``, with
        forced perceptual dropout while the module is training."""
        self._guide(batch, weighted=True, dropout=self.training and self.config.dropout_rate > 0)

    def _guide(self, batch: MultimodalBatch, weighted: bool, dropout: bool) -> None:
        self._check_batch(batch)
        self._announce_params()
        c = self.config
        with pyro.plate("batch", batch.batch_size):
            bottoms = {}
            for m in self.names:
                with poutine.mask(mask=batch.row_mask(m)), _scaled(c.bottom_beta if weighted else 1.0):
                    bottoms[m] = pyro.sample(f"z_{m}", self.bottom_posterior(batch, m))
            q = self.top_posterior(bottoms, self._observed_mask(batch), dropout)
            with _scaled(c.top_beta if weighted else 1.0):
                pyro.sample("z", q)

    def hierarchical_model(self, batch: MultimodalBatch, proposal: bool = False) -> None:
        """``z_sigma ~ N(0, I)``, ``z_m ~ p(z_m | z_sigma)``, ``x_m ~ p(x_m | z_m)``: the generative
        model of :meth:`generate`. ``z_m`` is masked where ``m`` is missing (marginalised), or
        drawn in every row with ``proposal`` (:meth:`iw_model`)."""
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size):
            z = pyro.sample("z", self.prior())
            bottoms = {}
            for m in self.names:
                with nullcontext() if proposal else poutine.mask(mask=batch.row_mask(m)):
                    bottoms[m] = pyro.sample(f"z_{m}", self.top_conditional(m, z))
            self._observe(batch, bottoms)

    def evaluation_model(self):
        return self.hierarchical_model

    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The Monte Carlo ELBO (``beta = 1``) of :meth:`hierarchical_model` with
        :meth:`evaluation_guide`: ``z_sigma`` depends on the draws of ``z_m`` in the guide and
        ``p(z_m | z_sigma)`` on ``z_sigma`` in the model, so no KL term is closed-form."""
        return ELBO(analytic_kl=False, max_plate_nesting=1)

    def evaluation_guide(self):
        """The guide without dropout or weights: its ELBO with :meth:`hierarchical_model`
        (``beta = 1``) bounds ``log p(X_O)``."""
        return lambda batch: self._guide(batch, weighted=False, dropout=False)

    def iw_model(self, batch: MultimodalBatch) -> None:
        """:meth:`hierarchical_model` with every ``z_m`` drawn (unmasked)."""
        self.hierarchical_model(batch, proposal=True)

    def iw_guide(self, batch: MultimodalBatch) -> None:
        """The proposal: ``z_m ~ q(z_m | x_m)`` for the modalities this batch observes, ``z_sigma``
        from their messages, then ``z_m ~ p(z_m | z_sigma)`` for the others — never from
        ``q(z_m | x_m)`` of data the proposal does not observe. Their weight is
        ``p(z_m | z_sigma) / p(z_m | z_sigma) = 1``."""
        self._check_batch(batch)
        self._announce_params()
        observed = self._observed_mask(batch)
        with pyro.plate("batch", batch.batch_size):
            shape = _plate_shape()
            qs, draws = {}, {}
            for m in self.names:
                qs[m] = self.bottom_posterior(batch, m).base_dist
                draws[m] = qs[m].rsample(shape[:-1])
            z = pyro.sample("z", self.top_posterior(draws, observed))
            for j, m in enumerate(self.names):
                p = self.top_conditional(m, z).base_dist
                rows = observed[:, j].unsqueeze(-1)
                fn = dist.Normal(torch.where(rows, qs[m].loc, p.loc), torch.where(rows, qs[m].scale, p.scale))
                with _Given(f"z_{m}", torch.where(rows, draws[m], p.rsample())):
                    pyro.sample(f"z_{m}", fn.to_event(1))

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=1)

    # ------------------------------------------------------------------ generation
    def decode(self, z: Tensor, private: dict[str, Tensor] | None = None) -> dict[str, dist.TorchDistribution]:
        """``p(x_m | z_m)`` at ``z_m`` = the mean of ``p(z_m | z_sigma)`` for top codes ``z``."""
        return {m: self.likelihood(m, self.top_decoders[m](z)) for m in self.names}

    def _point(self, z: Tensor, targets: Sequence[str] | None, private: dict[str, Tensor] | None = None,
               sample: bool = False) -> dict[str, Tensor]:
        out = {}
        for t in self.check_targets(targets):
            p = self.top_conditional(t, z)
            zt = p.sample() if sample else p.mean
            out[t] = self.likelihoods[t].mean(self.decoders[t](zt))
        return out

    @torch.no_grad()
    def cross_generate(self, batch: MultimodalBatch, targets: Sequence[str] | None = None, sample: bool = False,
                       ) -> dict[str, Tensor]:
        """``X_O -> z_sigma -> z_t -> x_t`` for each target (means, or draws with ``sample``)."""
        q = self.encode(batch)
        return self._point(q.sample() if sample else q.mean, targets, sample=sample)

    @torch.no_grad()
    def reconstruct(self, batch: MultimodalBatch, sample: bool = False) -> dict[str, Tensor]:
        """Rows observing ``m`` decode their own bottom latent (the modality VAE); the others
        go through the top latent as in :meth:`cross_generate`."""
        out = self.cross_generate(batch, None, sample)
        for m in self.names:
            q = self.bottom_posterior(batch, m)
            own = self.likelihoods[m].mean(self.decoders[m](q.sample() if sample else q.mean))
            rows = batch.row_mask(m).reshape((-1,) + (1,) * (own.dim() - 1))
            out[m] = torch.where(rows, own, out[m])
        return out
