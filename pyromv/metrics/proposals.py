r"""Importance-sampling proposals built from a model's guide: the defensive mixture.

A guide trained by a (mass-covering-averse) ELBO is often narrower than the posterior, and then
the importance weights ``p(X, z) / q(z | X)`` have a heavy right tail. Hesterberg's *defensive*
mixture (Technometrics 37(2), 1995) mixes the guide with a wider component,

.. math:: q_{\mathrm{def}}(z) = (1 - a)\, q(z | X) + a\, r(z | X),

and weights by the mixture density itself, so the estimate stays unbiased for ``p(X)`` while
every weight is bounded by ``p(X, z) / (a\, r(z | X))``. Here ``r`` is built from the guide,
site by site and for any guide whose latent sites are real-valued with a mean and a standard
deviation: at each site, a Student-t with ``df`` degrees of freedom per coordinate, centred on
the guide's mean and ``scale`` times its standard deviation (heavier tails than any Gaussian
posterior times a Gaussian prior, as in heavy-tailed defensive importance sampling). Sites are
visited in the guide's order, so in a hierarchical guide the wide component of a lower level
is centred where the guide would be given the upper levels actually drawn; ``r`` is then the
product of these conditionals, a normalised density evaluated exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch import Tensor


def _is_real(support: Any) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def guide_moments(fn: dist.Distribution, name: str = "z") -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of a latent site's distribution (batch + event shape).

    A mixture that does not implement them itself but has ``components`` and ``log_weights``
    (:class:`~pyromv.distributions.MixtureOfExperts`) gets them by the law of total variance,
    ``E z = sum_m w_m mu_m``, ``Var z = sum_m w_m (sigma_m^2 + mu_m^2) - (E z)^2``.
    """
    if not _is_real(fn.support):
        raise ValueError(
            f"defensive proposal: latent site {name!r} has support {fn.support}; the defensive "
            "mixture needs real-valued, location-scale-like latent sites (Normal, Laplace, "
            "Student-t, mixtures of those)"
        )
    try:
        mean, var = fn.mean, fn.variance
    except NotImplementedError:
        comps, log_w = getattr(fn, "components", None), getattr(fn, "log_weights", None)
        if comps is None or log_w is None:
            raise ValueError(
                f"defensive proposal: the distribution of latent site {name!r} "
                f"({type(fn).__name__}) has no mean and variance; the defensive mixture needs "
                "location-scale-like latent sites"
            ) from None
        w = log_w.exp().unsqueeze(-1)  # (..., M, 1)
        used = w > 0  # an excluded expert's parameters may be anything (even NaN): never touch them
        mu = torch.where(used, comps.mean, torch.zeros((), dtype=w.dtype, device=w.device))
        v = torch.where(used, comps.variance, torch.zeros((), dtype=w.dtype, device=w.device))
        mean = (w * mu).sum(-2)
        var = (w * (v + mu**2)).sum(-2) - mean**2
    mean, var = mean.expand(fn.batch_shape + fn.event_shape), var.expand(fn.batch_shape + fn.event_shape)
    if not bool(torch.isfinite(mean).all() and torch.isfinite(var).all()):
        raise ValueError(
            f"defensive proposal: the distribution of latent site {name!r} ({type(fn).__name__}) "
            "has no finite mean and variance"
        )
    return mean, var.clamp_min(0).sqrt()


