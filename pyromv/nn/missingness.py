r"""Models of how a modality's entries go missing: ``p(s | x)`` for the not-MIWAE bound.

Under missingness not at random (MNAR) the feature mask ``s`` carries information about the
values it hides (sensors saturating, people not reporting high incomes), and fitting
``p(x_obs)`` alone is biased. not-MIWAE (Ipsen, Frellsen & Mattei, "not-MIWAE: Deep generative
modelling with missing not at random data", ICLR 2021) models the joint
``p(x_obs, s) = ∫∫ p(z) p(x | z) p(s | x) dx_miss dz`` and trains it with the importance-weighted
bound whose weights are

.. math:: w_k = \frac{p(x_{obs} | z_k)\, p(s | x_{obs}, x_{miss,k})\, p(z_k)}{q(z_k | x_{obs})},
          \quad z_k \sim q(z | x_{obs}),\ x_{miss,k} \sim p(x_{miss} | z_k),

the missing values drawn by reparameterisation so that the decoder learns from the mask. The
networks here give the logits of ``P(entry missing | x)`` for every entry of the modality
(``s_j = 0``); :class:`~pyromv.models.base.MultimodalVAE` adds the factor ``log p(s | x)`` to
the model as the site ``s_{name}``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfMasking(nn.Module):
    r"""Each entry's chance of going missing depends on its own value:
    ``logit P(s_j = 0 | x) = w_j x_j + c_j`` (Ipsen et al. 2021's self-masking model, with
    ``c_j = -w_j b_j``: at ``w = 0`` it is missing completely at random with a learnt rate).

    Parameters
    ----------
    shape : tuple of int
        The modality's shape (one ``w_j``, ``c_j`` per entry).
    direction : {"free", "high", "low"}
        The sign of ``w``: learnt, or known (``"high"``: larger values are the more likely to go
        missing, ``w = softplus(v) >= 0``; ``"low"``: ``w = -softplus(v)``).
    """

    def __init__(self, shape: tuple[int, ...], direction: str = "free") -> None:
        super().__init__()
        if direction not in ("free", "high", "low"):
            raise ValueError(f"direction must be 'free', 'high' or 'low', got {direction!r}")
        self.direction = direction
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def slope(self) -> Tensor:
        """``w`` of every entry."""
        if self.direction == "free":
            return self.weight
        sign = 1.0 if self.direction == "high" else -1.0
        return sign * F.softplus(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.slope() * x + self.bias


class LinearMissingness(nn.Module):
    r"""Every entry's chance of going missing depends on all the modality's values:
    ``logit P(s = 0 | x) = W vec(x) + c`` (the linear model of Ipsen et al. 2021)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        d = math.prod(shape)
        self.linear = nn.Linear(d, d)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - len(self.shape)]
        return self.linear(x.reshape(lead + (-1,))).reshape(lead + self.shape)


def build_missingness(kind: str, shape: tuple[int, ...]) -> nn.Module:
    """The network of :attr:`Modality.missingness <pyromv.data.Modality>` ``kind`` for a modality
    of ``shape``: maps complete values ``(..., *shape)`` to logits of ``P(missing)`` ``(..., *shape)``."""
    if kind == "self_masking":
        return SelfMasking(shape)
    if kind == "self_masking_high":
        return SelfMasking(shape, "high")
    if kind == "self_masking_low":
        return SelfMasking(shape, "low")
    if kind == "linear":
        return LinearMissingness(shape)
    raise ValueError(f"unknown missingness model {kind!r}")


def mask_log_prob(logits_missing: Tensor, observed: Tensor, event_dims: int) -> Tensor:
    """``log p(s | x)`` summed over the modality's entries: ``observed`` is ``s`` (True where the
    entry is observed), ``logits_missing`` the logits of ``P(s_j = 0 | x)``."""
    lp = -F.softplus(torch.where(observed, logits_missing, -logits_missing))  # log sigmoid(∓logit)
    return lp.flatten(lp.dim() - event_dims).sum(-1) if event_dims else lp
