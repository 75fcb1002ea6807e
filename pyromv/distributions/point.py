"""A point mass per row, with a fallback distribution for the rows that have no point."""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints


class PointOrFallback(TorchDistribution):
    r"""``delta(z - c_b)`` for the rows ``b`` with a point, ``fallback`` for the others.

    The "posterior" of a deterministic autoencoder (DCCAE, adversarial and Wasserstein
    autoencoders): a row that observes something is encoded to one code ``c_b``; a row that
    observes nothing has no code and gets ``fallback`` (the prior), so that
    ``q(z | nothing) = p(z)`` as for every other model. ``log_prob`` is ``0`` at the code,
    ``-inf`` elsewhere (Pyro's :class:`~pyro.distributions.Delta` convention), and the fallback's
    log-density on the other rows; ``rsample`` returns the code (differentiable) or a fallback
    draw.

    Parameters
    ----------
    point : Tensor
        ``(B, D)`` codes (any value in the rows without one).
    has_point : BoolTensor
        ``(B,)``: which rows have a code.
    fallback : Distribution
        Batch shape broadcastable to ``(B,)``, event shape ``(D,)``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, point: Tensor, has_point: Tensor, fallback: TorchDistribution,
                 validate_args: bool | None = None) -> None:
        if has_point.dtype != torch.bool or has_point.shape != point.shape[:-1]:
            raise ValueError(f"has_point must be a bool tensor of shape {tuple(point.shape[:-1])}, "
                             f"got {has_point.dtype} {tuple(has_point.shape)}")
        if fallback.event_shape != point.shape[-1:]:
            raise ValueError(f"the fallback's event shape {tuple(fallback.event_shape)} is not the points' "
                             f"{tuple(point.shape[-1:])}")
        self.point, self.has_point = point, has_point
        self.fallback = fallback.expand(point.shape[:-1])
        super().__init__(point.shape[:-1], point.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        new = self._get_checked_instance(PointOrFallback, _instance)
        new.point = self.point.expand(batch_shape + self.event_shape)
        new.has_point = self.has_point.expand(batch_shape)
        new.fallback = self.fallback.expand(batch_shape)
        super(PointOrFallback, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return torch.where(self.has_point.unsqueeze(-1), self.point, self.fallback.mean)

    @property
    def variance(self) -> Tensor:
        return torch.where(self.has_point.unsqueeze(-1), torch.zeros_like(self.point), self.fallback.variance)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        draws = self.fallback.rsample(sample_shape) if self.fallback.has_rsample else self.fallback.sample(sample_shape)
        return torch.where(self.has_point.unsqueeze(-1), self.point.expand(shape), draws)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        at_point = (value == self.point).all(-1)
        point_lp = torch.zeros_like(at_point, dtype=value.dtype).masked_fill(~at_point, float("-inf"))
        return torch.where(self.has_point, point_lp, self.fallback.log_prob(value))
