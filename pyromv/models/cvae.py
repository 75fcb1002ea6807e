"""CVAE: a conditional VAE ``p(y | z, c) p(z | c)`` of one modality given the others (Sohn et al. 2015)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..infer import ELBO
from ..nn.mlp import MLPEncoder
from ..nn.registry import build_decoder
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model


@dataclass
class CVAEConfig(ModelConfig):
    """Options of :class:`CVAE`.

    Attributes
    ----------
    main_modality : str, optional
        The modelled (output) modality ``y``; default: the first modality.
    conditioning : list of str, optional
        The conditioning (input) modalities ``c``; default: every modality but ``y``. Modalities
        in neither are ignored.
    prior_network : bool
        Learn the conditional prior ``p(z | c)`` (the paper's "prior network", default); otherwise
        ``p(z | c) = N(0, prior_scale^2 I)``.
    encoder_hidden_dims : list of int
        Hidden layers of the recognition network ``q(z | y, c)`` (an MLP on ``y`` and the masked ``c``).
    prior_hidden_dims : list of int
        Hidden layers of the prior network ``p(z | c)``.
    analytic_kl : bool
        Closed-form ``KL(q(z | y, c) || p(z | c))`` (both diagonal Gaussians); the paper's
        estimator for Gaussian latents.

    The network sizes are pyromv's defaults: the paper's architectures are task-specific.
    """

    main_modality: str | None = None
    conditioning: list[str] | None = None
    prior_network: bool = True
    encoder_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    prior_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.main_modality is not None and not isinstance(self.main_modality, str):
            raise TypeError(f"CVAE main_modality must be a modality name, got {self.main_modality!r}")
        if self.conditioning is not None:
            if isinstance(self.conditioning, str) or not all(isinstance(m, str) for m in self.conditioning):
                raise TypeError(f"CVAE conditioning must be a list of modality names, got {self.conditioning!r}")
            if len(set(self.conditioning)) != len(self.conditioning):
                raise ValueError(f"CVAE conditioning names a modality twice: {list(self.conditioning)}")
        for name in ("encoder_hidden_dims", "prior_hidden_dims"):
            if any(int(h) < 1 for h in getattr(self, name)):
                raise ValueError(f"CVAE {name} must be positive sizes, got {getattr(self, name)}")


@register_model("cvae")
class CVAE(MultimodalVAE):
    r"""Conditional VAE (Sohn, Lee & Yan 2015, eq. 4): a model of the main modality ``y`` given
    the conditioning modalities ``c``,

    .. math:: \log p(y | c) \ge \mathbb E_{q(z|y,c)}[\log p(y | z, c)]
              - \beta\,\mathrm{KL}\big(q(z | y, c) \,\|\, p(z | c)\big)

    with a recognition network ``q(z | y, c)``, a prior network ``p(z | c)`` (or ``N(0, I)``) and
    a generation network ``p(y | z, c)``. ``c`` is not modelled: the model generates ``y`` only
    (:attr:`generated_modalities`); generating a conditioning modality is a ValueError.

    Missing data. Every network sees ``c`` as its encoder inputs with missing rows (and missing
    entries) set to zero, concatenated with one availability bit per conditioning modality: a
    missing modality contributes exactly nothing to the first layer, so its data is never seen
    and masking it equals removing its input columns. ``p(z | nothing)`` (every ``c`` missing) is
    the prior network on the all-zero input, :meth:`prior`. A row missing ``y`` has
    ``log p(nothing | c) = 0``; its guide is the conditional prior itself, ``q(z | c) = p(z | c)``
    (the exact posterior when ``y`` is unobserved), so it adds exactly zero to the ELBO and
    :meth:`encode` returns ``p(z | c)`` for it.

    The gradient is that of the reparameterised ELBO: unbiased for the stated objective.
    """

    models_missingness = False  # its own observation sites: Modality.missingness is refused

    config_class = CVAEConfig

    def __init__(self, modalities, config: CVAEConfig | None = None) -> None:
        super().__init__(modalities, config)
        c = self.config
        main = self.names[0] if c.main_modality is None else c.main_modality
        if main not in self.names:
            raise ValueError(f"CVAE main_modality {main!r} is not a modality of the model: {self.names}")
        conditioning = [m for m in self.names if m != main] if c.conditioning is None else list(c.conditioning)
        for m in conditioning:
            if m not in self.names:
                raise ValueError(f"CVAE conditioning modality {m!r} is not a modality of the model: {self.names}")
            if m == main:
                raise ValueError(f"CVAE: modality {m!r} is the main modality; it cannot also be conditioned on")
        self.main = main
        self.conditioning = conditioning
        D = c.latent_dim
        # the base class's unimodal encoders and the decoders of c are not part of this model
        self.encoders = nn.ModuleDict()
        self.cond_width = sum(self._input_width(m) + 1 for m in conditioning)
        y_width = self._input_width(main)
        self.recognition = MLPEncoder((y_width + self.cond_width,), D, list(c.encoder_hidden_dims))
        self.prior_net = (MLPEncoder((self.cond_width,), D, list(c.prior_hidden_dims))
                          if c.prior_network and conditioning else None)
        spec = self.modality(main)
        self.decoders = nn.ModuleDict({
            main: build_decoder(spec.decoder.name, spec.decoder.kwargs, D + self.cond_width,
                                self.likelihoods[main].param_shape)
        })
        # one modelled modality: its own rescale only (no rescaling against the others)
        self.likelihood_weights = {m.name: m.rescale for m in self.modalities}

    @property
    def generated_modalities(self) -> list[str]:
        """``[y]``: the conditioning modalities are inputs, not modelled."""
        return [self.main]

    # ------------------------------------------------------------------ inputs
    def _input_width(self, name: str) -> int:
        """Width of :meth:`_masked_input`: the flattened encoder input, twice for a mask-aware
        modality (values and their mask)."""
        width = math.prod(self.likelihoods[name].input_shape)
        return 2 * width if self.modality(name).mask_aware == "on" else width

    def _masked_input(self, batch: MultimodalBatch, name: str) -> Tensor:
        """Encoder input of ``name``, flattened ``(B, w)``, zero where the row or entry is missing;
        for a mask-aware modality (``Modality.mask_aware="on"``) followed by its entry mask (the
        networks' view of ``(x * m, m)``, as :class:`~pyromv.nn.MaskConcat` gives the encoders)."""
        x = self.likelihoods[name].encoder_input(batch.data[name])
        keep = batch.obs_mask[name]
        keep = keep.reshape(keep.shape + (1,) * (x.dim() - keep.dim()))
        values = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).flatten(1)
        if self.modality(name).mask_aware != "on":
            return values
        return torch.cat([values, self.encoder_mask(name, batch).flatten(1).to(values.dtype)], -1)

    def condition_input(self, batch: MultimodalBatch) -> Tensor:
        """``(B, cond_width)``: each conditioning modality's zero-filled input and its availability bit."""
        parts = []
        for m in self.conditioning:
            parts.append(self._masked_input(batch, m))
            parts.append(batch.row_mask(m).unsqueeze(-1).to(parts[-1].dtype))
        if not parts:
            return self.prior_loc.new_zeros(batch.batch_size, 0)
        return torch.cat(parts, -1)

    # ------------------------------------------------------------------ distributions
    def prior(self) -> dist.TorchDistribution:
        """``p(z | nothing)``: the prior network with every conditioning modality missing, or
        ``N(0, prior_scale^2 I)`` without a prior network."""
        if self.prior_net is None:
            return super().prior()
        loc, scale = self.prior_net(self.prior_loc.new_zeros(self.cond_width))
        return dist.Normal(loc, scale).to_event(1)

    def conditional_prior(self, batch: MultimodalBatch, cond: Tensor | None = None) -> dist.TorchDistribution:
        """``p(z | c_O)`` of each row, batch shape ``(B,)``."""
        if self.prior_net is None:
            return super().prior().expand((batch.batch_size,))
        loc, scale = self.prior_net(self.condition_input(batch) if cond is None else cond)
        return dist.Normal(loc, scale).to_event(1)

    def posterior(self, batch: MultimodalBatch, cond: Tensor | None = None) -> dist.TorchDistribution:
        """``q(z | y, c_O)`` for rows observing ``y``; ``p(z | c_O)`` for the others."""
        cond = self.condition_input(batch) if cond is None else cond
        prior = self.conditional_prior(batch, cond).base_dist
        loc, scale = self.recognition(torch.cat([self._masked_input(batch, self.main), cond], -1))
        has_y = batch.row_mask(self.main).unsqueeze(-1)
        p_loc, p_scale = prior.loc.expand_as(loc), prior.scale.expand_as(scale)
        return dist.Normal(torch.where(has_y, loc, p_loc), torch.where(has_y, scale, p_scale)).to_event(1)

    # ------------------------------------------------------------------ model / guide
    def _observe_main(self, batch: MultimodalBatch, z: Tensor, cond: Tensor) -> None:
        y = self.main
        rows = batch.row_mask(y)
        if not bool(rows.any()):
            return
        h = torch.cat([z, cond.expand(z.shape[:-1] + cond.shape[-1:])], -1)
        fn = self.likelihood(y, h, rows, batch.feature_mask(y))
        weight = self.likelihood_weights[y]
        with poutine.mask(mask=rows), poutine.scale(scale=weight):
            pyro.sample(f"x_{y}", fn, obs=batch.data[y])

    def model(self, batch: MultimodalBatch) -> None:
        """``z ~ p(z | c_O)``; ``y ~ p(y | z, c_O)`` where observed."""
        self._check_batch(batch)
        self._announce_params()
        cond = self.condition_input(batch)
        with pyro.plate("batch", batch.batch_size):
            z = pyro.sample("z", self.conditional_prior(batch, cond))
            self._observe_main(batch, z, cond)

    def guide(self, batch: MultimodalBatch) -> None:
        """``z ~ q(z | y, c_O)`` (``p(z | c_O)`` where ``y`` is missing)."""
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size):
            pyro.sample("z", self.posterior(batch))

    def iw_model(self, batch: MultimodalBatch) -> None:
        """The model: importance weights estimate ``log p(y_O | c_O)``."""
        return self.model(batch)

    def iw_guide(self, batch: MultimodalBatch) -> None:
        """The guide on what the proposal's batch observes (``p(z | c_O)`` without ``y``)."""
        return self.guide(batch)

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=1)

    # ------------------------------------------------------------------ the common surface
    def _decode_point(self, z: Tensor, cond: Tensor, targets: Sequence[str] | None) -> dict[str, Tensor]:
        names = self.check_targets(targets)
        h = torch.cat([z, cond.expand(z.shape[:-1] + cond.shape[-1:])], -1)
        return {t: self.likelihoods[t].mean(self.decoders[t](h)) for t in names}

    def _no_condition(self, z: Tensor) -> Tensor:
        return z.new_zeros(z.shape[:-1] + (self.cond_width,))

    def _point(self, z: Tensor, targets: Sequence[str] | None,
               private: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Means of ``p(y | z, c)`` with every conditioning modality missing."""
        return self._decode_point(z, self._no_condition(z), targets)

    def decode(self, z: Tensor, private: dict[str, Tensor] | None = None) -> dict[str, dist.TorchDistribution]:
        """``{y: p(y | z, c = nothing)}`` (decode given ``c`` with :meth:`cross_generate`)."""
        return {self.main: self.likelihood(self.main, torch.cat([z, self._no_condition(z)], -1))}

    @torch.no_grad()
    def reconstruct(self, batch: MultimodalBatch, sample: bool = False) -> dict[str, Tensor]:
        """``y`` decoded from ``q(z | y, c_O)`` (its mean or a draw) and the observed ``c``."""
        return self.cross_generate(batch, None, sample)

    @torch.no_grad()
    def cross_generate(
        self, batch: MultimodalBatch, targets: Sequence[str] | None = None, sample: bool = False,
    ) -> dict[str, Tensor]:
        """``y`` from what each row observes: ``z`` from :meth:`posterior` (``p(z | c_O)`` where
        ``y`` is missing), decoded with the observed ``c``. Only ``y`` can be a target."""
        names = self.check_targets(targets)
        self._check_batch(batch)
        cond = self.condition_input(batch)
        q = self.posterior(batch, cond)
        return self._decode_point(q.sample() if sample else q.mean, cond, names)

    @torch.no_grad()
    def generate(self, n: int, targets: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``y`` given no conditioning data: ``z ~ p(z | nothing)``, decoded with every ``c``
        missing. Meaningful when training rows observed ``y`` without ``c`` (partial data);
        generate given ``c`` with ``cross_generate(batch.restrict(conditioning))``."""
        names = self.check_targets(targets)
        return self._point(self.prior().sample((n,)), names)
