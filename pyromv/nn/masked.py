"""Mask-aware encoders: the network sees which entries are observed, not zeros posing as data.

With feature-level missingness a zero-filled entry is indistinguishable from an observed zero,
so a plain encoder cannot tell "x_j = 0" from "x_j unknown" and its expert is wrong in both
location and confidence. The partial-VAE remedy (Nazabal et al. 2020; Ma et al., "EDDI",
ICML 2019) is to give the encoder the mask: :class:`MaskConcat` wraps any registered encoder
and feeds it ``(x * m, m)``, the mask concatenated along the first event dimension (an extra
channel per image channel for ``conv``, a second vector for ``mlp`` and ``linear``);
:class:`~pyromv.nn.set_encoder.SetEncoder` pools the observed entries as a set instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def masked_values(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(x`` with every unobserved entry set to 0``, mask`` as ``x``'s dtype``)``.

    ``mask`` (broadcastable to ``x``; ``None``: all observed) is applied with ``torch.where``,
    so a NaN or inf in a missing entry never reaches the network (nor its gradient).
    """
    if mask is None:
        return x, torch.ones_like(x)
    mask = torch.broadcast_to(mask.bool(), x.shape)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)), mask.to(x.dtype)


class MaskConcat(nn.Module):
    """An encoder of ``input_shape = (c, *rest)`` run on ``(2c, *rest)``: the values with missing
    entries zeroed, then the 0/1 mask, concatenated on the first event dim.

    ``forward(x, mask=None)`` takes ``x`` ``(*batch, *input_shape)`` and the boolean mask of the
    observed entries (broadcastable to ``x``; ``None`` means all observed).
    """

    #: the forward takes the feature mask as its second argument
    takes_mask = True

    def __init__(self, net: nn.Module, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.input_shape = tuple(input_shape)

    @staticmethod
    def widened(input_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape the wrapped network is built for: the first event dim doubled."""
        shape = tuple(int(s) for s in input_shape)
        if not shape:
            raise ValueError("a mask-aware encoder needs inputs with at least one event dim")
        return (2 * shape[0], *shape[1:])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        values, observed = masked_values(x, mask)
        dim = x.dim() - len(self.input_shape)
        return self.net(torch.cat([values, observed], dim))
