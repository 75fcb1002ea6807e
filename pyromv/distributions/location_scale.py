"""Normal and Laplace likelihoods whose log-density costs few passes over the data.

A likelihood head's scale is shared by many entries (one per modality, or one per feature):
after broadcasting it is a stride-0 view of the decoder's output shape. torch's
``Normal.log_prob`` still computes ``scale ** 2`` and ``scale.log()`` over the broadcast shape
and combines them with the residual in eight element-wise passes; on image modalities that is
as costly as the decoder's last layer. These subclasses compute the constants on the compact
scale and the residual term in three passes. Everything else (sampling, ``mean``, ``expand``,
``mask``, ``to_event``, KL divergences) is the parent's.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def compact(t: Tensor) -> Tensor:
    """A view of ``t`` with each broadcast (stride-0) dimension narrowed to size 1.

    It broadcasts back to ``t``'s shape, and element-wise work on it is done once per
    distinct value instead of once per entry.
    """
    index = tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None)
                  for stride, size in zip(t.stride(), t.shape))
    return t[index] if index else t


class SharedScaleNormal(dist.Normal):
    r"""``Normal(loc, scale)`` with a cheap ``log_prob`` when ``scale`` is broadcast.

    .. math:: \log p(x) = -\tfrac12 \Big(\frac{x - \mu}{\sigma}\Big)^2 - \log\sigma - \tfrac12\log 2\pi
    """

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        scale = compact(self.scale)
        z = (value - self.loc) / scale
        return torch.addcmul(-(scale.log() + _HALF_LOG_2PI), z, z, value=-0.5)


class SharedScaleLaplace(dist.Laplace):
    r"""``Laplace(loc, scale)`` with a cheap ``log_prob`` when ``scale`` is broadcast.

    .. math:: \log p(x) = -\frac{|x - \mu|}{b} - \log 2b
    """

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        scale = compact(self.scale)
        return torch.addcdiv(-(2 * scale).log(), (value - self.loc).abs(), scale, value=-1.0)