@dataclass(frozen=True)
class DefensiveMixture:
    r"""The defensive mixture ``(1 - weight) q(z | X) + weight r(z | X)`` (Hesterberg 1995).

    ``r`` is, at each latent site of the guide, ``StudentT(df, mean_q, scale * sd_q)`` per
    coordinate (see the module docstring). Weights ``p / q_def`` are bounded by
    ``p(X, z) / (weight\, r(z | X))``: finite whenever the posterior's tails are lighter than
    ``r``'s (e.g. a Gaussian prior and a bounded likelihood), whatever the guide.

    Parameters
    ----------
    weight : float
        Mixture weight ``a`` of the wide component, in ``(0, 1)``.
    scale : float
        ``r``'s scale as a multiple of the guide's standard deviation (> 0).
    df : float
        Degrees of freedom of ``r``'s Student-t (> 0; small = heavy tails).
    """

    weight: float = 0.1
    scale: float = 2.0
    df: float = 3.0

    def __post_init__(self) -> None:
        for name, value in (("defensive_weight", self.weight), ("defensive_scale", self.scale),
                            ("defensive_df", self.df)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0 < self.weight < 1:
            raise ValueError(f"defensive_weight must be in (0, 1), got {self.weight!r}")
        if self.scale <= 0:
            raise ValueError(f"defensive_scale must be > 0, got {self.scale!r}")
        if self.df <= 0:
            raise ValueError(f"defensive_df must be > 0, got {self.df!r}")

    def wide(self, fn: dist.Distribution, name: str = "z") -> dist.TorchDistribution:
        """The wide component ``r`` of one site, with ``fn``'s batch and event shapes."""
        mean, sd = guide_moments(fn, name)
        t = dist.StudentT(torch.as_tensor(self.df, dtype=mean.dtype, device=mean.device),
                          mean, self.scale * sd.clamp_min(torch.finfo(sd.dtype).tiny))
        return t.to_event(len(fn.event_shape))

    def trace(
        self, guide: Callable, batch: Any, num_particles: int, particle_dim: int, num_rows: int,
    ) -> tuple[Trace, Trace]:
        """Run ``guide(batch)`` (already under its particle plate), drawing each particle from
        ``q`` or, with probability ``weight``, from ``r``.

        Returns two traces with the same values: the guide's own (its ``fn`` are ``q``'s
        conditionals) and a copy whose latent sites carry ``r``'s conditionals instead, so that
        ``log q(z)`` and ``log r(z)`` of the draws are both computed with the guide's masks.
        """
        from pyro import poutine

        use_wide = torch.rand(num_particles, num_rows) < self.weight
        use_wide = use_wide.reshape((num_particles,) + (1,) * (-particle_dim - 2) + (num_rows,))
        messenger = _DefensiveMessenger(self, use_wide)
        guide_trace = poutine.trace(messenger(guide)).get_trace(batch)
        wide_trace = Trace()
        for name, site in guide_trace.nodes.items():
            copy = dict(site)
            if name in messenger.wides:
                copy["fn"] = messenger.wides[name]
                copy.pop("log_prob", None)
                copy.pop("unscaled_log_prob", None)
            wide_trace.add_node(name, **copy)
        return guide_trace, wide_trace

    def log_density(self, log_q: Tensor, log_r: Tensor) -> Tensor:
        """``log q_def = logaddexp(log(1 - a) + log q, log a + log r)``."""
        return torch.logaddexp(math.log1p(-self.weight) + log_q, math.log(self.weight) + log_r)


class _DefensiveMessenger(Messenger):
    """Replaces each latent draw of the guide by a draw of the chosen mixture component."""

    def __init__(self, mixture: DefensiveMixture, use_wide: Tensor) -> None:
        super().__init__()
        self.mixture = mixture
        self.use_wide = use_wide
        self.wides: dict[str, dist.TorchDistribution] = {}

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if msg["is_observed"] or msg["value"] is not None or isinstance(fn, _Subsample):
            return
        name = msg["name"]
        wide = self.mixture.wide(fn, name)
        narrow = fn.sample()
        broad = wide.sample()
        select = self.use_wide.to(narrow.device)
        select = select.reshape(select.shape + (1,) * len(fn.event_shape))
        try:
            msg["value"] = torch.where(select, broad, narrow)
        except RuntimeError as err:
            raise ValueError(
                f"defensive proposal: latent site {name!r} has batch shape {tuple(fn.batch_shape)}, "
                "not (particles, ..., rows): it must sit inside the particle and batch plates"
            ) from err
        self.wides[name] = wide
