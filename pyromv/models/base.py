"""The base class of every multimodal VAE: a Pyro model/guide pair over partially observed data."""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.nn import PyroModule
from pyro.poutine.runtime import _PYRO_STACK, get_plates
from pyro.poutine.trace_messenger import TraceMessenger
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..data.modality import Modality
from ..data.validation import check_modalities
from ..distributions.gathered import GatheredLikelihood
from ..distributions.likelihoods import build_likelihood
from ..nn.missingness import build_missingness, mask_log_prob
from ..nn.registry import build_decoder, build_encoder
from .config import ModelConfig


def _plate_shape() -> torch.Size:
    """The batch shape of the active vectorised plates (particles, strata, rows)."""
    frames = [f for f in get_plates() if f.dim is not None]
    shape = [1] * max((-f.dim for f in frames), default=0)
    for f in frames:
        shape[f.dim] = f.size
    return torch.Size(shape)


def _capturing_params() -> bool:
    """Is a ``poutine.trace(param_only=True)`` handler active (as in ``SVI.step``)?"""
    return any(isinstance(h, TraceMessenger) and h.param_only for h in _PYRO_STACK)


class MultimodalVAE(PyroModule):
    r"""A multimodal VAE ``p(z) \prod_m p(x_m | z)`` with a guide ``q(z | X_obs)``.

    Subclasses choose the fusion of the per-modality experts (:meth:`posterior`) and the
    default objective (:meth:`default_loss`). The model observes each modality in a
    sequential ``pyro.plate("modalities")`` under ``poutine.mask`` with the batch's row mask,
    so a missing modality is marginalised exactly (masking it equals removing it from the
    model); a feature-level mask masks entries inside the event.

    Sites: ``z`` (shared latent) and ``x_{m}`` (observations), inside ``pyro.plate("batch")``.

    Parameters live in this module (never in Pyro's global param store); the model and guide
    announce them to ``pyro.infer.SVI`` so a plain SVI script trains them.
    """

    name = "base"
    config_class: type[ModelConfig] = ModelConfig
    max_plate_nesting = 1

    def __init__(self, modalities: Sequence[Modality], config: ModelConfig | None = None) -> None:
        super().__init__()
        specs = check_modalities(modalities)
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        config = dataclasses.replace(config)  # our own copy: never mutate the caller's
        config.validate()
        self.config = config
        # a spec still "auto" met no data with feature masks: its encoder is plain (as "off"), and
        # it stays "auto" so that data with feature masks can say so (MultimodalDataset.check_against)
        self.modalities = list(specs.values())
        D = config.latent_dim
        self.private_dim = int(getattr(config, "private_latent_dim", 0))
        self.likelihoods = nn.ModuleDict()
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        for m in self.modalities:
            head = build_likelihood(m.likelihood, m.shape, m.likelihood_kwargs)
            self.likelihoods[m.name] = head
            self.encoders[m.name] = build_encoder(m.encoder.name, m.encoder.kwargs, head.input_shape, D,
                                                  mask_aware=m.mask_aware == "on")
            self.decoders[m.name] = build_decoder(
                m.decoder.name, m.decoder.kwargs, D + self.private_dim, head.param_shape
            )
        # models of the feature masks (not-MIWAE): p(s_m | x_m), scored at the site s_{m}
        self.missingness = nn.ModuleDict({
            m.name: self._missingness_model(m) for m in self.modalities if m.missingness != "ignorable"
        })
        if self.private_dim:
            # modality-specific latents w_m ~ N(0, I) with encoders q(w_m | x_m)
            self.private_encoders = nn.ModuleDict({
                m.name: build_encoder(m.encoder.name, m.encoder.kwargs, self.likelihoods[m.name].input_shape,
                                      self.private_dim, mask_aware=m.mask_aware == "on")
                for m in self.modalities
            })
        sizes = {m.name: math.prod(m.shape) for m in self.modalities}
        self.likelihood_weights = {
            m.name: m.rescale * (max(sizes.values()) / sizes[m.name] if config.likelihood_rescaling == "dims" else 1.0)
            for m in self.modalities
        }
        self.register_buffer("prior_loc", torch.zeros(D))
        self.register_buffer("prior_scale", torch.full((D,), float(config.prior_scale)))

    #: Whether the model scores its likelihood through :meth:`observe` (so that a modality's
    #: missingness model, ``Modality.missingness``, enters it); models with their own
    #: observation sites set this to False and refuse such modalities.
    models_missingness: bool = True

    def _missingness_model(self, m: Modality) -> nn.Module:
        """The network of ``p(s_m | x_m)`` for modality ``m``, after checking that this model and
        this likelihood can carry it (the missing values are drawn by reparameterisation)."""
        if not getattr(self, "has_likelihood", True) or not self.models_missingness:
            raise ValueError(
                f"modality {m.name!r}: {type(self).__name__} does not model missingness (missingness="
                f"{m.missingness!r}); use missingness='ignorable' or a model such as MVAE, MMVAE or MoPoE"
            )
        head = self.likelihoods[m.name]
        with torch.no_grad():
            probe = head(torch.zeros((1,) + tuple(head.param_shape)))
        if not probe.has_rsample:
            raise ValueError(
                f"modality {m.name!r}: missingness={m.missingness!r} draws the missing entries by "
                f"reparameterisation, which the {m.likelihood!r} likelihood does not have; use a "
                "continuous likelihood (normal, laplace, continuous_bernoulli) or missingness='ignorable'"
            )
        return build_missingness(m.missingness, m.shape)

    # ------------------------------------------------------------------ structure
    @property
    def names(self) -> list[str]:
        """Modality names, in order."""
        return [m.name for m in self.modalities]

    @property
    def latent_dim(self) -> int:
        """Dimension of the shared latent ``z``."""
        return self.config.latent_dim

    def modality(self, name: str) -> Modality:
        """The spec of modality ``name``; ValueError naming the known ones if unknown."""
        for m in self.modalities:
            if m.name == name:
                return m
        raise ValueError(f"unknown modality {name!r}: the model has {self.names}")

    @property
    def generated_modalities(self) -> list[str]:
        """The modalities the model can generate (decode from its latent): every modality by
        default. A conditional model (CVAE) generates only what it models; the others are inputs
        it conditions on, and asking to generate one is a ValueError (:meth:`check_targets`)."""
        return self.names

    def check_targets(self, targets: Sequence[str] | None) -> list[str]:
        """``targets`` (default :attr:`generated_modalities`) as a list; ValueError naming an
        unknown modality or one the model conditions on but cannot generate."""
        names = list(self.generated_modalities) if targets is None else list(targets)
        generated = set(self.generated_modalities)
        for t in names:
            self.modality(t)
            if t not in generated:
                raise ValueError(
                    f"{self.name} cannot generate modality {t!r}: it only conditions on it "
                    f"(it generates {self.generated_modalities})"
                )
        return names

    def prior(self) -> dist.TorchDistribution:
        """``p(z) = N(0, prior_scale^2 I)`` with event shape ``(D,)``."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def _announce_params(self) -> None:
        # SVI collects parameters from param sites; emit one per parameter, only when asked.
        if not _capturing_params():
            return
        for pname, p in self.named_parameters():
            p.unconstrained = weakref.ref(p)
            poutine.runtime.effectful(type="param")(lambda *_, _p=p, **__: _p)(
                pname, p, constraint=constraints.real, name=pname
            )

    def _check_batch(self, batch: MultimodalBatch) -> None:
        if not isinstance(batch, MultimodalBatch):
            raise TypeError(f"expected a MultimodalBatch, got {type(batch).__name__}")
        if set(batch.names) != set(self.names):
            raise ValueError(f"batch has modalities {batch.names}; the model expects {self.names}")

    # ------------------------------------------------------------------ encoders
    def encoder_mask(self, name: str, batch: MultimodalBatch) -> Tensor:
        """The observed entries of modality ``name`` on its encoder input, ``(B, *input_shape)``
        (a row mask ``(B,)`` is spread over the whole row)."""
        head = self.likelihoods[name]
        mask = batch.obs_mask[name]
        if mask.dim() == 1:
            mask = mask.reshape(mask.shape + (1,) * len(head.shape)).expand(mask.shape + head.shape)
        return head.encoder_mask(mask)

    def apply_encoder(self, net: nn.Module, name: str, batch: MultimodalBatch) -> Any:
        """Run an encoder of modality ``name`` on the batch: ``net(x)`` on the encoder input, or
        ``net(x, mask)`` with :meth:`encoder_mask` for a mask-aware one (``net.takes_mask``)."""
        x = self.likelihoods[name].encoder_input(batch.data[name])
        if getattr(net, "takes_mask", False):
            return net(x, self.encoder_mask(name, batch))
        return net(x)

    def experts(self, batch: MultimodalBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Unimodal experts ``q_m(z | x_m)``: ``loc``, ``scale`` of shape ``(B, M, D)`` and
        the expert mask ``(B, M)`` (row observes modality ``m``)."""
        locs, scales, masks = [], [], []
        for m in self.modalities:
            loc, scale = self.apply_encoder(self.encoders[m.name], m.name, batch)
            locs.append(loc)
            scales.append(scale)
            masks.append(batch.row_mask(m.name))
        return torch.stack(locs, -2), torch.stack(scales, -2), torch.stack(masks, -1)

    def _prior_for_empty_rows(self, loc: Tensor, scale: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For mixtures: a row with no active component gets the prior as its one component,
        so ``q(z | nothing) = p(z)`` (``loc``/``scale`` ``(B, E, D)``, ``mask`` ``(B, E)``)."""
        empty = ~mask.any(-1)
        if not bool(empty.any()):
            return loc, scale, mask
        prior = self.prior()
        first = torch.zeros_like(mask)
        first[:, 0] = empty
        loc = torch.where(first.unsqueeze(-1), prior.mean.expand_as(loc), loc)
        scale = torch.where(first.unsqueeze(-1), prior.base_dist.scale.expand_as(scale), scale)
        return loc, scale, mask | first

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The fused guide distribution ``q(z | X_obs)`` of batch shape ``(B,)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ model / guide
    def observe(self, batch: MultimodalBatch, z: Tensor, private: dict[str, Tensor] | None = None,
                term_masks: dict[str, Tensor] | None = None, scored: Tensor | None = None) -> None:
        """The likelihood sites ``x_{m}``; missing modalities are masked, never imputed.

        ``term_masks[m]`` (broadcastable to the plates, e.g. ``(T, 1)``) further restricts where
        modality ``m`` is observed, for vectorised sums of objectives over modality subsets;
        ``scored`` (broadcastable to the plates, e.g. a ``(E, B)`` strata mask) restricts every
        modality alike. Only the entries left are decoded (:meth:`likelihood`); the others are
        masked out of the sites.
        """
        for i in pyro.plate("modalities", len(self.modalities)):
            m = self.modalities[i]
            rows = batch.row_mask(m.name)
            if term_masks is not None:
                rows = rows & term_masks[m.name]
            if scored is not None:
                rows = rows & scored
            if not bool(rows.any()):
                continue  # masked in every row: contributes exactly zero, skip the decoder
            fn = self.likelihood(m.name, self._decoder_input(m.name, z, private), rows, batch.feature_mask(m.name))
            weight = self.likelihood_weights[m.name]
            with poutine.mask(mask=rows), (poutine.scale(scale=weight) if weight != 1.0 else nullcontext()):
                pyro.sample(f"x_{m.name}", fn, obs=batch.data[m.name])
            if m.name in self.missingness:
                self.observe_mask(m, fn, batch, rows)

    def observe_mask(self, m: Modality, fn: dist.TorchDistribution, batch: MultimodalBatch, rows: Tensor) -> None:
        """The factor ``s_{m} = log p(s_m | x_m)`` of modality ``m``'s feature mask given its
        complete values: the observed entries, and a reparameterised draw of ``fn = p(x_m | ...)``
        at the missing ones (recorded as the deterministic site ``xfill_{m}``); scored in the rows
        that observe ``m`` (a whole missing modality stays ignorable). One draw per particle makes
        the importance weights those of not-MIWAE (Ipsen et al. 2021), unbiased for ``p(x_obs, s)``."""
        x = batch.data[m.name]
        observed = batch.feature_mask(m.name)
        if observed is None:
            observed = torch.ones_like(x, dtype=torch.bool)
        filled = torch.where(observed, x, fn.rsample())
        pyro.deterministic(f"xfill_{m.name}", filled, event_dim=len(m.shape))
        logits = self.missingness[m.name](filled)
        with poutine.mask(mask=rows):
            pyro.factor(f"s_{m.name}", mask_log_prob(logits, observed, len(m.shape)))

    def likelihood(self, name: str, h: Tensor, scored: Tensor | None = None,
                   features: Tensor | None = None) -> dist.TorchDistribution:
        """``p(x_m | h)`` (event shape: the modality's) for decoder inputs ``h``, over the shape of
        the active plates.

        ``scored`` (broadcastable to it) marks the entries an objective scores; where it leaves
        some out, only the scored entries are decoded
        (:class:`~pyromv.distributions.GatheredLikelihood`, log-density 0 elsewhere: mask the
        site there). ``features`` is a feature-level mask ``(B, *shape)`` of the observations.
        """
        head, decoder = self.likelihoods[name], self.decoders[name]
        if scored is None or bool(scored.all()):
            fn = head(decoder(h))
            if features is not None:
                fn = fn.mask(features)
            return fn.to_event(len(head.shape))
        shape = torch.broadcast_shapes(_plate_shape(), h.shape[:-1], scored.shape)
        scored = scored.expand(shape)
        fn = head(decoder(h.expand(shape + h.shape[-1:])[scored]))
        if features is not None:
            fn = fn.mask(features.expand(shape + features.shape[1:])[scored])
        return GatheredLikelihood(fn.to_event(len(head.shape)), scored)

    # ------------------------------------------------------------------ private latents
    def _decoder_input(self, name: str, z: Tensor, private: dict[str, Tensor] | None) -> Tensor:
        if not self.private_dim:
            return z
        w = private[name] if private is not None and name in private else self.private_prior().sample(z.shape[:-1])
        return torch.cat([z, w.expand(z.shape[:-1] + w.shape[-1:])], -1)

    def private_prior(self) -> dist.TorchDistribution:
        """``p(w_m) = N(0, I)`` of every modality-specific latent."""
        zeros = self.prior_loc.new_zeros(self.private_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def private_posterior(self, batch: MultimodalBatch, name: str) -> dist.TorchDistribution:
        """``q(w_m | x_m)`` of each row, batch shape ``(B,)``."""
        loc, scale = self.apply_encoder(self.private_encoders[name], name, batch)
        return dist.Normal(loc, scale).to_event(1)

    def sample_private(self, batch: MultimodalBatch, guide: bool, proposal: bool = False) -> dict[str, Tensor]:
        """Sites ``w_{m}`` (prior in the model, ``q(w_m | x_m)`` in the guide), masked where the
        row misses ``m``; call inside the batch plate.

        ``proposal``: the sites are not masked, and the guide draws ``w_m`` of the rows missing
        ``m`` from the prior ``p(w_m)``, so such draws weigh ``p(w_m) / p(w_m) = 1``: importance
        sampling where the scored batch observes more than the proposal's (a conditional
        likelihood's targets), whose private latents must not come from ``q(w_m | x_m)`` — the
        proposal would see the data it scores (DESIGN.md, "Growing the zoo").
        """
        if proposal:
            out = {}
            for m in self.names:
                fn = self.private_prior()
                if guide:  # same location-scale family as the prior (Normal, Laplace)
                    p, q = fn.base_dist, self.private_posterior(batch, m).base_dist
                    rows = batch.row_mask(m).unsqueeze(-1)
                    fn = type(p)(torch.where(rows, q.loc, p.loc), torch.where(rows, q.scale, p.scale)).to_event(1)
                out[m] = pyro.sample(f"w_{m}", fn)
            return out
        out = {}
        for m in self.names:
            with poutine.mask(mask=batch.row_mask(m)):
                fn = self.private_posterior(batch, m) if guide else self.private_prior()
                out[m] = pyro.sample(f"w_{m}", fn)
        return out

    def model(self, batch: MultimodalBatch) -> None:
        """``z ~ p(z)``; ``x_m ~ p(x_m | z)`` for each observed modality."""
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size):
            z = pyro.sample("z", self.prior())
            private = self.sample_private(batch, guide=False) if self.private_dim else None
            self.observe(batch, z, private)

    def stratified_model(self, batch: MultimodalBatch, strata_mask: Tensor) -> None:
        """The model with ``E`` copies of ``z`` under ``pyro.plate("experts", E, dim=-2)``.

        Used with guides that sample every stratum of a mixture (MMVAE's experts, MoPoE's
        subsets): copy ``e`` of row ``b`` is scored only where ``strata_mask[e, b]``. Private
        latents ``w_m`` (where the model has them) are drawn once per copy.
        """
        self._check_batch(batch)
        self._announce_params()
        E, B = strata_mask.shape
        with pyro.plate("experts", E, dim=-2), pyro.plate("batch", B, dim=-1), poutine.mask(mask=strata_mask):
            z = pyro.sample("z", self.prior())
            private = self.sample_private(batch, guide=False) if self.private_dim else None
            self.observe(batch, z, private, scored=strata_mask)

    def guide(self, batch: MultimodalBatch) -> None:
        """``z ~ q(z | X_obs)``, the model's fusion of the observed experts."""
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size):
            pyro.sample("z", self.posterior(batch))
            if self.private_dim:
                self.sample_private(batch, guide=True)

    # ------------------------------------------------------------------ the common surface
    def default_loss(self) -> pyro.infer.ELBO:
        """The paper's objective with this model's options."""
        from ..infer import ELBO

        return ELBO(num_particles=self.config.num_particles, beta=self.config.beta,
                    max_plate_nesting=self.max_plate_nesting)

    def stages(self) -> list:
        """The training stages (:class:`~pyromv.training.stages.Stage`); by default one: every
        parameter on :meth:`default_loss` with :meth:`model` and :meth:`guide`."""
        from ..training.stages import Stage

        return [Stage("train", self.default_loss(), self.model, self.guide)]

    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The negative ELBO (``beta = 1``, analytic KL where it exists) of this model's guide,
        summed over the batch: what the trainer reports and validates on. Use it with
        :meth:`evaluation_guide`."""
        from ..infer import ELBO

        return ELBO(max_plate_nesting=self.max_plate_nesting)

    def iw_model(self, batch: MultimodalBatch) -> None:
        """The model with one ``z`` per row (no strata plate): with :meth:`iw_guide`, the pair
        whose importance weights estimate ``log p(X_obs)``. Private latents ``w_m`` are sampled
        in every row (unmasked), as :meth:`iw_guide` proposes them."""
        if not self.private_dim:
            return MultimodalVAE.model(self, batch)
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size):
            z = pyro.sample("z", self.prior())
            self.observe(batch, z, self.sample_private(batch, guide=False, proposal=True))

    def iw_guide(self, batch: MultimodalBatch) -> None:
        """The proposal ``z ~ q(z | X_obs)`` itself (:meth:`posterior`: for mixture models the
        mixture, sampled and scored as one distribution) without training-only terms. Private
        latents come from ``q(w_m | x_m)`` where the proposal's batch observes ``m`` and from the
        prior elsewhere (never from the data of a modality the proposal does not observe)."""
        if not self.private_dim:
            return MultimodalVAE.guide(self, batch)
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size):
            pyro.sample("z", self.posterior(batch))
            self.sample_private(batch, guide=True, proposal=True)

    def evaluation_model(self):
        """The model whose ELBO :meth:`evaluation_loss` computes with :meth:`evaluation_guide`."""
        return self.model

    def evaluation_guide(self):
        """The guide whose ELBO :meth:`evaluation_loss` computes (the guide without any
        training-only penalty terms)."""
        return self.guide

    def encode(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The fused posterior ``q(z | X_obs)`` of each row."""
        self._check_batch(batch)
        return self.posterior(batch)

    def decode(self, z: Tensor, private: dict[str, Tensor] | None = None) -> dict[str, dist.TorchDistribution]:
        """``p(x_m | z[, w_m])`` for every modality (event shape = the modality's shape); private
        latents not given are drawn from their prior."""
        return {m.name: self.likelihood(m.name, self._decoder_input(m.name, z, private)) for m in self.modalities}

    def _point(self, z: Tensor, targets: Sequence[str] | None,
               private: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        names = self.check_targets(targets)
        return {t: self.likelihoods[t].mean(self.decoders[t](self._decoder_input(t, z, private))) for t in names}

    def _observed_private(self, batch: MultimodalBatch, sample: bool) -> dict[str, Tensor] | None:
        # rows observing m use q(w_m | x_m); the others draw w_m from the prior
        if not self.private_dim:
            return None
        out = {}
        for m in self.names:
            q = self.private_posterior(batch, m)
            w = q.sample() if sample else q.mean
            prior = self.private_prior().sample(w.shape[:-1])
            out[m] = torch.where(batch.row_mask(m).unsqueeze(-1), w, prior)
        return out

    @torch.no_grad()
    def reconstruct(self, batch: MultimodalBatch, sample: bool = False) -> dict[str, Tensor]:
        """Decode the posterior mean (or a sample) of each row into every modality."""
        q = self.encode(batch)
        return self._point(q.sample() if sample else q.mean, None, self._observed_private(batch, sample))

    @torch.no_grad()
    def cross_generate(
        self, batch: MultimodalBatch, targets: Sequence[str] | None = None, sample: bool = False,
    ) -> dict[str, Tensor]:
        """Generate ``targets`` (default all) from what each row observes.

        Restrict the batch first (``batch.restrict([...])``) to condition on a chosen subset.
        """
        q = self.encode(batch)
        return self._point(q.sample() if sample else q.mean, targets, self._observed_private(batch, sample))

    @torch.no_grad()
    def generate(self, n: int, targets: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Decode ``n`` draws from the prior into every modality (means of ``p(x_m | z)``)."""
        z = self.prior().sample((n,))
        return self._point(z, targets)

    def impute(self, dataset: Any, num_samples: int = 1000, **kwargs: Any) -> Any:
        """Fill the missing entries and modalities of ``dataset`` by self-normalised importance
        sampling (MIWAE, Mattei & Frellsen 2019): :func:`pyromv.metrics.imputation.impute`,
        which documents the options; returns its :class:`~pyromv.metrics.imputation.Imputation`."""
        from ..metrics.imputation import impute

        return impute(self, dataset, num_samples, **kwargs)

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description: everything needed to rebuild the model."""
        return {
            "model": self.name,
            "config": dataclasses.asdict(self.config),
            "modalities": [m.to_dict() for m in self.modalities],
        }
