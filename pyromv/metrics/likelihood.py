"""Importance-weighted log-likelihoods of a multimodal VAE, with PSIS diagnostics.

The estimate is the importance-sampling (IWAE) estimate of Burda, Grosse & Salakhutdinov
(ICLR 2016): ``log p(X) ~= log (1/K) sum_k p(X, z_k) / q(z_k | X)``, ``z_k ~ q(z | X)``,
computed per row, in chunks of particles and rows so that memory is set by the chunk sizes
and not by ``K``. Its reliability is diagnosed per row by the Pareto k-hat of the importance
weights (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto smoothed importance sampling",
JMLR 2024), computed with arviz.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace
from torch import Tensor
from tqdm.auto import tqdm

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..infer.importance import PARTICLE_PLATE, reduce_site
from ..models.base import MultimodalVAE
from ._util import as_batch, evaluating, model_device, seeded

#: PSIS needs a right tail of at least 5 weights; with K < 25 arviz cannot fit one.
MIN_PARTICLES_FOR_KHAT = 25
#: Log-weights of a row spread over less than this (relative to their size) are flat: the
#: differences are round-off, the estimate is within the spread of exact, and k-hat is -inf.
FLAT_RELATIVE_SPREAD = 1e-4
#: Above this k-hat an importance-sampling estimate is not trustworthy (Vehtari et al. 2024).
KHAT_THRESHOLD = 0.7


class ImportanceSamplingWarning(UserWarning):
    """Some rows' importance weights have a Pareto k-hat above the threshold."""


# ---------------------------------------------------------------------------- PSIS k-hat
def _psis_backend() -> Callable[[np.ndarray], np.ndarray]:
    """arviz >= 1 keeps PSIS in ``arviz_stats``; arviz 0.x has ``az.psislw``."""
    try:
        from arviz_stats.base import array_stats
    except ImportError:
        pass
    else:
        return lambda lw: np.asarray(array_stats.psislw(lw, r_eff=1.0, axis=-1)[1])
    preview = logging.getLogger("arviz.preview")  # arviz 0.2x logs the packages it lacks
    level = preview.level
    preview.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # arviz 0.x announces its refactor
            import arviz as az
    finally:
        preview.setLevel(level)
    if not hasattr(az, "psislw"):
        raise ImportError("PSIS k-hat needs arviz 0.x (az.psislw) or arviz-stats (arviz >= 1)")
    return lambda lw: np.asarray(az.psislw(lw, reff=1.0)[1])


def pareto_khat(log_weights: Tensor | np.ndarray) -> np.ndarray:
    r"""Pareto k-hat of each row's importance weights (PSIS, Vehtari et al. 2024).

    A generalized Pareto distribution is fitted to the largest weights of each row; its
    shape ``k`` says how heavy the tail of ``w = p / q`` is. ``k < 0.5``: the weights have a
    finite variance; ``0.5 <= k <= 0.7``: usable; ``k > 0.7``: the estimate is unreliable.

    Parameters
    ----------
    log_weights : (K, B) tensor or array
        Log importance weights, particles first.

    Returns
    -------
    ndarray
        ``(B,)`` k-hat values. A row whose log-weights are equal up to round-off (spread
        below ``1e-4 * max(1, max |log w|)``, as with a guide equal to the posterior) gets
        ``-inf``: its weights have no tail, and the estimate is within that spread of exact.
        With ``K < 25`` particles every row gets NaN (PSIS needs a tail of 5 weights).
    """
    lw = torch.as_tensor(log_weights).detach().to("cpu", torch.float64).numpy()
    if lw.ndim != 2:
        raise ValueError(f"log_weights must have shape (K, B), got {lw.shape}")
    K, B = lw.shape
    out = np.full(B, np.nan)
    if K < MIN_PARTICLES_FOR_KHAT or B == 0:
        return out
    rows = lw.T.copy()  # (B, K): arviz reads samples from the last axis
    finite = np.isfinite(rows).all(1)
    with np.errstate(invalid="ignore"):
        spread = rows.max(1) - rows.min(1)
        scale = np.maximum(1.0, np.abs(rows).max(1))
    flat = finite & (spread <= FLAT_RELATIVE_SPREAD * scale)
    out[flat] = -np.inf
    fit = finite & ~flat
    if fit.any():
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            out[fit] = _psis_backend()(rows[fit])
    out[~finite] = np.inf  # a non-finite weight: nothing can be trusted
    return out


