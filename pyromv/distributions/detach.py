"""Copies of distributions whose parameters are cut from the autograd graph."""

from __future__ import annotations

import copy

from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution


def detach_distribution(fn: Distribution) -> Distribution:
    """A shallow copy of ``fn`` whose tensor attributes are detached, recursively.

    ``detach_distribution(q).log_prob(z)`` is ``log q(z)`` with gradients flowing only through
    ``z``: the rescoring step of the sticking-the-landing (Roeder et al. 2017) and doubly
    reparameterised (Tucker et al. 2019) estimators. Pyro has no ``Distribution.detach()``;
    this walks the instance's attributes (parameters, cached lazy properties, base and
    component distributions) and detaches every tensor.
    """
    out = copy.copy(fn)
    for name, value in vars(fn).items():
        if isinstance(value, Tensor):
            setattr(out, name, value.detach())
        elif isinstance(value, (Distribution, TorchDistribution)):
            setattr(out, name, detach_distribution(value))
    return out
