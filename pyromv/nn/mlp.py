"""Fully connected encoders and decoders (any input shape, flattened)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import NaturalHead, gaussian_head, mlp
from .registry import register_decoder, register_encoder


@register_encoder("mlp")
class MLPEncoder(nn.Module):
    """``x -> flatten -> [Linear, act]* -> (loc, scale)``.

    ``head``: ``"loc_scale"`` (``scale = softplus(.) + min_scale``) or ``"natural"``
    (:class:`~pyromv.nn.layers.NaturalHead`, options in ``head_kwargs``).
    """

    def __init__(
        self, input_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int] = (128, 128),
        activation: str = "relu", head: str = "loc_scale", head_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        sizes = [math.prod(self.input_shape), *hidden_dims]
        self.body = mlp(sizes, activation, final_activation=True)
        self.head = gaussian_head(head, sizes[-1], latent_dim, **dict(head_kwargs or {}))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.reshape(x.shape[: x.dim() - len(self.input_shape)] + (-1,))
        return self.head(self.body(h))


@register_decoder("mlp")
class MLPDecoder(nn.Module):
    """``z -> [Linear, act]* -> Linear -> reshape(output_shape)``; any leading batch dims."""

    def __init__(
        self, latent_dim: int, output_shape: Sequence[int], hidden_dims: Sequence[int] = (128, 128),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = mlp([latent_dim, *hidden_dims, math.prod(self.output_shape)], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(z.shape[:-1] + self.output_shape)


@register_encoder("linear")
class LinearEncoder(nn.Module):
    """Affine ``loc = A x + a`` with a learned, input-independent scale.

    Exact for linear-Gaussian data. With ``head="natural"`` it is affine in natural parameters
    instead, ``eta = A x + a``, ``lambda = B x + c`` (:class:`~pyromv.nn.layers.NaturalHead`):
    mask-aware (input ``(x * m, m)``) it holds the exact expert of a linear-Gaussian modality
    under feature-level missingness (latent of dimension 1 or axis-aligned loadings).
    """

    def __init__(
        self, input_shape: Sequence[int], latent_dim: int, init_scale: float = 1.0,
        head: str = "loc_scale", head_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        width = math.prod(self.input_shape)
        if head == "natural":
            self.natural = NaturalHead(width, latent_dim, **dict(head_kwargs or {}))
        elif head == "loc_scale":
            self.linear = nn.Linear(width, latent_dim)
            self.log_scale = nn.Parameter(torch.full((latent_dim,), math.log(init_scale)))
        else:
            raise ValueError(f"unknown encoder head {head!r}; choose from ['loc_scale', 'natural']")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.reshape(x.shape[: x.dim() - len(self.input_shape)] + (-1,))
        if hasattr(self, "natural"):
            return self.natural(h)
        loc = self.linear(h)
        return loc, self.log_scale.exp().expand(loc.shape)


@register_decoder("linear")
class LinearDecoder(nn.Module):
    """Affine ``W z + b``, reshaped to ``output_shape``."""

    def __init__(self, latent_dim: int, output_shape: Sequence[int]) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.linear = nn.Linear(latent_dim, math.prod(self.output_shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z).reshape(z.shape[:-1] + self.output_shape)