# ---------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class LogLikelihood:
    """Per-row importance-weighted log-likelihood estimates.

    Attributes
    ----------
    values : Tensor
        ``(N,)`` float64 estimates of ``log p(X_obs)`` (joint) or ``log p(X_T | X_S)``.
    khat : Tensor
        ``(N,)`` PSIS k-hat of each row's weights (NaN when ``K < 25``).
    rows : Tensor
        ``(N,)`` indices of the evaluated rows in the data given to :func:`log_likelihood`.
    num_particles : int
        ``K``.
    given, targets : tuple of str or None
        The conditioning set ``S`` and the scored set ``T`` (``given is None``: joint; the joint
        of a conditional model lists the modalities it conditions on as ``given``).
    method : str
        The estimator (``"iwae"``, ``"ais"``, ...).
    num_steps, num_chains : int or None
        Annealing steps ``T`` and independent chains per row of an AIS estimate (None for IS).
    row_stderr : Tensor or None
        ``(N,)`` Monte Carlo standard error of each row's estimate, where the method has one
        (AIS: over its independent chains).
    passed : Tensor or None
        ``(N,)`` bool, whether each row passes its method's diagnostic (IS: k-hat below the
        threshold; AIS: its chains agree within their standard error). None: use k-hat.
    """

    values: Tensor
    khat: Tensor
    rows: Tensor
    num_particles: int
    given: tuple[str, ...] | None
    targets: tuple[str, ...]
    method: str = "iwae"
    num_steps: int | None = None
    num_chains: int | None = None
    row_stderr: Tensor | None = None
    passed: Tensor | None = None

    @property
    def mean(self) -> float:
        """Mean over rows."""
        return float(self.values.mean())

    @property
    def stderr(self) -> float:
        """Standard error of the mean over rows, ``std(values, ddof=1) / sqrt(N)``."""
        n = self.values.numel()
        return float(self.values.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan

    def summary(self, threshold: float = KHAT_THRESHOLD) -> dict[str, Any]:
        """JSON-friendly summary: mean, standard error and the k-hat distribution."""
        k = self.khat.numpy()
        finite = k[~np.isnan(k)]
        return {
            "mean": self.mean,
            "stderr": self.stderr,
            "rows": int(self.values.numel()),
            "num_particles": self.num_particles,
            "given": None if self.given is None else list(self.given),
            "targets": list(self.targets),
            "khat_median": float(np.median(finite)) if finite.size else None,
            "khat_max": float(finite.max()) if finite.size else None,
            "khat_fraction_above_threshold": (
                float((finite > threshold).mean()) if finite.size else None
            ),
            "khat_threshold": threshold,
        }


# ---------------------------------------------------------------------------- weights
def _site_log_probs(
    trace: Trace, particle_dim: int, shape: tuple[int, int], batch_plate: str = "batch",
    skip_observed: bool = False,
) -> dict[str, Tensor]:
    """Each sample site's unscaled log-prob summed per (particle, row): ``name -> (K, B)``."""
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or (skip_observed and site["is_observed"]):
            continue
        dims = [f.dim for f in site["cond_indep_stack"] if f.name == batch_plate]
        if not dims:
            raise ValueError(
                f"site {name!r} is outside the plate {batch_plate!r}: per-row likelihoods need "
                "every sample site inside the batch plate"
            )
        lp = site["log_prob"]
        scale = site["scale"]
        if not (isinstance(scale, (int, float)) and scale == 1.0):
            lp = lp / scale  # likelihood rescaling or beta: score the model's actual density
        out[name] = reduce_site(site, lp, particle_dim, [batch_plate]).expand(shape)
    return out


def importance_weights(
    model: MultimodalVAE,
    proposal_batch: MultimodalBatch,
    score_batch: MultimodalBatch,
    num_particles: int,
    exclude: Iterable[str] = (),
    guide: Callable[[MultimodalBatch], None] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Log importance weights of ``z_k ~ q(z | proposal_batch)`` for ``score_batch``.

    The proposal (``model.iw_guide``: one ``z`` per row from the model's fused posterior, the
    mixture itself for mixture models) runs on ``proposal_batch`` under a vectorised particle
    plate of size ``K``; ``model.iw_model`` is replayed on its draws with ``score_batch``:

    .. math:: \log w_{kb} = \log p(X_b, z_{kb}) - \log q(z_{kb} | X^{prop}_b)

    Returns ``(log_w, log_w_excluded)``, both ``(K, B)``: the second leaves out the sample
    sites named in ``exclude`` (e.g. ``x_{m}`` of the target modalities of a conditional),
    for the same draws. Site scales (a modality's likelihood ``rescale``, a KL weight) are
    divided out, so the weights are those of the model's actual density; masks are kept.
    """
    particle_dim = -model.max_plate_nesting - 1
    shape = (num_particles, score_batch.batch_size)
    guide = model.iw_guide if guide is None else guide
    plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim)
    guide_trace = poutine.trace(plate(guide)).get_trace(proposal_batch)
    model_trace = poutine.trace(poutine.replay(plate(model.iw_model), trace=guide_trace)).get_trace(
        score_batch
    )
    guide_trace = poutine.util.prune_subsample_sites(guide_trace)
    model_trace = poutine.util.prune_subsample_sites(model_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    log_q = sum(_site_log_probs(guide_trace, particle_dim, shape, skip_observed=True).values())
    log_p = _site_log_probs(model_trace, particle_dim, shape)
    if not log_p:
        raise ValueError("the model has no sample sites")
    exclude = set(exclude)
    log_w = sum(log_p.values()) - log_q
    log_w_kept = sum(v for k, v in log_p.items() if k not in exclude) - log_q
    return log_w, log_w_kept


# ---------------------------------------------------------------------------- estimator
def _check_names(model: MultimodalVAE, names: Sequence[str] | str | None, what: str) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    out = tuple(dict.fromkeys(names))
    if not out:
        raise ValueError(f"{what} must name at least one modality")
    for m in out:
        if m not in model.names:
            raise ValueError(f"unknown modality {m!r} in {what}: the model has {model.names}")
    return out


def _any_observed(batch: MultimodalBatch, names: Iterable[str]) -> Tensor:
    rows = torch.zeros(batch.batch_size, dtype=torch.bool, device=batch.row_mask(batch.names[0]).device)
    for m in names:
        rows = rows | batch.row_mask(m)
    return rows


def log_likelihood(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    K: int = 1000,
    *,
    given: Sequence[str] | str | None = None,
    targets: Sequence[str] | str | None = None,
    batch_size: int = 64,
    particle_chunk: int = 100,
    guide: Callable[[MultimodalBatch], None] | None = None,
    khat: bool = True,
    khat_threshold: float = KHAT_THRESHOLD,
    seed: int | None = None,
    progress: bool = False,
) -> LogLikelihood:
    r"""Importance-weighted estimate of each row's log-likelihood (Burda et al., ICLR 2016).

    Joint (``given=None``), the likelihood of what each row observes of ``targets``
    (default: every modality), with the guide as proposal:

    .. math:: \log \hat p(X_T) = \log \frac1K \sum_{k=1}^K \frac{p(X_T, z_k)}{q(z_k | X_T)},
              \quad z_k \sim q(z | X_T)

    Conditional (``given=S``), ``log p(X_T | X_S)`` with the guide given ``X_S`` alone as
    proposal for both terms of ``log p(X_S, X_T) - log p(X_S)`` (the same draws, i.e. a
    self-normalised importance-sampling estimate of ``E_{p(z|X_S)}[p(X_T | z)]``):

    .. math:: \log \hat p(X_T | X_S) = \log \sum_k \frac{p(X_S, X_T, z_k)}{q(z_k | X_S)}
              - \log \sum_k \frac{p(X_S, z_k)}{q(z_k | X_S)}, \quad z_k \sim q(z | X_S)

    Each term is a consistent estimate as ``K`` grows; with the exact posterior as the guide
    the second is exact and the first has relative variance
    ``(E_{p(z|X_S)}[p(X_T|z)^2] / p(X_T|X_S)^2 - 1) / K``. The joint estimate is a
    stochastic lower bound (its expectation is at most ``log p``); the conditional one is
    neither a lower nor an upper bound.

    A conditional model (``model.generated_modalities`` short of every modality, e.g. the CVAE's
    ``p(y | c)``) is scored on what it models: the joint estimate is then ``log p(X_T | X_C)``
    with ``C`` the modalities it only conditions on (observed by proposal and score alike,
    reported as ``given``), and a target it does not generate is a ValueError.

    Missing modalities are marginalised exactly (likelihood of what is observed). A joint
    estimate scores every row that observes a modality of ``targets``; a conditional one
    every row that observes a modality of ``given`` *and* one of ``targets``; the result
    lists those rows.

    Parameters
    ----------
    model : MultimodalVAE
    data : MultimodalDataset or MultimodalBatch
    K : int
        Importance samples per row.
    given : modality name(s), optional
        The conditioning set ``S``; ``None`` for a joint estimate.
    targets : modality name(s), optional
        The scored set ``T`` (default: every modality not in ``given``).
    batch_size : int
        Rows per chunk.
    particle_chunk : int
        Particles per chunk: memory is set by ``batch_size * particle_chunk``, not by ``K``
        (plus ``K * batch_size`` floats of stored log-weights when ``khat`` is on).
    guide : callable, optional
        A proposal with the signature of ``model.guide(batch)`` (default ``model.guide``),
        e.g. to compare proposals.
    khat : bool
        Compute the PSIS k-hat of each row (needs ``K >= 25``).
    khat_threshold : float
        Warn (:class:`ImportanceSamplingWarning`) when a row's k-hat exceeds this.
    seed : int, optional
        Seed of the draws (the global RNG state is restored afterwards).
    progress : bool
        Show a progress bar over row chunks.

    Returns
    -------
    LogLikelihood
        Per-row values, their mean and standard error, k-hat per row.

    References
    ----------
    .. [1] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    .. [2] A. Vehtari, D. Simpson, A. Gelman, Y. Yao and J. Gabry, "Pareto Smoothed Importance
       Sampling", JMLR 25(72), 2024.
    """
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    for name, value in (("K", K), ("batch_size", batch_size), ("particle_chunk", particle_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    batch = as_batch(model, data)
    given_t = _check_names(model, given, "given")
    targets_t = _check_names(model, targets, "targets")
    generated = list(model.generated_modalities)
    if targets_t is None:
        targets_t = tuple(m for m in generated if given_t is None or m not in given_t)
        if not targets_t:
            raise ValueError(f"given names every modality the model generates ({generated}): nothing is "
                             "left to score")
    for m in targets_t:
        if m not in generated:
            raise ValueError(f"{model.name} does not model modality {m!r} (it only conditions on it): it "
                             f"cannot be a target; the model generates {generated}")
    # what a conditional model (CVAE) conditions on: always part of the proposal and the score
    context = tuple(m for m in model.names if m not in generated)
    if given_t is not None and set(given_t) & set(targets_t):
        raise ValueError(
            f"given {list(given_t)} and targets {list(targets_t)} overlap; they must be disjoint"
        )

    keep = _any_observed(batch, targets_t)
    if given_t is not None:
        keep = keep & _any_observed(batch, given_t)
    rows = keep.nonzero().flatten().cpu()
    if rows.numel() == 0:
        what = "targets" if given_t is None else "given and targets"
        raise ValueError(f"no row observes the {what} {list(given_t or ()) + list(targets_t)}")
    batch = batch.index(rows.to(keep.device))
    proposal_names = context + targets_t if given_t is None else given_t
    scored_names = context + targets_t if given_t is None else given_t + targets_t
    exclude = [] if given_t is None else [f"x_{m}" for m in targets_t]

    device = model_device(model)
    values, khats = [], []
    starts = range(0, batch.batch_size, batch_size)
    with evaluating(model), seeded(seed, device):
        for start in tqdm(starts, desc="log-likelihood", disable=not progress, leave=False):
            chunk = batch.index(slice(start, start + batch_size)).to(device)
            proposal = chunk.restrict(proposal_names)
            scored = chunk.restrict(scored_names)
            v, k = _estimate_chunk(
                model, proposal, scored, K, particle_chunk, exclude, guide, khat,
                conditional=given_t is not None,
            )
            values.append(v)
            khats.append(k)

    result = LogLikelihood(
        values=torch.cat(values), khat=torch.cat(khats), rows=rows, num_particles=K,
        given=(context or None) if given_t is None else given_t, targets=targets_t,
    )
    bad = result.khat > khat_threshold
    if bool(bad.any()):
        what = "log p(X)" if given_t is None else "log p(X_T | X_S)"
        warnings.warn(
            ImportanceSamplingWarning(
                f"{int(bad.sum())} of {bad.numel()} rows have a PSIS k-hat above "
                f"{khat_threshold} (max {float(result.khat[bad].max()):.2f}): their {what} "
                f"estimates with K={K} are not trustworthy; raise K or improve the guide"
            ),
            stacklevel=2,
        )
    return result


def _estimate_chunk(
    model: MultimodalVAE,
    proposal: MultimodalBatch,
    scored: MultimodalBatch,
    K: int,
    particle_chunk: int,
    exclude: Sequence[str],
    guide: Callable | None,
    khat: bool,
    conditional: bool,
) -> tuple[Tensor, Tensor]:
    """Per-row estimates and k-hat of one chunk of rows, accumulated over particle chunks."""
    B = scored.batch_size
    stored: list[Tensor] = []
    stored_kept: list[Tensor] = []
    running = torch.full((B,), -math.inf, dtype=torch.float64)
    running_kept = torch.full((B,), -math.inf, dtype=torch.float64)
    for start in range(0, K, particle_chunk):
        k = min(particle_chunk, K - start)
        lw, lw_kept = importance_weights(model, proposal, scored, k, exclude, guide)
        lw = lw.to("cpu", torch.float64)
        lw_kept = lw_kept.to("cpu", torch.float64)
        running = torch.logaddexp(running, torch.logsumexp(lw, 0))
        running_kept = torch.logaddexp(running_kept, torch.logsumexp(lw_kept, 0))
        if khat:  # PSIS needs each row's whole weight vector: K * B float64
            stored.append(lw)
            if conditional:
                stored_kept.append(lw_kept)
    if conditional:
        values = running - running_kept  # log(1/K) cancels in the ratio
    else:
        values = running - math.log(K)
    khats = torch.full((B,), math.nan, dtype=torch.float64)
    if khat:
        k_hat = pareto_khat(torch.cat(stored))
        if conditional:
            k_hat = np.fmax(k_hat, pareto_khat(torch.cat(stored_kept)))
        khats = torch.from_numpy(k_hat)
    return values, khats
