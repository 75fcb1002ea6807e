"""Likelihood heads: the distribution ``p(x_m | z)`` from a decoder's output.

A head turns the decoder output into a distribution whose batch shape is
``(*batch, *modality.shape)`` (no event dims): the model masks missing features with
``Distribution.mask`` and then declares the modality's dims as the event.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import Tensor, nn

from .location_scale import SharedScaleLaplace, SharedScaleNormal

_HEADS: dict[str, Callable[..., LikelihoodHead]] = {}


def register_likelihood(name: str) -> Callable:
    """Register a :class:`LikelihoodHead` subclass under ``name``."""

    def deco(cls: type[LikelihoodHead]) -> type[LikelihoodHead]:
        _HEADS[name] = cls
        cls.name = name
        return cls

    return deco


def build_likelihood(name: str, shape: tuple[int, ...], kwargs: Mapping[str, Any] | None = None) -> LikelihoodHead:
    """Build the registered head ``name`` for a modality of shape ``shape``."""
    if name not in _HEADS:
        raise ValueError(f"unknown likelihood {name!r}; registered: {sorted(_HEADS)}")
    try:
        return _HEADS[name](tuple(shape), **dict(kwargs or {}))
    except TypeError as err:
        raise TypeError(f"likelihood {name!r} rejected its kwargs {dict(kwargs or {})}: {err}") from err


def registered_likelihoods() -> list[str]:
    """Names of the registered likelihood families, sorted."""
    return sorted(_HEADS)


class LikelihoodHead(nn.Module):
    """Base class: a head knows its decoder's output shape and builds the distribution.

    A head also says which data it can score: :meth:`invalid` marks the entries outside its
    support (:attr:`support` says what the support is, for error messages), and
    :attr:`integer_codes` says whether the data are held as ``int64`` codes (categorical)
    rather than floats. The data layer checks every observed entry against them once, when a
    data set is built, so that no value outside the support reaches a log-probability.
    """

    name = "base"
    #: what :meth:`invalid` accepts, in words (used in error messages)
    support = "finite real numbers"
    #: the data are category codes, held as ``int64`` (else floats of the default dtype)
    integer_codes = False

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Shape the decoder must output per row."""
        return self.shape

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of :meth:`encoder_input` per row."""
        return self.shape

    def encoder_input(self, x: Tensor) -> Tensor:
        """What the encoder sees of the data (floats); identity for continuous data."""
        return x

    def encoder_mask(self, mask: Tensor) -> Tensor:
        """A feature mask ``(*batch, *shape)`` of the data as a mask ``(*batch, *input_shape)`` of
        :meth:`encoder_input` (each entry's mask repeated over the input dims it becomes, e.g. its
        one-hot code), for mask-aware encoders."""
        n, extra = len(self.shape), len(self.input_shape) - len(self.shape)
        if extra < 0 or tuple(self.input_shape[:n]) != tuple(self.shape):
            raise NotImplementedError(
                f"likelihood {self.name!r}: encoder input {self.input_shape} does not extend the data shape "
                f"{self.shape}; override encoder_mask to map the feature mask onto it"
            )
        mask = mask.reshape(mask.shape + (1,) * extra)
        return mask.expand(mask.shape[: mask.dim() - extra] + tuple(self.input_shape[n:]))

    def invalid(self, x: Tensor) -> Tensor:
        """Boolean mask, the shape of ``x`` ``(N, *shape)``: the entries outside the support.

        Vectorised (a few elementwise passes, no Python loop over rows). The default accepts
        every finite value (NaN and +-inf are invalid); heads with a smaller support override it.
        """
        if x.is_floating_point():
            return ~torch.isfinite(x)
        return torch.zeros_like(x, dtype=torch.bool)

    def forward(self, params: Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """A point estimate of the data for plots and reconstructions."""
        return self(params).mean


class UnitIntervalBernoulli(dist.Bernoulli):
    """A Bernoulli whose support, for validation, is [0, 1] rather than {0, 1}.

    ``log_prob(x) = x log p + (1 - x) log(1 - p)`` (torch's formula, the binary cross-entropy)
    is unchanged; only the declared support is widened so that Pyro's validation accepts the
    grey-scale data the data layer accepts for a Bernoulli modality. Samples are still 0 or 1.
    """

    support = constraints.unit_interval


@register_likelihood("bernoulli")
class BernoulliHead(LikelihoodHead):
    """``Bernoulli(logits=decoder(z))`` for binary data.

    Data in ``[0, 1]`` are accepted: a fractional value (a grey pixel) is scored by the
    cross-entropy ``x log p + (1 - x) log(1 - p)``, the common practice on grey-scale images
    (not a normalised density; the continuous Bernoulli is).
    """

    support = "values in [0, 1]"

    def invalid(self, x: Tensor) -> Tensor:
        return _outside_unit_interval(x)

    def forward(self, params: Tensor) -> dist.TorchDistribution:
        return UnitIntervalBernoulli(logits=params)


@register_likelihood("continuous_bernoulli")
class ContinuousBernoulliHead(LikelihoodHead):
    """``ContinuousBernoulli(logits=decoder(z))`` for data in [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    support = "values in [0, 1]"

    def invalid(self, x: Tensor) -> Tensor:
        return _outside_unit_interval(x)

    def forward(self, params: Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params)

    def mean(self, params: Tensor) -> Tensor:
        return self(params).mean.clamp(0.0, 1.0)


def _outside_unit_interval(x: Tensor) -> Tensor:
    # written so that NaN is outside too (every comparison with NaN is False)
    return ~((x >= 0) & (x <= 1))


def outside_codes(x: Tensor, num_categories: int | Tensor) -> Tensor:
    """Entries of ``x`` that are not whole numbers in ``0 .. num_categories - 1`` (NaN and
    +-inf included); ``num_categories`` may be a tensor broadcasting against ``x``."""
    bad = (x < 0) | (x >= num_categories)
    if x.is_floating_point():
        bad = bad | ~torch.isfinite(x) | (x != x.round())
    return bad


class _LocationScaleHead(LikelihoodHead):
    family: type = SharedScaleNormal

    def __init__(self, shape: tuple[int, ...], scale: float = 1.0, learn_scale: bool = False,
                 scale_per_feature: bool = False, min_scale: float = 1e-3) -> None:
        super().__init__(shape)
        if not scale > 0:
            raise ValueError(f"{self.name} likelihood: scale must be positive, got {scale}")
        size = shape if scale_per_feature else ()
        self.learn_scale = bool(learn_scale)
        if self.learn_scale:
            if not scale > min_scale:
                raise ValueError(
                    f"{self.name} likelihood: initial scale {scale} must exceed min_scale {min_scale}"
                )
            # scale = exp(raw) + min_scale keeps a learned scale away from zero
            self.min_scale = float(min_scale)
            self.raw_scale = nn.Parameter(torch.full(size, math.log(scale - min_scale)))
        else:
            self.register_buffer("fixed_scale", torch.full(size, float(scale)))

    @property
    def scale(self) -> Tensor:
        """The standard deviation (Normal) or scale (Laplace), never a variance."""
        if self.learn_scale:
            return self.raw_scale.exp() + self.min_scale
        return self.fixed_scale

    def forward(self, params: Tensor) -> dist.TorchDistribution:
        return self.family(params, self.scale.expand(params.shape))


@register_likelihood("normal")
class NormalHead(_LocationScaleHead):
    """``Normal(decoder(z), scale)``; ``scale`` a standard deviation, fixed or learned (``learn_scale``)."""

    family = SharedScaleNormal


@register_likelihood("laplace")
class LaplaceHead(_LocationScaleHead):
    """``Laplace(decoder(z), scale)``, fixed or learned scale (used by MMVAE on images)."""

    family = SharedScaleLaplace


@register_likelihood("categorical")
class CategoricalHead(LikelihoodHead):
    """``Categorical(logits=decoder(z))`` over ``num_categories``; the encoder sees one-hot rows."""

    integer_codes = True

    def __init__(self, shape: tuple[int, ...], num_categories: int) -> None:
        super().__init__(shape)
        if int(num_categories) < 2:
            raise ValueError(f"categorical likelihood needs num_categories >= 2, got {num_categories}")
        self.num_categories = int(num_categories)

    @property
    def support(self) -> str:  # type: ignore[override]
        return f"category codes: whole numbers 0..{self.num_categories - 1}"

    def invalid(self, x: Tensor) -> Tensor:
        return outside_codes(x, self.num_categories)

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self.shape + (self.num_categories,)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shape + (self.num_categories,)

    def encoder_input(self, x: Tensor) -> Tensor:
        return F.one_hot(x.long(), self.num_categories).to(torch.get_default_dtype())

    def forward(self, params: Tensor) -> dist.TorchDistribution:
        return dist.Categorical(logits=params)

    def mean(self, params: Tensor) -> Tensor:
        return params.argmax(-1)
