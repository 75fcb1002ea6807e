r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) log-likelihoods.

AIS (Neal, "Annealed importance sampling", Statistics and Computing 11, 2001), as used for
decoder-based generative models by Wu, Burda, Salakhutdinov & Grosse ("On the quantitative
analysis of decoder-based generative models", ICLR 2017): chains start at the model's proposal
``q(z | X)`` and move through the geometric path

.. math:: \log f_t(z) = (1 - \beta_t) \log q(z | X^{prop}) + \beta_t \log p(X^{scored}, z),
          \quad 0 = \beta_0 < \dots < \beta_T = 1,

with Hamiltonian Monte Carlo transitions that leave each ``f_t`` invariant. A chain's log
weight ``\sum_t (\beta_t - \beta_{t-1}) [\log p - \log q](z_{t-1})`` has ``E[w] = p(X)``, so
``log mean_c w_c`` is a stochastic lower bound of ``log p(X)`` that tightens as ``T`` grows.

BDMC (Grosse, Ghahramani & Adams, "Sandwiching the marginal likelihood using bidirectional
Monte Carlo", arXiv:1511.02543, 2015) runs the same path backwards from an exact posterior
sample, which exists for data simulated from the model: its weights estimate ``1 / p(X)``
without bias, giving a stochastic *upper* bound. The gap between the two bounds measures how
far AIS is from exact at the chosen settings.

Everything is generic: every latent sample site of ``model.iw_guide`` (a shared ``z``, private
``w_{m}``, hierarchy levels) is flattened into one vector per row and chain, and ``log q`` and
``log p`` are scored by replaying ``model.iw_guide`` and ``model.iw_model`` on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.trace_struct import Trace
from torch import Tensor
from tqdm.auto import tqdm

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset, make_batch
from ..infer.importance import PARTICLE_PLATE
from ..models.base import MultimodalVAE
from ._util import model_device, seeded
from .likelihood import (
    MIN_PARTICLES_FOR_KHAT,
    LogLikelihood,
    ScoredRows,
    _site_log_probs,
    pareto_khat,
    scored_rows,
)

#: Target acceptance probability of the HMC transitions during the step-size warm-up
#: (Neal, "MCMC using Hamiltonian dynamics", 2011: optimal near 0.65 for many dimensions).
TARGET_ACCEPT = 0.65
#: ``delta`` of the sigmoidal schedule (Grosse et al. 2015, Sec. 6).
SIGMOID_DELTA = 4.0
#: A row passes when its two half-chain estimates differ by at most this many combined s.e.
HALVES_SDS = 3.0
#: ... plus this relative round-off (weights equal up to round-off agree).
ROUND_OFF = 1e-4


# ---------------------------------------------------------------------------- schedules
def annealing_schedule(num_steps: int, kind: str = "sigmoid", delta: float = SIGMOID_DELTA) -> Tensor:
    r"""``beta_0 = 0 < ... < beta_T = 1`` (float64, ``T + 1`` values).

    ``"sigmoid"`` (Grosse, Ghahramani & Adams 2015): ``s_t = sigma(delta (2t/T - 1))``,
    ``beta_t = (s_t - s_0) / (s_T - s_0)``: small steps at both ends, where ``f_t`` changes
    fastest per unit of ``beta``; ``"linear"``: ``beta_t = t / T``.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ValueError(f"schedule must be 'sigmoid' or 'linear', got {kind!r}")
    if num_steps == 1:
        return t
    s = torch.sigmoid(delta * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


# ---------------------------------------------------------------------------- latent layout
@dataclass(frozen=True)
class _Site:
    name: str
    batch_shape: torch.Size  # the site's value shape before its event dims, (C, 1.., B)
    event_shape: torch.Size
    start: int
    size: int


class _Layout:
    """The latent sites of a guide trace, flattened into one ``(C, B, D)`` vector."""

    def __init__(self, trace: Trace, num_chains: int, num_rows: int) -> None:
        self.sites: list[_Site] = []
        start = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            fn, value = site["fn"], site["value"]
            if fn.support.is_discrete:
                raise ValueError(f"latent site {name!r} is discrete: AIS with HMC needs continuous latents")
            if not _is_real(fn.support):
                raise ValueError(
                    f"latent site {name!r} has support {fn.support}: AIS runs HMC on unconstrained "
                    "latents only (transform the site to the real line in the model)"
                )
            event = value.shape[value.dim() - len(fn.event_shape):] if fn.event_shape else torch.Size()
            batch = value.shape[:value.dim() - len(event)]
            if batch.numel() != num_chains * num_rows or batch[0] != num_chains or batch[-1] != num_rows:
                raise ValueError(
                    f"latent site {name!r} has batch shape {tuple(batch)}; AIS needs one value per "
                    f"chain and row ({num_chains}, ..., {num_rows})"
                )
            size = event.numel()
            self.sites.append(_Site(name, batch, event, start, size))
            start += size
        if not self.sites:
            raise ValueError("the proposal has no latent sample site")
        self.dim = start
        self.names = [s.name for s in self.sites]

    def flatten(self, values: dict[str, Tensor], num_chains: int, num_rows: int) -> Tensor:
        parts = []
        for s in self.sites:
            v = values[s.name]
            parts.append(v.reshape(-1, num_rows, s.size).expand(num_chains, num_rows, s.size))
        return torch.cat(parts, -1)

    def trace(self, x: Tensor) -> Trace:
        """A trace holding the values of ``x`` at every latent site, for ``poutine.replay``."""
        tr = Trace()
        for s in self.sites:
            value = x[..., s.start:s.start + s.size].reshape(s.batch_shape + s.event_shape)
            tr.add_node(s.name, type="sample", is_observed=False, value=value, infer={})
        return tr


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


# ---------------------------------------------------------------------------- scoring
@dataclass
class _State:
    """Log-densities ``(C, B)`` at the chains' positions and their gradients ``(C, B, D)``:
    ``lq = log q``, ``ls = log p(X_S, z)`` (the first target), ``lt = log p(X_T | z, X_S)``
    (the second target's extra factor; zero for a joint estimate)."""

    x: Tensor
    lq: Tensor
    ls: Tensor
    lt: Tensor
    gq: Tensor
    gs: Tensor
    gt: Tensor

    def log_f(self, a: float, g: float) -> Tensor:
        return (1 - a) * self.lq + a * self.ls + g * self.lt

    def grad(self, a: float, g: float) -> Tensor:
        return (1 - a) * self.gq + a * self.gs + g * self.gt

    def where(self, keep: Tensor, other: _State) -> _State:
        k2, k3 = keep, keep.unsqueeze(-1)
        return _State(*(torch.where(k3 if a.dim() == 3 else k2, a, b) for a, b in (
            (self.x, other.x), (self.lq, other.lq), (self.ls, other.ls), (self.lt, other.lt),
            (self.gq, other.gq), (self.gs, other.gs), (self.gt, other.gt))))


class _Target:
    """``log q``, ``log p(X_S, z)``, ``log p(X_T | z)`` at given latents, with gradients."""

    def __init__(self, model: MultimodalVAE, proposal: MultimodalBatch, scored: MultimodalBatch,
                 exclude: Sequence[str], num_chains: int) -> None:
        self.model, self.proposal, self.scored = model, proposal, scored
        self.exclude = set(exclude)
        self.C, self.B = num_chains, scored.batch_size
        self.particle_dim = -model.max_plate_nesting - 1
        self.plate = pyro.plate(PARTICLE_PLATE, num_chains, dim=self.particle_dim)
        self.evaluations = 0
        with torch.no_grad():
            guide_trace = poutine.trace(self.plate(model.iw_guide)).get_trace(proposal)
        guide_trace = poutine.util.prune_subsample_sites(guide_trace)
        self.layout = _Layout(guide_trace, num_chains, self.B)
        self.initial = self.layout.flatten(
            {s.name: guide_trace.nodes[s.name]["value"] for s in self.layout.sites}, num_chains, self.B
        ).detach()

    def log_densities(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = (self.C, self.B)
        tr = self.layout.trace(x)
        guide_trace = poutine.trace(poutine.replay(self.plate(self.model.iw_guide), trace=tr)).get_trace(self.proposal)
        guide_trace = poutine.util.prune_subsample_sites(guide_trace)
        guide_trace.compute_log_prob()
        lq_sites = _site_log_probs(guide_trace, self.particle_dim, shape, skip_observed=True)
        if set(lq_sites) != set(self.layout.names):
            raise ValueError(f"the proposal's latent sites changed between runs: {sorted(lq_sites)} "
                             f"vs {sorted(self.layout.names)}")
        lq = sum(lq_sites.values())
        ls, lt = self.log_joint(x, tr)
        return lq, ls, lt

    def log_joint(self, x: Tensor, tr: Trace | None = None) -> tuple[Tensor, Tensor]:
        """``log p(X_S, z)`` and ``log p(X_T | z)`` (zero for a joint estimate) at ``x`` ``(C, B, D)``,
        without running the proposal."""
        shape = (self.C, self.B)
        tr = self.layout.trace(x) if tr is None else tr
        model_trace = poutine.trace(poutine.replay(self.plate(self.model.iw_model), trace=tr)).get_trace(self.scored)
        model_trace = poutine.util.prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        lp_sites = _site_log_probs(model_trace, self.particle_dim, shape)
        latent_p = {n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
        if latent_p != set(self.layout.names):
            raise ValueError(
                f"the model's latent sites {sorted(latent_p)} differ from the proposal's "
                f"{sorted(self.layout.names)}: AIS needs the same latents on both sides"
            )
        ls = sum(v for k, v in lp_sites.items() if k not in self.exclude)
        lt = sum((v for k, v in lp_sites.items() if k in self.exclude), torch.zeros_like(ls))
        return ls, lt

    def state(self, x: Tensor) -> _State:
        self.evaluations += 1
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            lq, ls, lt = self.log_densities(x)
            grads = []
            outs = (lq, ls, lt)
            for i, out in enumerate(outs):
                if out.requires_grad:
                    (g,) = torch.autograd.grad(out.sum(), x, retain_graph=i < len(outs) - 1, allow_unused=True)
                    grads.append(torch.zeros_like(x) if g is None else g)
                else:
                    grads.append(torch.zeros_like(x))
        return _State(x.detach(), lq.detach(), ls.detach(), lt.detach(), *(g.detach() for g in grads))

    def check_deterministic(self, x: Tensor) -> None:
        """The densities at fixed latents must be functions of the latents: a proposal or model
        drawing randomness outside its sample sites (e.g. Nexus's proposal, whose ``z`` is encoded
        from draws it makes before its ``z_m`` sites) has no density AIS can anneal."""
        with torch.no_grad():
            first = self.log_densities(x)
            second = self.log_densities(x)
        for name, a, b in zip(("log q", "log p", "log p"), first, second):
            if not torch.allclose(a, b, rtol=1e-5, atol=1e-4, equal_nan=True):
                side = "proposal (model.iw_guide)" if name == "log q" else "model (model.iw_model)"
                raise ValueError(
                    f"{self.model.name}: the {side} gives different {name} at the same latents "
                    "(it draws randomness outside its sample sites), so it has no density AIS can "
                    "anneal; use log_likelihood (importance sampling) for this model"
                )


# ---------------------------------------------------------------------------- HMC
def _hmc(target: _Target, s: _State, a: float, g: float, eps: Tensor, leapfrog_steps: int) -> tuple[_State, Tensor]:
    """One HMC transition (leapfrog, Metropolis accept per chain and row) leaving ``f_{a,g}``
    invariant; ``eps`` is ``(C or 1, B, 1)``. Returns the new state and the acceptance
    probabilities ``(C, B)``. Non-finite energies are rejected."""
    # a random step size, independent of the chain, breaks the periodic trajectories of HMC on
    # near-Gaussian targets (Neal 2011, Sec. 5.4.2); the kernel stays f-invariant
    eps = eps * (0.8 + 0.4 * torch.rand(s.x.shape[:-1] + (1,), dtype=s.x.dtype, device=s.x.device))
    v = torch.randn_like(s.x)
    h0 = -s.log_f(a, g) + 0.5 * (v * v).sum(-1)
    x = s.x
    v = v + 0.5 * eps * s.grad(a, g)
    new = s
    for step in range(leapfrog_steps):
        x = x + eps * v
        new = target.state(x)
        v = v + (eps if step < leapfrog_steps - 1 else 0.5 * eps) * new.grad(a, g)
        x = new.x
    h1 = -new.log_f(a, g) + 0.5 * (v * v).sum(-1)
    log_accept = (h0 - h1).clamp(max=0.0)
    finite = torch.isfinite(log_accept) & torch.isfinite(new.x).all(-1) & torch.isfinite(new.grad(a, g)).all(-1)
    log_accept = torch.where(finite, log_accept, torch.full_like(log_accept, -math.inf))
    accept = torch.rand_like(log_accept).log() < log_accept
    return new.where(accept, s), log_accept.exp()


def _path(num_steps: int, conditional: bool, schedule: str) -> list[tuple[float, float]]:
    """Coefficients ``(a_t, g_t)`` of ``log f_t = (1 - a) log q + a log p(X_S, z) + g log p(X_T | z)``:
    ``a`` from 0 to 1, then (conditional) ``g`` from 0 to 1 with ``a = 1``."""
    betas = annealing_schedule(num_steps, schedule).tolist()
    path = [(b, 0.0) for b in betas]
    if conditional:
        path += [(1.0, b) for b in betas[1:]]
    return path


def _warmup(target: _Target, state: _State, path: list[tuple[float, float]], warmup: int,
            leapfrog_steps: int, init_step_size: float, bar) -> tuple[Tensor, Tensor]:
    """Pilot run: anneal fresh chains along a coarse version of ``path`` (``warmup`` transitions)
    and adapt each row's log step size by ``log eps += (mean_c accept - 0.65)`` after each.
    Returns the pilot's path positions ``(W,)`` and log step sizes ``(W, B)``."""
    B = target.B
    log_eps = torch.full((1, B, 1), math.log(init_step_size), dtype=state.x.dtype, device=state.x.device)
    idx = torch.linspace(0, len(path) - 1, warmup).round().long().tolist()
    positions, record = [], []
    for i in idx:
        a, g = path[i]
        # several rounds at the start: the proposal's scale is the only guess of a good step
        for _ in range(10 if not positions else 1):
            state, accept = _hmc(target, state, a, g, log_eps.exp(), leapfrog_steps)
            log_eps = log_eps + (accept.mean(0).view(1, B, 1) - TARGET_ACCEPT)
        positions.append(float(i))
        record.append(log_eps.view(B))
        bar.update(1)
    return torch.tensor(positions, dtype=torch.float64), torch.stack(record)


def _frozen_step_sizes(positions: Tensor, record: Tensor, num_positions: int) -> Tensor:
    """Log step size of each row at every path position, interpolated from the pilot (``(P, B)``)."""
    grid = torch.arange(num_positions, dtype=torch.float64)
    if positions.numel() == 1:
        return record.expand(num_positions, -1)
    j = torch.searchsorted(positions, grid, right=True).clamp(1, positions.numel() - 1)
    lo, hi = positions[j - 1], positions[j]
    w = ((grid - lo) / (hi - lo)).clamp(0, 1).to(record.dtype).unsqueeze(-1)
    return (1 - w) * record[j - 1] + w * record[j]


def _anneal(target: _Target, state: _State, path: list[tuple[float, float]], log_eps: Tensor,
            leapfrog_steps: int, bar, split: int | None = None) -> tuple[Tensor, Tensor | None]:
    """One AIS run along ``path`` from ``state`` (exact samples of ``f_0``); returns the chains'
    log weights ``(C, B)`` (float64) and, when ``split`` is given, their partial sums up to
    position ``split``. ``log_eps[i]`` is the step size of the transition at position ``i``."""
    logw = torch.zeros(target.C, target.B, dtype=torch.float64, device=state.x.device)
    partial = None
    for i in range(1, len(path)):
        (a0, g0), (a1, g1) = path[i - 1], path[i]
        logw = logw + ((a1 - a0) * (state.ls - state.lq) + (g1 - g0) * state.lt).double()
        if split is not None and i == split:
            partial = logw
        if i < len(path) - 1:  # the last distribution needs no transition
            eps = log_eps[i].exp().view(1, target.B, 1)
            state, _ = _hmc(target, state, a1, g1, eps, leapfrog_steps)
        bar.update(1)
    return logw, partial


# ---------------------------------------------------------------------------- estimates
def _log_mean_exp(logw: Tensor) -> Tensor:
    return torch.logsumexp(logw, 0) - math.log(logw.shape[0])


def _stderr(logw: Tensor) -> Tensor:
    """Delta-method s.e. of ``log mean_c w_c``: ``sd_c(w) / (sqrt(C) mean_c(w))`` (stable)."""
    C = logw.shape[0]
    if C < 2:
        return torch.full(logw.shape[1:], math.nan, dtype=torch.float64)
    w = (logw - logw.max(0).values).exp()
    return w.std(0, unbiased=True) / (math.sqrt(C) * w.mean(0))


def _ratio_stderr(lw_num: Tensor, lw_den: Tensor) -> Tensor:
    """Delta-method s.e. of ``log mean(w_num) - log mean(w_den)`` over the same chains."""
    C = lw_num.shape[0]
    if C < 2:
        return torch.full(lw_num.shape[1:], math.nan, dtype=torch.float64)
    u = (lw_num - lw_num.max(0).values).exp()
    v = (lw_den - lw_den.max(0).values).exp()
    r = u / u.mean(0) - v / v.mean(0)  # linearisation of the log-ratio, mean zero
    return r.std(0, unbiased=True) / math.sqrt(C)


def _estimate(lw_num: Tensor, lw_den: Tensor | None) -> tuple[Tensor, Tensor]:
    if lw_den is None:
        return _log_mean_exp(lw_num), _stderr(lw_num)
    return _log_mean_exp(lw_num) - _log_mean_exp(lw_den), _ratio_stderr(lw_num, lw_den)


def _halves_agree(lw_num: Tensor, lw_den: Tensor | None) -> Tensor:
    """``|L_1 - L_2| <= 3 sqrt(se_1^2 + se_2^2)`` for the estimates of the two halves of the
    chains (independent estimates of the same quantity), up to round-off (``1e-4 max(1, |L|)``, as
    :func:`~pyromv.metrics.likelihood.pareto_khat` calls weights flat)."""
    h = lw_num.shape[0] // 2
    halves = [(lw_num[:h], None if lw_den is None else lw_den[:h]),
              (lw_num[h:2 * h], None if lw_den is None else lw_den[h:2 * h])]
    (v1, s1), (v2, s2) = (_estimate(n, d) for n, d in halves)
    round_off = ROUND_OFF * torch.maximum(v1.abs(), torch.ones_like(v1))
    return (v1 - v2).abs() <= HALVES_SDS * (s1**2 + s2**2).sqrt() + round_off


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_options(num_steps, num_chains, leapfrog_steps, warmup, batch_size, step_size, schedule) -> None:
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("num_chains", num_chains)
    _check_positive_int("leapfrog_steps", leapfrog_steps)
    _check_positive_int("warmup", warmup, minimum=2)
    _check_positive_int("batch_size", batch_size)
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0 \
            or not math.isfinite(step_size):
        raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
    if schedule not in ("sigmoid", "linear"):
        raise ValueError(f"schedule must be 'sigmoid' or 'linear', got {schedule!r}")


class _Evaluating:
    """``model.eval()`` and Pyro validation off, *with* autograd (HMC needs gradients in z)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.validation = pyro.validation_enabled(False)
        self.validation.__enter__()
        return self

    def __exit__(self, *exc):
        self.validation.__exit__(*exc)
        self.model.train(self.was_training)


def _run_chunk(model, proposal, scored, exclude, conditional, num_steps, num_chains, leapfrog_steps,
               warmup, step_size, schedule, bar, reverse_start: dict[str, Tensor] | None = None):
    """Pilot, forward AIS and (when ``reverse_start`` holds exact posterior samples) reverse AIS
    of one chunk of rows. Returns ``(lw_num, lw_den or None, lw_reverse or None)``."""
    target = _Target(model, proposal, scored, exclude, num_chains)
    target.check_deterministic(target.initial)
    path = _path(num_steps, conditional, schedule)
    pilot = target.state(target.initial)
    positions, record = _warmup(target, pilot, path, warmup, leapfrog_steps, step_size, bar)
    log_eps = _frozen_step_sizes(positions, record, len(path))
    # fresh draws from the proposal for the annealing run (the pilot's chains are discarded)
    with torch.no_grad():
        tr = poutine.trace(target.plate(model.iw_guide)).get_trace(proposal)
    x0 = target.layout.flatten({n: tr.nodes[n]["value"] for n in target.layout.names}, num_chains, target.B)
    split = num_steps if conditional else None
    lw, partial = _anneal(target, target.state(x0), path, log_eps, leapfrog_steps, bar, split)
    lw_den = partial if conditional else None
    lw_rev = None
    if reverse_start is not None:
        x_star = target.layout.flatten(reverse_start, 1, target.B).expand(num_chains, -1, -1)
        back = path[::-1]
        lw_rev, _ = _anneal(target, target.state(x_star), back, log_eps.flip(0), leapfrog_steps, bar)
    return lw, lw_den, lw_rev


def annealed_log_likelihood(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    *,
    given: Sequence[str] | str | None = None,
    targets: Sequence[str] | str | None = None,
    num_steps: int = 200,
    num_chains: int = 16,
    leapfrog_steps: int = 5,
    warmup: int = 20,
    step_size: float = 0.05,
    schedule: str = "sigmoid",
    batch_size: int = 64,
    max_stderr: float = 0.1,
    seed: int | None = None,
    progress: bool = False,
) -> LogLikelihood:
    r"""Annealed importance sampling estimate of each row's log-likelihood (Neal 2001; Wu et al. 2017).

    Joint (``given=None``): chains start at ``z ~ q(z | X_T)`` (``model.iw_guide``, the proposal of
    :func:`~pyromv.metrics.log_likelihood`) and anneal along
    ``log f_t = (1 - b_t) log q(z | X_T) + b_t log p(X_T, z)``; chain ``c`` of row ``n`` has log
    weight ``log w = sum_t (b_t - b_{t-1}) [log p(X_T, z_{t-1}) - log q(z_{t-1} | X_T)]`` and
    ``log p_hat = log mean_c w_c``: ``E[w] = p(X_T)`` exactly, so the estimate is a stochastic
    lower bound of ``log p(X_T)`` (Jensen), tightening as ``num_steps`` grows.

    Conditional (``given=S``): one set of chains from ``q(z | X_S)`` anneals to ``p(z | X_S)``
    (``num_steps`` steps, ``f = (1-b) log q + b log p(X_S, z)``) and then on to ``p(z | X_S, X_T)``
    (``num_steps`` more, ``f = log p(X_S, z) + g log p(X_T | z)``). The weights after the first
    stage, ``w^S``, estimate ``p(X_S)`` and the full ones, ``w``, ``p(X_S, X_T)``, both without
    bias; ``log mean_c w_c - log mean_c w^S_c`` estimates ``log p(X_T | X_S)`` consistently but is
    *neither* bound (a ratio). One path through both targets costs half of two separate runs,
    and the two estimates' errors, sharing their first stage, largely cancel in the ratio.

    Transitions are HMC (``leapfrog_steps`` leapfrog steps, a Metropolis accept per chain and
    row) on every latent site of the proposal (shared ``z``, private ``w_{m}``, hierarchy
    levels), flattened into one vector; ``log q`` and ``log p`` are scored by replaying
    ``model.iw_guide`` / ``model.iw_model`` (site scales divided out, as in
    :func:`~pyromv.metrics.importance_weights`) with autograd gradients. Step sizes: a pilot run
    of ``warmup`` transitions along the same path (its own chains) adapts each row's log step
    size towards an acceptance of 0.65; the annealing run then uses the pilot's step sizes,
    interpolated along the path, *frozen*. Because they do not depend on the annealing chains,
    every transition is a fixed Markov kernel leaving its ``f_t`` invariant, which is what makes
    ``E[w] = p(X)`` exact (adapting on the chains themselves would break it).

    Cost: ``rows * num_chains * (num_steps * (1 + conditional) + 10 + warmup) * leapfrog_steps``
    gradient evaluations of the model and proposal.

    Diagnostics: ``row_stderr`` is the delta-method standard error of each row's estimate over
    its chains, ``sd_c(w) / (sqrt(C) mean_c(w))`` (for a conditional, of the log-ratio); ``khat``
    the PSIS k-hat of the chains' log weights (``num_chains >= 25``, else NaN). A row *passes*
    when the estimates of the two halves of its chains (independent) differ by at most 3 combined
    standard errors (a false alarm rate of 0.3% under the normal approximation) **and**
    ``row_stderr <= max_stderr``: the s.e. alone is unreliable when one chain dominates, the
    halves' agreement alone is vacuous when the s.e. is large.

    Parameters
    ----------
    model : MultimodalVAE
    data : MultimodalDataset or MultimodalBatch
    given, targets : modality name(s), optional
        As in :func:`~pyromv.metrics.log_likelihood`.
    num_steps : int
        Annealing steps ``T`` (per stage for a conditional).
    num_chains : int
        Independent chains per row ``C`` (at least 2 for a standard error, 4 for the diagnostic).
    leapfrog_steps : int
        Leapfrog steps per HMC transition.
    warmup : int
        Transitions of the step-size pilot run (at least 2; plus 10 at its start).
    step_size : float
        The pilot's initial step size.
    schedule : {"sigmoid", "linear"}
        The ``b_t`` schedule (:func:`annealing_schedule`).
    batch_size : int
        Rows per chunk: memory is set by ``batch_size * num_chains``.
    max_stderr : float
        The largest ``row_stderr`` (nats) a passing row may have.
    seed : int, optional
        Seed of every draw (the global RNG state is restored afterwards).
    progress : bool
        Show a progress bar over the transitions of every chunk.

    Returns
    -------
    LogLikelihood
        ``method="ais"``, ``num_steps``, ``num_chains``, ``row_stderr``, ``passed``.

    References
    ----------
    .. [1] R. M. Neal, "Annealed importance sampling", Statistics and Computing 11, 2001.
    .. [2] Y. Wu, Y. Burda, R. Salakhutdinov and R. Grosse, "On the quantitative analysis of
       decoder-based generative models", ICLR 2017.
    .. [3] R. B. Grosse, Z. Ghahramani and R. P. Adams, "Sandwiching the marginal likelihood
       using bidirectional Monte Carlo", arXiv:1511.02543, 2015.
    """
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    _check_options(num_steps, num_chains, leapfrog_steps, warmup, batch_size, step_size, schedule)
    if isinstance(max_stderr, bool) or not isinstance(max_stderr, (int, float)) or not max_stderr > 0:
        raise ValueError(f"max_stderr must be a positive number, got {max_stderr!r}")
    plan = scored_rows(model, data, given, targets)
    lw_num, lw_den, _ = _run(model, plan, num_steps, num_chains, leapfrog_steps, warmup, step_size,
                             schedule, batch_size, seed, progress, None)
    return _result(plan, lw_num, lw_den, num_steps, num_chains, max_stderr)


def _run(model, plan: ScoredRows, num_steps, num_chains, leapfrog_steps, warmup, step_size, schedule,
         batch_size, seed, progress, reverse_latents: dict[str, Tensor] | None):
    device = model_device(model)
    conditional = plan.given is not None
    n = plan.batch.batch_size
    chunks = range(0, n, batch_size)
    per_chunk = warmup + (2 if conditional else 1) * num_steps + (num_steps if reverse_latents is not None else 0)
    nums, dens, revs = [], [], []
    with _Evaluating(model), seeded(seed, device), tqdm(total=per_chunk * len(chunks), desc="AIS",
                                                         disable=not progress, leave=False) as bar:
        for start in chunks:
            chunk = plan.batch.index(slice(start, start + batch_size)).to(device)
            rev = None
            if reverse_latents is not None:
                rev = {k: v[start:start + batch_size].to(device) for k, v in reverse_latents.items()}
            lw, lw_den, lw_rev = _run_chunk(
                model, chunk.restrict(plan.proposal_names), chunk.restrict(plan.scored_names), plan.exclude,
                conditional, num_steps, num_chains, leapfrog_steps, warmup, step_size, schedule, bar, rev,
            )
            nums.append(lw.cpu())
            if lw_den is not None:
                dens.append(lw_den.cpu())
            if lw_rev is not None:
                revs.append(lw_rev.cpu())
    cat = lambda xs: torch.cat(xs, 1) if xs else None  # noqa: E731
    return cat(nums), cat(dens), cat(revs)


def _result(plan: ScoredRows, lw_num: Tensor, lw_den: Tensor | None, num_steps: int, num_chains: int,
            max_stderr: float) -> LogLikelihood:
    values, stderr = _estimate(lw_num, lw_den)
    if num_chains >= 4:
        passed = _halves_agree(lw_num, lw_den) & (stderr <= max_stderr)
    else:
        passed = torch.zeros_like(values, dtype=torch.bool)
    if num_chains >= MIN_PARTICLES_FOR_KHAT:
        khat = torch.from_numpy(pareto_khat(lw_num))
        if lw_den is not None:
            khat = torch.fmax(khat, torch.from_numpy(pareto_khat(lw_den)))
    else:
        khat = torch.full_like(values, math.nan)
    return LogLikelihood(
        values=values, khat=khat, rows=plan.rows, num_particles=num_chains, given=plan.reported_given,
        targets=plan.targets, method="ais", num_steps=num_steps, num_chains=num_chains,
        row_stderr=stderr, passed=passed,
    )


# ---------------------------------------------------------------------------- BDMC
@dataclass(frozen=True)
class Simulated:
    """Data drawn from a model with the latents that generated it: ``latents[site]`` is an exact
    draw from the posterior ``p(latents | batch)`` of each row."""

    batch: MultimodalBatch
    latents: dict[str, Tensor]


@dataclass(frozen=True)
class BDMCResult:
    """Sandwich of each row's ``log p(X)``: ``lower`` (forward AIS, a stochastic lower bound),
    ``upper`` ``(N,)`` (reverse AIS from the exact posterior sample, a stochastic upper bound)
    and ``gap = upper - lower`` ``(N,)``."""

    lower: LogLikelihood
    upper: Tensor
    gap: Tensor

    @property
    def mean_gap(self) -> float:
        """Mean over rows of ``upper - lower``."""
        return float(self.gap.mean())


def simulate(model: MultimodalVAE, n: int, seed: int | None = None) -> Simulated:
    """Draw ``n`` rows ``(latents, X) ~ p(latents) prod_m p(x_m | latents)`` from the model
    (``model.iw_model`` traced with every modality sampled instead of observed), all modalities
    observed, keeping the latents: each is an exact posterior sample given its row."""
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    _check_positive_int("n", n)
    if list(model.generated_modalities) != list(model.names):
        raise ValueError(f"{model.name} conditions on modalities it does not model "
                         f"({sorted(set(model.names) - set(model.generated_modalities))}): it cannot simulate them")
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
    data = {m.name: torch.zeros((n, *m.shape), dtype=dtype, device=device) for m in model.modalities}
    masks = {m.name: torch.ones(n, dtype=torch.bool, device=device) for m in model.modalities}
    dummy = MultimodalBatch(data, masks)
    with _Evaluating(model), torch.no_grad(), seeded(seed, device):
        tr = poutine.trace(poutine.uncondition(model.iw_model)).get_trace(dummy)
    tr = poutine.util.prune_subsample_sites(tr)
    sampled = {m: tr.nodes[f"x_{m}"]["value"].detach().cpu() for m in model.names}
    latents = {name: site["value"].detach().cpu() for name, site in tr.nodes.items()
               if site["type"] == "sample" and not name.startswith("x_")}
    return Simulated(make_batch(model.modalities, sampled), latents)


def bdmc(
    model: MultimodalVAE,
    data: int | Simulated,
    *,
    num_steps: int = 200,
    num_chains: int = 16,
    leapfrog_steps: int = 5,
    warmup: int = 20,
    step_size: float = 0.05,
    schedule: str = "sigmoid",
    batch_size: int = 64,
    max_stderr: float = 0.1,
    seed: int | None = None,
    progress: bool = False,
) -> BDMCResult:
    r"""Bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015; Wu et al. 2017) on simulated data.

    ``data`` is a number of rows to :func:`simulate` (with ``seed``) or a :class:`Simulated`
    set. Forward AIS from ``q(z | X)`` gives the stochastic lower bound
    (:func:`annealed_log_likelihood`, same options); reverse AIS runs the same path backwards,
    ``f_T -> f_0``, starting every chain at the row's exact posterior sample: its weights
    ``prod_t f_{t-1}(z_t) / f_t(z_t)`` have expectation ``1 / p(X)``, so
    ``upper = -log mean_c w^rev_c`` is a stochastic upper bound of ``log p(X)``. Both directions
    share the transitions and the frozen step sizes (the pilot run is independent of both).
    ``gap = upper - lower`` bounds the error of either estimate on such data (up to Monte Carlo
    noise): when it is small, AIS at these settings is accurate for data like the model's own.
    """
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    _check_options(num_steps, num_chains, leapfrog_steps, warmup, batch_size, step_size, schedule)
    if isinstance(data, bool) or not isinstance(data, (int, Simulated)):
        raise TypeError(f"data must be a number of rows or a Simulated set, got {type(data).__name__}")
    sim = simulate(model, data, seed) if isinstance(data, int) else data
    plan = scored_rows(model, sim.batch, None, None)
    if plan.rows.numel() != sim.batch.batch_size:
        raise ValueError("every simulated row must observe a modality")
    lw, _, lw_rev = _run(model, plan, num_steps, num_chains, leapfrog_steps, warmup, step_size, schedule,
                         batch_size, None if seed is None else seed + 1, progress, sim.latents)
    lower = _result(plan, lw, None, num_steps, num_chains, max_stderr)
    upper = -_log_mean_exp(lw_rev)
    return BDMCResult(lower=lower, upper=upper, gap=upper - lower.values)


__all__ = ["BDMCResult", "Simulated", "annealed_log_likelihood", "annealing_schedule", "bdmc", "simulate"]
