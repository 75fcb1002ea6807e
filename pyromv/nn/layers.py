"""Small building blocks shared by the registered networks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {
    "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def mlp(sizes: list[int], act: str, final_activation: bool = False) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``act`` between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Features to ``(loc, scale)``, ``scale = softplus(.) + min_scale`` (a std, not a variance)."""

    def __init__(self, in_features: int, latent_dim: int, min_scale: float = 1e-3) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * latent_dim)
        self.min_scale = min_scale

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.linear(h).chunk(2, dim=-1)
        return loc, F.softplus(raw) + self.min_scale


def flatten_leading(z: Tensor, keep: int) -> tuple[Tensor, torch.Size]:
    """Collapse all but the last ``keep`` dims into one; returns the leading shape too."""
    lead = z.shape[: z.dim() - keep]
    return z.reshape((math.prod(lead),) + tuple(z.shape[z.dim() - keep :])), lead
