"""Convolutional encoders and decoders for small images ``(C, H, W)`` (8x8, 28x28, 32x32 ...)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .layers import activation, flatten_leading, gaussian_head
from .registry import register_decoder, register_encoder


def _check_image(shape: tuple[int, ...], what: str) -> None:
    if len(shape) != 3:
        raise ValueError(f"{what} 'conv' needs image modalities of shape (C, H, W), got {shape}")


def _spatial_after(size: int, n_layers: int) -> int:
    for _ in range(n_layers):
        size = (size + 1) // 2
    return size


@register_encoder("conv")
class ConvEncoder(nn.Module):
    """Stride-2 convolutions (each halves H and W), then a dense layer and a Gaussian head
    (``head``: ``"loc_scale"`` or ``"natural"``, as :class:`~pyromv.nn.mlp.MLPEncoder`)."""

    def __init__(
        self, input_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64),
        hidden_dim: int = 128, activation_name: str = "relu", head: str = "loc_scale",
        head_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        _check_image(self.input_shape, "encoder")
        c, h, w = self.input_shape
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [
                nn.Conv2d(c, c_out, kernel_size=3, stride=2, padding=1),
                activation(activation_name),
            ]
            c = c_out
        hs, ws = _spatial_after(h, len(channels)), _spatial_after(w, len(channels))
        layers += [nn.Flatten(), nn.Linear(c * hs * ws, hidden_dim), activation(activation_name)]
        self.body = nn.Sequential(*layers)
        self.head = gaussian_head(head, hidden_dim, latent_dim, **dict(head_kwargs or {}))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat, lead = flatten_leading(x, 3)
        loc, scale = self.head(self.body(flat))
        return loc.reshape(lead + loc.shape[-1:]), scale.reshape(lead + scale.shape[-1:])


@register_decoder("conv")
class ConvDecoder(nn.Module):
    """Dense layer to a small feature map, then stride-2 transposed convolutions, cropped."""

    def __init__(
        self, latent_dim: int, output_shape: Sequence[int], channels: Sequence[int] = (64, 32),
        hidden_dim: int = 128, activation_name: str = "relu",
    ) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        _check_image(self.output_shape, "decoder")
        c_img, h, w = self.output_shape
        n = len(channels)
        self.start = (channels[0], _spatial_after(h, n), _spatial_after(w, n))
        self.dense = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), activation(activation_name),
            nn.Linear(hidden_dim, math.prod(self.start)), activation(activation_name),
        )
        layers: list[nn.Module] = []
        outs = [*channels[1:], c_img]
        c = channels[0]
        for i, c_out in enumerate(outs):
            layers.append(nn.ConvTranspose2d(c, c_out, kernel_size=4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(activation(activation_name))
            c = c_out
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        flat, lead = flatten_leading(z, 1)
        h = self.dense(flat).reshape((-1,) + self.start)
        out = self.deconv(h)[..., : self.output_shape[1], : self.output_shape[2]]
        return out.reshape(lead + self.output_shape)
