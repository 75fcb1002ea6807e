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
    return sorted(_HEADS)


class LikelihoodHead(nn.Module):
    """Base class: a head knows its decoder's output shape and builds the distribution."""

    name = "base"

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

    def forward(self, params: Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """A point estimate of the data for plots and reconstructions."""
        return self(params).mean


@register_likelihood("bernoulli")
class BernoulliHead(LikelihoodHead):
    """``Bernoulli(logits=decoder(z))`` for binary data."""

    def forward(self, params: Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params)


@register_likelihood("continuous_bernoulli")
class ContinuousBernoulliHead(LikelihoodHead):
    """``ContinuousBernoulli(logits=decoder(z))`` for data in [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    def forward(self, params: Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params)

    def mean(self, params: Tensor) -> Tensor:
        return self(params).mean.clamp(0.0, 1.0)


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

    def __init__(self, shape: tuple[int, ...], num_categories: int) -> None:
        super().__init__(shape)
        if int(num_categories) < 2:
            raise ValueError(f"categorical likelihood needs num_categories >= 2, got {num_categories}")
        self.num_categories = int(num_categories)

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
