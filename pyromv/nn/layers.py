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


def knee_positive(raw: Tensor, knee: float) -> Tensor:
    """``raw`` where ``raw >= knee``, ``knee * exp(raw / knee - 1)`` below: positive, continuously
    differentiable, and *exactly linear* above the knee (softplus never is). The exponent is
    floored at -30, so the value never underflows to 0."""
    low = knee * torch.exp((raw / knee - 1.0).clamp(min=-30.0))
    return torch.where(raw >= knee, raw, low)


class NaturalHead(nn.Module):
    r"""Features to ``(loc, scale)`` through the Gaussian's natural parameters.

    A linear layer gives ``eta`` and a raw precision ``r``; the precision is
    ``lambda = knee_positive(r)`` (``r`` itself above ``knee``), and
    ``loc = eta / lambda``, ``scale = lambda^{-1/2}``. The experts of a product of experts add
    natural parameters, and with feature-level missingness the exact expert of a linear-Gaussian
    modality has ``eta = sum_j m_j w_j (x_j - b_j) / s_j^2`` and ``lambda = sum_j m_j w_j^2 / s_j^2``
    (Bishop 2006, Sec. 2.3.3): both linear in the masked input ``(x * m, m)``, so a head that is
    linear in natural parameters can hold it exactly, which no ``(loc, softplus(scale))`` head
    can (``loc`` is a ratio of two linear functions of the mask).

    Parameters
    ----------
    in_features, latent_dim : int
        Feature width and latent size.
    knee : float
        Below it the precision bends smoothly towards 0 (exponentially) instead of crossing it.
    """

    def __init__(self, in_features: int, latent_dim: int, knee: float = 1.0) -> None:
        super().__init__()
        if not knee > 0:
            raise ValueError(f"NaturalHead knee must be positive, got {knee}")
        self.linear = nn.Linear(in_features, 2 * latent_dim)
        self.knee = float(knee)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        eta, raw = self.linear(h).chunk(2, dim=-1)
        precision = knee_positive(raw, self.knee)
        return eta / precision, precision.rsqrt()


#: output heads of the encoders, by the name their ``head`` option takes
HEADS = {"loc_scale": GaussianHead, "natural": NaturalHead}


def gaussian_head(kind: str, in_features: int, latent_dim: int, **kwargs) -> nn.Module:
    """The encoder output head ``kind`` (``"loc_scale"`` or ``"natural"``)."""
    if kind not in HEADS:
        raise ValueError(f"unknown encoder head {kind!r}; choose from {sorted(HEADS)}")
    return HEADS[kind](in_features, latent_dim, **kwargs)


def flatten_leading(z: Tensor, keep: int) -> tuple[Tensor, torch.Size]:
    """Collapse all but the last ``keep`` dims into one; returns the leading shape too."""
    lead = z.shape[: z.dim() - keep]
    return z.reshape((math.prod(lead),) + tuple(z.shape[z.dim() - keep :])), lead
