"""Per-datum importance log-weights ``log p(X, z_k) - log q(z_k | X)`` of a model/guide pair."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape
from torch import Tensor

from ..distributions.detach import detach_distribution

PARTICLE_PLATE = "num_particles_vectorized"


def _plate_dims(site: dict, names: Sequence[str]) -> dict[str, int]:
    return {f.name: f.dim for f in site["cond_indep_stack"] if f.name in names and f.vectorized}


def reduce_site(
    site: dict, value: Tensor, particle_dim: int, keep: Sequence[str],
) -> Tensor:
    """Sum a site's per-element tensor over every dim but the particle dim and the dims of the
    plates named in ``keep``; returns shape ``(K or 1, *[size of each kept plate or 1])``."""
    dims = _plate_dims(site, keep)
    rank = -particle_dim
    if value.dim() < rank:
        value = value.reshape((1,) * (rank - value.dim()) + value.shape)
    kept = [particle_dim] + [dims[name] for name in keep if name in dims]
    other = [d for d in range(-value.dim(), 0) if d not in kept]
    out = value.sum(other) if other else value  # dims left: particle, then kept plates in order
    shape = [out.shape[0]] + [out.shape[1 + [n for n in keep if n in dims].index(name)]
                              if name in dims else 1 for name in keep]
    return out.reshape(shape)


def site_log_prob(site: dict, rescore: bool = False) -> Tensor:
    """Scaled and masked log-density of a traced sample site.

    With ``rescore=True`` the density is recomputed with the distribution's parameters
    detached (gradients reach the parameters only through the sampled value).
    """
    if not rescore:
        return site["log_prob"]
    fn = detach_distribution(site["fn"])
    lp = fn.log_prob(site["value"])
    if site["mask"] is not None:
        lp = torch.where(site["mask"], lp, torch.zeros((), dtype=lp.dtype, device=lp.device))
    scale = site["scale"]
    return lp if (not torch.is_tensor(scale) and scale == 1.0) else lp * scale


def trace_pair(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int,
    max_plate_nesting: int,
) -> tuple[Trace, Trace]:
    """Trace the guide under a particle plate and replay the model on it, log-probs computed."""
    plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1)
    guide_trace = poutine.trace(plate(guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting + 1)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    if is_validation_enabled():
        for site in list(model_trace.nodes.values()) + list(guide_trace.nodes.values()):
            if site["type"] == "sample":
                check_site_shape(site, max_plate_nesting + 1)
    return model_trace, guide_trace


def _sum_sites(trace: Trace, particle_dim: int, keep: Sequence[str], rescore: bool) -> Tensor | float:
    total: Tensor | float = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        if keep[-1] not in _plate_dims(site, keep[-1:]):
            raise ValueError(
                f"site {name!r} is outside the plate {keep[-1]!r}: per-datum importance "
                "weights need every sample site inside the batch plate"
            )
        lp = site_log_prob(site, rescore and not site["is_observed"])
        total = total + reduce_site(site, lp, particle_dim, keep)
    return total


def log_weights_from_traces(
    model_trace: Trace,
    guide_trace: Trace,
    num_particles: int,
    max_plate_nesting: int,
    batch_plate: str = "batch",
    strata_plate: str | None = None,
    rescore_guide: bool = False,
) -> Tensor:
    """Log-weights ``log p - log q`` per particle and datum from :func:`trace_pair`'s traces.

    Returns ``(K, B)``, or ``(K, E, B)`` when ``strata_plate`` names a plate of ``E`` strata
    (e.g. the experts of a stratified mixture guide) whose dim is kept apart. Guide sites are
    all subtracted (``pyro.factor`` sites in a guide included, as in ``Trace_ELBO``).
    ``rescore_guide`` recomputes ``log q`` with detached parameters (STL / DReG).
    """
    particle_dim = -max_plate_nesting - 1
    keep = [batch_plate] if strata_plate is None else [strata_plate, batch_plate]
    log_p = _sum_sites(model_trace, particle_dim, keep, rescore=False)
    log_q = _sum_sites(guide_trace, particle_dim, keep, rescore=rescore_guide)
    lw = log_p - log_q
    if not isinstance(lw, Tensor):
        raise ValueError("the model has no sample sites")
    return lw.expand((num_particles,) + lw.shape[1:])


def strata_weights(
    guide_trace: Trace, particle_dim: int, strata_plate: str, batch_plate: str, shape: torch.Size,
) -> Tensor:
    """``(E, B)`` weights ``w_eb = active_eb / sum_e active_eb`` of each row's strata.

    A stratum is active where any of the guide's latent sites inside ``strata_plate`` is
    unmasked (a private latent of a missing modality may be masked inside an active stratum).
    """
    active = None
    for site in guide_trace.nodes.values():
        if site["type"] != "sample" or site["is_observed"] or not torch.is_tensor(site["mask"]):
            continue
        if strata_plate not in _plate_dims(site, [strata_plate]):
            continue
        mask = site["mask"].expand(site["fn"].batch_shape).float()
        on = reduce_site(site, mask, particle_dim, [strata_plate, batch_plate]).amax(0) > 0
        active = on if active is None else active | on
    if active is None:
        return torch.full(shape, 1.0 / shape[0])
    active = active.expand(shape)
    return active / active.sum(0, keepdim=True).clamp(min=1)


def importance_log_weights(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int,
    max_plate_nesting: int,
    batch_plate: str = "batch",
    **kwargs,
) -> Tensor:
    r"""Importance log-weights ``log w_{kb} = log p(x_b, z_{kb}) - log q(z_{kb} | x_b)``.

    The guide runs once under a vectorised particle plate of size ``K = num_particles``
    (left of the model's ``max_plate_nesting`` plates) and the model is replayed on its samples;
    every site's log-prob is summed per datum of ``batch_plate``. Unlike Pyro's
    ``vectorized_importance_weights`` this keeps the batch dimension, so
    ``logsumexp_k(log w_{kb}) - log K`` estimates ``log p(x_b)`` for each row.

    Returns
    -------
    Tensor
        Shape ``(K, B)``.
    """
    model_trace, guide_trace = trace_pair(model, guide, args, kwargs, num_particles, max_plate_nesting)
    return log_weights_from_traces(model_trace, guide_trace, num_particles, max_plate_nesting, batch_plate)


def iwae_bound(log_w: Tensor) -> Tensor:
    r"""``log (1/K) \sum_k w_k`` along the first (particle) dim of the log-weights."""
    k = torch.tensor(float(log_w.shape[0]), dtype=log_w.dtype, device=log_w.device)
    return torch.logsumexp(log_w, 0) - torch.log(k)
