"""Networks registered by name, so a model is described by JSON config alone."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

_ENCODERS: dict[str, Callable[..., nn.Module]] = {}
_DECODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str) -> Callable:
    """Register an encoder class or factory ``f(input_shape, latent_dim, **kwargs)``.

    The network maps ``(B, *input_shape)`` to a ``(loc, scale)`` pair of ``(B, latent_dim)``
    tensors, ``scale`` a positive standard deviation.
    """

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ENCODERS[name] = factory
        return factory

    return deco


def register_decoder(name: str) -> Callable:
    """Register a decoder class or factory ``f(latent_dim, output_shape, **kwargs)``.

    The network maps ``(*batch, latent_dim)`` (any number of leading dims) to
    ``(*batch, *output_shape)``.
    """

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _DECODERS[name] = factory
        return factory

    return deco


def _build(
    table: dict, kind: str, name: str, kwargs: Mapping[str, Any], **shapes: Any
) -> nn.Module:
    if name not in table:
        raise ValueError(f"unknown {kind} network {name!r}; registered: {sorted(table)}")
    clash = set(kwargs) & set(shapes)
    if clash:
        raise ValueError(f"{kind} {name!r}: {sorted(clash)} are set by the model, not in kwargs")
    try:
        return table[name](**shapes, **dict(kwargs))
    except TypeError as err:
        raise TypeError(
            f"{kind} network {name!r} rejected its kwargs {dict(kwargs)}: {err}"
        ) from err


def build_encoder(
    name: str, kwargs: Mapping[str, Any], input_shape: tuple[int, ...], latent_dim: int,
    mask_aware: bool = False,
) -> nn.Module:
    """Build the encoder registered as ``name`` mapping ``input_shape`` to ``latent_dim`` (loc, scale).

    ``mask_aware=True``: the network also sees the feature mask, ``forward(x, mask)``. An encoder
    that takes the mask itself (class attribute ``takes_mask``, e.g. ``"set"``) is built as is;
    any other is built for the first event dim doubled and wrapped in
    :class:`~pyromv.nn.masked.MaskConcat`, which feeds it ``(x * m, m)``.
    """
    if mask_aware and not getattr(_ENCODERS.get(name), "takes_mask", False):
        from .masked import MaskConcat

        net = _build(_ENCODERS, "encoder", name, kwargs, input_shape=MaskConcat.widened(input_shape),
                     latent_dim=latent_dim)
        return MaskConcat(net, input_shape)
    return _build(
        _ENCODERS, "encoder", name, kwargs, input_shape=tuple(input_shape), latent_dim=latent_dim
    )


def build_decoder(
    name: str, kwargs: Mapping[str, Any], latent_dim: int, output_shape: tuple[int, ...]
) -> nn.Module:
    """Build the decoder registered as ``name`` mapping ``latent_dim`` to ``output_shape`` parameters."""
    return _build(
        _DECODERS, "decoder", name, kwargs, latent_dim=latent_dim, output_shape=tuple(output_shape)
    )


def registered_encoders() -> list[str]:
    """Names of the registered encoder networks, sorted."""
    return sorted(_ENCODERS)


def registered_decoders() -> list[str]:
    """Names of the registered decoder networks, sorted."""
    return sorted(_DECODERS)
