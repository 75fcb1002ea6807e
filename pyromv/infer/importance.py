"""Per-datum importance log-weights ``log p(X, z_k) - log q(z_k | X)`` of a model/guide pair."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.util import check_model_guide_match, check_site_shape
from torch import Tensor

PARTICLE_PLATE = "num_particles_vectorized"


def _per_datum(trace: Trace, batch_plate: str, particle_dim: int, skip_observed: bool = False) -> Tensor | float:
    """Sum each sample site's log-prob over every dim except the particle and batch dims."""
    total: Tensor | float = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or (skip_observed and site["is_observed"]):
            continue
        batch_dims = [f.dim for f in site["cond_indep_stack"] if f.name == batch_plate]
        if not batch_dims:
            raise ValueError(
                f"site {name!r} is outside the plate {batch_plate!r}: per-datum importance "
                "weights need every sample site inside the batch plate"
            )
        batch_dim = batch_dims[0]
        lp = site["log_prob"]
        rank = -particle_dim
        if lp.dim() < rank:
            lp = lp.reshape((1,) * (rank - lp.dim()) + lp.shape)
        other = [d for d in range(-lp.dim(), 0) if d not in (particle_dim, batch_dim)]
        total = total + (lp.sum(other) if other else lp)
    return total


def trace_pair(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int, max_plate_nesting: int,
) -> tuple[Trace, Trace]:
    """Trace the guide under a particle plate and replay the model on it, log-probs computed."""
    particle_dim = -max_plate_nesting - 1
    plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim)
    guide_trace = poutine.trace(plate(guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting + 1)
    guide_trace = poutine.util.prune_subsample_sites(guide_trace)
    model_trace = poutine.util.prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    if is_validation_enabled():
        for site in list(model_trace.nodes.values()) + list(guide_trace.nodes.values()):
            if site["type"] == "sample":
                check_site_shape(site, max_plate_nesting + 1)
    return model_trace, guide_trace


def log_weights_from_traces(
    model_trace: Trace, guide_trace: Trace, num_particles: int, max_plate_nesting: int, batch_plate: str = "batch",
) -> Tensor:
    """``(K, B)`` log-weights from traces made by :func:`trace_pair`."""
    particle_dim = -max_plate_nesting - 1
    log_p = _per_datum(model_trace, batch_plate, particle_dim)
    log_q = _per_datum(guide_trace, batch_plate, particle_dim, skip_observed=True)
    lw = log_p - log_q
    if not isinstance(lw, Tensor):
        raise ValueError("the model has no sample sites")
    return lw.expand(num_particles, lw.shape[-1]) if lw.shape[0] != num_particles else lw


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

    The guide is run once under a vectorised particle plate of size ``K = num_particles``
    (outside the model's ``max_plate_nesting`` plates) and the model is replayed on its
    samples; every site's log-prob is summed per datum of ``batch_plate``. Unlike Pyro's
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
    r"""Per-datum ``log (1/K) \sum_k w_k`` from ``(K, B)`` log-weights."""
    return torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(log_w.shape[0]), dtype=log_w.dtype))
