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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
from .proposals import DefensiveMixture

#: PSIS needs a right tail of at least 5 weights; with K < 25 arviz cannot fit one.
MIN_PARTICLES_FOR_KHAT = 25
#: A row whose normalised weights have a relative variance ``K sum w~^2 - 1 = K / ESS - 1`` below
#: this is flat: k-hat is -inf (no tail to fit). The rule only sees normalised weights, so adding
#: a constant to a row's log-weights never changes it. 1e-5 is a log-weight standard deviation of
#: about 0.003 nats: above the float32 round-off of site log-probs summing to |log p| ~ 10^4
#: (measured: sd ~ 1e-3 with an exact guide, where PSIS fitted to the quantised round-off
#: returns nonsense, even +inf), and the estimate's relative s.e. is then below sqrt(1e-5 / K).
FLAT_RELATIVE_VARIANCE = 1e-5
#: Above this k-hat an importance-sampling estimate is not trustworthy (Vehtari et al. 2024).
KHAT_THRESHOLD = 0.7
#: ``log_likelihood``'s estimators and importance-sampling proposals.
METHODS = ("iwae", "ais")
PROPOSALS = ("guide", "defensive")


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
        ``(B,)`` k-hat values. A row whose weights are equal up to round-off gets ``-inf``
        (as with a guide equal to the posterior): its normalised weights ``w~ = w / sum w``
        have a relative variance ``K sum w~^2 - 1`` below ``FLAT_RELATIVE_VARIANCE`` (1e-5,
        i.e. an effective sample size above ``K / (1 + 1e-5)``). The rule depends on the
        normalised weights only, so a constant added to a row's log-weights (its ``log p``)
        never changes the result. With ``K < 25`` particles every row gets NaN (PSIS needs a
        tail of 5 weights); a row with a non-finite log-weight gets ``+inf``.
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
    flat = np.zeros(B, dtype=bool)
    if finite.any():
        shifted = rows[finite] - rows[finite].max(1, keepdims=True)  # shift-invariant from here on
        w = np.exp(shifted)
        with np.errstate(all="ignore"):
            relative_variance = w.var(1) / w.mean(1) ** 2  # K sum w~^2 - 1, computed stably
        flat[finite] = relative_variance <= FLAT_RELATIVE_VARIANCE
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
        ``K`` (adaptive K: each row's first ``K``, see ``particles``; AIS: the chains).
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
        threshold, so a NaN k-hat, i.e. no diagnostic, does not pass; AIS: its chains agree
        within their standard error). None: no diagnostic was computed (IS with ``khat=False``
        or ``K < 25``).
    proposal : str or None
        The importance-sampling proposal (``"guide"`` or ``"defensive"``; None for AIS).
    particles : Tensor or None
        ``(N,)`` particles each row used, with adaptive ``K`` (None: every row used ``K``).
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
    proposal: str | None = None
    particles: Tensor | None = None

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
        """JSON-friendly summary: mean, standard error, the estimator (method, proposal, ``K``
        or ``T`` and chains), the share of rows passing their diagnostic, the k-hat
        distribution and the mean per-row standard error where the method has one."""
        k = self.khat.numpy()
        finite = k[~np.isnan(k)]
        passed = self.passed
        if passed is None and finite.size and self.method == "iwae":
            passed = self.khat < threshold
        particles = self.particles
        return {
            "method": self.method,
            "proposal": self.proposal,
            "num_steps": self.num_steps,
            "num_chains": self.num_chains,
            "passed_fraction": None if passed is None else float(passed.double().mean()),
            "row_stderr_mean": None if self.row_stderr is None else float(self.row_stderr.mean()),
            "particles_mean": None if particles is None else float(particles.double().mean()),
            "particles_max": None if particles is None else int(particles.max()),
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


# ---------------------------------------------------------------------------- options
@dataclass
class LikelihoodOptions:
    """The estimator options of :func:`log_likelihood` beyond ``K`` and the chunk sizes (also a
    Hydra structured config: ``pyromv-eval likelihood.method=ais likelihood.num_steps=500``).

    Attributes
    ----------
    method : str
        ``"iwae"`` (importance sampling) or ``"ais"`` (annealed importance sampling).
    proposal : str
        ``"guide"`` or ``"defensive"`` (importance sampling only).
    defensive_weight, defensive_scale, defensive_df : float
        The defensive mixture's weight, scale factor and Student-t degrees of freedom.
    adaptive : bool
        Grow ``K`` per row until k-hat passes (importance sampling only).
    max_particles : int
        The adaptive budget per row (0: ``16 K``).
    num_steps, num_chains : int
        Annealing steps and chains per row (AIS only).
    ais_options : dict
        Further options of :func:`pyromv.metrics.ais.annealed_log_likelihood`
        (``+likelihood.ais_options.leapfrog_steps=10``).
    """

    method: str = "iwae"
    proposal: str = "guide"
    defensive_weight: float = 0.1
    defensive_scale: float = 2.0
    defensive_df: float = 3.0
    adaptive: bool = False
    max_particles: int = 0
    num_steps: int = 200
    num_chains: int = 16
    ais_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the options; raise ValueError naming the first bad one."""
        if self.method not in METHODS:
            raise ValueError(f"likelihood.method must be one of {METHODS}, got {self.method!r}")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"likelihood.proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        if self.proposal == "defensive":
            DefensiveMixture(self.defensive_weight, self.defensive_scale, self.defensive_df)
        for name, least in (("max_particles", 0), ("num_steps", 1), ("num_chains", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"likelihood.{name} must be an int >= {least}, got {value!r}")
        if self.method == "ais" and (self.proposal != "guide" or self.adaptive):
            raise ValueError("likelihood.proposal and likelihood.adaptive are options of method=iwae, "
                             "not of method=ais")

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`log_likelihood` for these options."""
        if self.method == "ais":
            return {"method": "ais", "num_steps": self.num_steps, "num_chains": self.num_chains,
                    "ais_options": dict(self.ais_options) or None}
        out: dict[str, Any] = {"method": "iwae", "proposal": self.proposal}
        if self.proposal == "defensive":
            out.update(defensive_weight=self.defensive_weight, defensive_scale=self.defensive_scale,
                       defensive_df=self.defensive_df)
        if self.adaptive:
            out.update(adaptive=True, max_particles=self.max_particles or None)
        return out


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
    defensive: DefensiveMixture | None = None,
    record: dict[str, Trace] | None = None,
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

    With ``defensive`` (a :class:`~pyromv.metrics.proposals.DefensiveMixture`) each particle
    comes from the guide or, with probability ``a``, from its wide heavy-tailed version ``r``,
    and ``log q`` above is the mixture's ``log((1 - a) q(z | X) + a r(z | X))``.

    ``record``, a dict, receives the model's trace as ``record["model"]`` (the values the
    weights were computed at, e.g. a missingness model's draws of the missing entries).
    """
    particle_dim = -model.max_plate_nesting - 1
    shape = (num_particles, score_batch.batch_size)
    guide = model.iw_guide if guide is None else guide
    plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim)
    wide_trace = None
    if defensive is None:
        guide_trace = poutine.trace(plate(guide)).get_trace(proposal_batch)
    else:
        guide_trace, wide_trace = defensive.trace(
            plate(guide), proposal_batch, num_particles, particle_dim, proposal_batch.batch_size
        )
    model_trace = poutine.trace(poutine.replay(plate(model.iw_model), trace=guide_trace)).get_trace(
        score_batch
    )
    guide_trace = poutine.util.prune_subsample_sites(guide_trace)
    model_trace = poutine.util.prune_subsample_sites(model_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    if record is not None:
        record["model"] = model_trace
    log_q = sum(_site_log_probs(guide_trace, particle_dim, shape, skip_observed=True).values())
    if wide_trace is not None:
        wide_trace = poutine.util.prune_subsample_sites(wide_trace)
        wide_trace.compute_log_prob()
        log_r = sum(_site_log_probs(wide_trace, particle_dim, shape, skip_observed=True).values())
        log_q = defensive.log_density(log_q, log_r)
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
    method: str = "iwae",
    proposal: str = "guide",
    defensive_weight: float = 0.1,
    defensive_scale: float = 2.0,
    defensive_df: float = 3.0,
    adaptive: bool = False,
    max_particles: int | None = None,
    num_steps: int | None = None,
    num_chains: int | None = None,
    ais_options: Mapping[str, Any] | None = None,
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

    **Estimators.** ``method="iwae"`` (the default) is the importance-sampling estimate above,
    with the guide as proposal (``proposal="guide"``) or Hesterberg's defensive mixture
    ``(1 - a) q(z | X) + a r(z | X)`` (``proposal="defensive"``,
    :class:`~pyromv.metrics.proposals.DefensiveMixture`: ``r`` a Student-t version of the
    guide, ``df`` degrees of freedom, ``scale`` times wider), weighted by the mixture's own
    density so that the weights stay unbiased for ``p`` and are bounded. With
    ``adaptive=True`` each row starts with ``K`` particles and doubles them (reusing the
    weights already drawn) until its k-hat is below ``khat_threshold`` or ``max_particles``
    is reached; rows that never pass have ``passed == False``. The number of particles is
    then chosen by the draws: the estimate stays consistent, but not exactly the IWAE bound
    of a fixed ``K``. ``method="ais"`` runs annealed importance sampling
    (:func:`pyromv.metrics.ais.annealed_log_likelihood`, ``num_steps`` and ``num_chains``,
    further options in ``ais_options``); the importance-sampling options do not apply to it.

    Parameters
    ----------
    model : MultimodalVAE
    data : MultimodalDataset or MultimodalBatch
    K : int
        Importance samples per row (with ``adaptive``: the first round's).
    given : modality name(s), optional
        The conditioning set ``S``; ``None`` for a joint estimate.
    targets : modality name(s), optional
        The scored set ``T`` (default: every modality not in ``given``).
    batch_size : int
        Rows per chunk.
    particle_chunk : int
        Particles per chunk: memory is set by ``batch_size * particle_chunk``, not by ``K``
        (plus ``K * batch_size`` floats of stored log-weights when ``khat`` is on;
        ``max_particles * batch_size`` with ``adaptive``).
    guide : callable, optional
        A proposal with the signature of ``model.guide(batch)`` (default ``model.iw_guide``),
        e.g. to compare proposals.
    khat : bool
        Compute the PSIS k-hat of each row (needs ``K >= 25``).
    khat_threshold : float
        Warn (:class:`ImportanceSamplingWarning`) when a row's k-hat exceeds this; a row
        passes when its k-hat is below it.
    seed : int, optional
        Seed of the draws (the global RNG state is restored afterwards).
    progress : bool
        Show a progress bar over row chunks.
    method : {"iwae", "ais"}
        Importance sampling or annealed importance sampling.
    proposal : {"guide", "defensive"}
        The importance-sampling proposal.
    defensive_weight, defensive_scale, defensive_df : float
        ``a`` in ``(0, 1)``, the wide component's scale (a multiple of the guide's standard
        deviation) and its Student-t degrees of freedom.
    adaptive : bool
        Grow ``K`` per row until k-hat passes (needs ``khat`` and ``K >= 25``).
    max_particles : int, optional
        Budget of particles per row with ``adaptive`` (default ``16 * K``).
    num_steps, num_chains : int, optional
        Annealing steps ``T`` and chains per row of ``method="ais"`` (default: AIS's own).
    ais_options : mapping, optional
        Further keyword arguments of :func:`~pyromv.metrics.ais.annealed_log_likelihood`.

    Returns
    -------
    LogLikelihood
        Per-row values, their mean and standard error, k-hat per row, and which rows pass
        their diagnostic.

    References
    ----------
    .. [1] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    .. [2] A. Vehtari, D. Simpson, A. Gelman, Y. Yao and J. Gabry, "Pareto Smoothed Importance
       Sampling", JMLR 25(72), 2024.
    .. [3] T. Hesterberg, "Weighted average importance sampling and defensive mixture
       distributions", Technometrics 37(2), 1995.
    """
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    if not getattr(model, "has_likelihood", True):  # deterministic autoencoders (DCCAE, mAAE, mWAE)
        raise ValueError(f"{model.name} has no likelihood p(X): it encodes each row to a point, with no "
                         "density over z to sample and weigh, so likelihood estimates do not apply to it")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "ais":
        return _annealed(
            model, data, given=given, targets=targets, batch_size=batch_size, seed=seed,
            progress=progress, num_steps=num_steps, num_chains=num_chains, ais_options=ais_options,
            unused={"proposal": (proposal, "guide"), "adaptive": (adaptive, False),
                    "max_particles": (max_particles, None), "guide": (guide, None)},
        )
    if num_steps is not None or num_chains is not None or ais_options:
        raise ValueError("num_steps, num_chains and ais_options are options of method='ais', "
                         f"not of method={method!r}")
    for name, value in (("K", K), ("batch_size", batch_size), ("particle_chunk", particle_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    defensive = (
        DefensiveMixture(defensive_weight, defensive_scale, defensive_df) if proposal == "defensive" else None
    )
    if adaptive:
        if not khat:
            raise ValueError("adaptive=True grows K until k-hat passes: it needs khat=True")
        if K < MIN_PARTICLES_FOR_KHAT:
            raise ValueError(f"adaptive=True needs K >= {MIN_PARTICLES_FOR_KHAT} (PSIS needs a tail), got K={K}")
        max_particles = 16 * K if max_particles is None else max_particles
        if isinstance(max_particles, bool) or not isinstance(max_particles, int) or max_particles < K:
            raise ValueError(f"max_particles must be an int >= K={K}, got {max_particles!r}")
    elif max_particles is not None:
        raise ValueError("max_particles is the budget of adaptive=True; pass adaptive=True or leave it unset")
    plan = scored_rows(model, data, given, targets)
    batch, rows, given_t, targets_t = plan.batch, plan.rows, plan.given, plan.targets
    proposal_names, scored_names, exclude = plan.proposal_names, plan.scored_names, plan.exclude

    device = model_device(model)
    values, khats, counts = [], [], []
    starts = range(0, batch.batch_size, batch_size)
    with evaluating(model), seeded(seed, device):
        for start in tqdm(starts, desc="log-likelihood", disable=not progress, leave=False):
            chunk = batch.index(slice(start, start + batch_size)).to(device)
            sampler = _ChunkSampler(
                model, chunk.restrict(proposal_names), chunk.restrict(scored_names), particle_chunk,
                exclude, guide, defensive,
            )
            if adaptive:
                v, k, n = _estimate_adaptive(sampler, K, max_particles, khat_threshold, given_t is not None)
                counts.append(n)
            else:
                v, k = _estimate_chunk(sampler, K, khat, conditional=given_t is not None)
            values.append(v)
            khats.append(k)

    k_all = torch.cat(khats)
    result = LogLikelihood(
        values=torch.cat(values), khat=k_all, rows=rows, num_particles=K,
        given=plan.reported_given, targets=targets_t,
        method="iwae", proposal=proposal,
        passed=None if bool(k_all.isnan().all()) else k_all < khat_threshold,
        particles=torch.cat(counts) if adaptive else None,
    )
    bad = result.khat > khat_threshold
    if bool(bad.any()):
        what = "log p(X)" if given_t is None else "log p(X_T | X_S)"
        budget = f"up to {max_particles} particles" if adaptive else f"K={K}"
        warnings.warn(
            ImportanceSamplingWarning(
                f"{int(bad.sum())} of {bad.numel()} rows have a PSIS k-hat above "
                f"{khat_threshold} (max {float(result.khat[bad].max()):.2f}): their {what} "
                f"estimates with {budget} are not trustworthy; raise K, use "
                "proposal='defensive' or method='ais', or improve the guide"
            ),
            stacklevel=2,
        )
    return result


@dataclass(frozen=True)
class ScoredRows:
    """What a likelihood estimate scores: the rows that observe its sets, the sets, and the
    modalities its proposal sees and its target scores (``exclude``: the target sites left out
    of the denominator of a conditional)."""

    batch: MultimodalBatch
    rows: Tensor
    given: tuple[str, ...] | None
    targets: tuple[str, ...]
    reported_given: tuple[str, ...] | None
    proposal_names: tuple[str, ...]
    scored_names: tuple[str, ...]
    exclude: list[str]


def scored_rows(model: MultimodalVAE, data: MultimodalDataset | MultimodalBatch,
                given: Sequence[str] | str | None, targets: Sequence[str] | str | None) -> ScoredRows:
    """The rows and modality sets an estimate of ``log p(X_T)`` or ``log p(X_T | X_S)`` scores:
    every row observing a modality of ``targets`` (and, conditional, one of ``given``)."""
    batch = as_batch(model, data)
    given_t, targets_t, context = _resolve_sets(model, given, targets)
    keep = _any_observed(batch, targets_t)
    if given_t is not None:
        keep = keep & _any_observed(batch, given_t)
    rows = keep.nonzero().flatten().cpu()
    if rows.numel() == 0:
        what = "targets" if given_t is None else "given and targets"
        raise ValueError(f"no row observes the {what} {list(given_t or ()) + list(targets_t)}")
    return ScoredRows(
        batch=batch.index(rows.to(keep.device)), rows=rows, given=given_t, targets=targets_t,
        reported_given=(context or None) if given_t is None else given_t,
        proposal_names=context + targets_t if given_t is None else given_t,
        scored_names=context + targets_t if given_t is None else given_t + targets_t,
        # a target's likelihood and, with a missingness model, its feature mask's factor s_{m}
        exclude=[] if given_t is None else [f"{site}_{m}" for m in targets_t for site in ("x", "s")],
    )


def _resolve_sets(
    model: MultimodalVAE, given: Sequence[str] | str | None, targets: Sequence[str] | str | None,
) -> tuple[tuple[str, ...] | None, tuple[str, ...], tuple[str, ...]]:
    """``(given, targets, context)`` checked against the model (see :func:`log_likelihood`)."""
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
    return given_t, targets_t, context


def _annealed(
    model: MultimodalVAE, data: MultimodalDataset | MultimodalBatch, *, given, targets, batch_size,
    seed, progress, num_steps, num_chains, ais_options, unused: dict[str, tuple[Any, Any]],
) -> LogLikelihood:
    """``method="ais"``: :func:`pyromv.metrics.ais.annealed_log_likelihood` (imported lazily)."""
    for name, (value, default) in unused.items():
        if value is not default and value != default:
            raise ValueError(f"{name} is an option of method='iwae' (importance sampling), not of method='ais'")
    try:
        from .ais import annealed_log_likelihood
    except ImportError as err:
        if err.name is not None and err.name.endswith("metrics.ais"):
            raise NotImplementedError(
                "method='ais' needs pyromv.metrics.ais (annealed importance sampling), which this "
                "installation lacks"
            ) from err
        raise
    kwargs = dict(ais_options or {})
    if num_steps is not None:
        kwargs["num_steps"] = num_steps
    if num_chains is not None:
        kwargs["num_chains"] = num_chains
    return annealed_log_likelihood(
        model, data, given=given, targets=targets, batch_size=batch_size, seed=seed, progress=progress,
        **kwargs,
    )


class _ChunkSampler:
    """Draws log-weights ``(k, B)`` for one chunk of rows (or a subset of them), in chunks of
    particles; float64 on the CPU."""

    def __init__(self, model, proposal, scored, particle_chunk, exclude, guide, defensive):
        self.model, self.proposal, self.scored = model, proposal, scored
        self.particle_chunk, self.exclude, self.guide = particle_chunk, exclude, guide
        self.extra = {} if defensive is None else {"defensive": defensive}

    @property
    def rows(self) -> int:
        return self.scored.batch_size

    def draw(self, k: int, rows: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """``k`` particles of every row (or of ``rows``), one particle chunk at a time."""
        proposal, scored = self.proposal, self.scored
        if rows is not None:
            idx = rows.to(scored.row_mask(scored.names[0]).device)
            proposal, scored = proposal.index(idx), scored.index(idx)
        for start in range(0, k, self.particle_chunk):
            n = min(self.particle_chunk, k - start)
            lw, lw_kept = importance_weights(
                self.model, proposal, scored, n, self.exclude, self.guide, **self.extra
            )
            yield lw.to("cpu", torch.float64), lw_kept.to("cpu", torch.float64)


def _estimate_chunk(
    sampler: _ChunkSampler, K: int, khat: bool, conditional: bool,
) -> tuple[Tensor, Tensor]:
    """Per-row estimates and k-hat of one chunk of rows, accumulated over particle chunks."""
    B = sampler.rows
    stored: list[Tensor] = []
    stored_kept: list[Tensor] = []
    running = torch.full((B,), -math.inf, dtype=torch.float64)
    running_kept = torch.full((B,), -math.inf, dtype=torch.float64)
    for lw, lw_kept in sampler.draw(K):
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


def _estimate_adaptive(
    sampler: _ChunkSampler, K: int, max_particles: int, threshold: float, conditional: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive ``K`` on one chunk of rows: ``K, 2K, 4K, ...`` up to ``max_particles``, drawing
    new particles only for the rows whose k-hat has not yet passed, and keeping every weight
    drawn (``max_particles * B`` float64, twice for a conditional). Returns values, k-hat and
    the particles of each row."""
    B = sampler.rows
    log_w = torch.empty(max_particles, B, dtype=torch.float64)
    log_w_kept = torch.empty(max_particles, B, dtype=torch.float64) if conditional else None
    khats = torch.full((B,), math.nan, dtype=torch.float64)
    counts = torch.zeros(B, dtype=torch.long)
    active = torch.arange(B)
    drawn, target = 0, K
    while True:
        pos = drawn
        for lw, lw_kept in sampler.draw(target - drawn, None if active.numel() == B else active):
            n = lw.shape[0]
            log_w[pos:pos + n, active] = lw
            if conditional:
                log_w_kept[pos:pos + n, active] = lw_kept
            pos += n
        drawn = target
        k_hat = pareto_khat(log_w[:drawn, active])
        if conditional:
            k_hat = np.fmax(k_hat, pareto_khat(log_w_kept[:drawn, active]))
        khats[active] = torch.from_numpy(k_hat)
        counts[active] = drawn
        active = active[~(khats[active] < threshold)]
        if active.numel() == 0 or drawn >= max_particles:
            break
        target = min(2 * target, max_particles)
    values = torch.empty(B, dtype=torch.float64)
    for n in counts.unique().tolist():
        rows = (counts == n).nonzero().flatten()
        num = torch.logsumexp(log_w[:n, rows], 0)
        values[rows] = num - (torch.logsumexp(log_w_kept[:n, rows], 0) if conditional else math.log(n))
    return values, khats, counts
