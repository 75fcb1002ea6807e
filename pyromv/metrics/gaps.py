r"""Inference gaps: how far the ELBO sits below ``log p(X)``, and whose fault that is.

Cremer, Li & Duvenaud ("Inference suboptimality in variational autoencoders", ICML 2018) split
the gap between a row's log-likelihood and its ELBO under the amortised guide ``q_phi(z | x)``
in two, through the best member ``q*`` of a variational family fitted to that row alone:

.. math::
    \log p(x) - \mathcal L[q_\phi] =
    \underbrace{\log p(x) - \mathcal L[q^*]}_{\text{approximation gap}}
    + \underbrace{\mathcal L[q^*] - \mathcal L[q_\phi]}_{\text{amortisation gap}}.

The approximation gap is the family's (no encoder can close it); the amortisation gap is the
encoder's: what it loses by predicting ``q`` from ``x`` with one network instead of fitting it
per row — for instance by reading zero-filled missing entries as observed zeros.

:func:`inference_gaps` estimates ``log p`` with :func:`~pyromv.metrics.log_likelihood` (IWAE or
AIS), ``L[q_phi]`` by Monte Carlo over the guide, and ``L[q*]`` by fitting, per row, a
diagonal Gaussian over every latent site of the guide (flattened as AIS flattens them: shared,
private and hierarchical latents) with reparameterised gradients and Adam, starting from the
guide's own moments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from torch import Tensor
from tqdm.auto import tqdm

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from ._util import model_device, seeded
from .ais import _check_positive_int, _Evaluating, _Target
from .likelihood import LogLikelihood, log_likelihood, scored_rows

#: Smallest and largest log standard deviation of the per-row Gaussians (keeps Adam finite).
LOG_SCALE_RANGE = (-12.0, 6.0)


@dataclass
class InferenceGaps:
    """Per-row ELBOs and log-likelihoods, and the two gaps between them (nats).

    Attributes
    ----------
    rows : Tensor
        ``(n,)`` indices of the scored rows in the data (every row observing a target).
    log_p : Tensor
        ``(n,)`` the log-likelihood estimate (``likelihood.values``).
    elbo : Tensor
        ``(n,)`` ``L[q_phi]``: the ELBO of the amortised guide (the likelihood's proposal).
    local_elbo : Tensor
        ``(n,)`` ``L[q*]``: the ELBO of the diagonal Gaussian fitted to each row.
    elbo_stderr, local_elbo_stderr : Tensor
        ``(n,)`` Monte Carlo standard errors of the two ELBO estimates.
    likelihood : LogLikelihood
        The log-likelihood estimate with its diagnostics (k-hat, or AIS's ``passed``).
    local_steps : int
        Adam steps of the per-row fits.
    """

    rows: Tensor
    log_p: Tensor
    elbo: Tensor
    local_elbo: Tensor
    elbo_stderr: Tensor
    local_elbo_stderr: Tensor
    likelihood: LogLikelihood
    local_steps: int

    @property
    def gap(self) -> Tensor:
        """``log p - L[q_phi]`` per row: the whole inference gap."""
        return self.log_p - self.elbo

    @property
    def amortisation_gap(self) -> Tensor:
        """``L[q*] - L[q_phi]`` per row: what the encoder loses against a per-row fit. Negative
        where the guide is not a diagonal Gaussian and beats the best one (a mixture guide)."""
        return self.local_elbo - self.elbo

    @property
    def approximation_gap(self) -> Tensor:
        """``log p - L[q*]`` per row: what the diagonal Gaussian family loses (up to the
        log-likelihood estimate's own bias: IWAE is a lower bound, so this can be too small)."""
        return self.log_p - self.local_elbo

    def summary(self) -> dict[str, float]:
        """Row means of every quantity (nats), the rows scored and the fits' steps."""
        mean = lambda t: float(t.mean())  # noqa: E731
        return {
            "log_p": mean(self.log_p), "elbo": mean(self.elbo), "local_elbo": mean(self.local_elbo),
            "gap": mean(self.gap), "amortisation_gap": mean(self.amortisation_gap),
            "approximation_gap": mean(self.approximation_gap), "rows": int(self.rows.numel()),
            "local_steps": self.local_steps, "likelihood_method": self.likelihood.method,
        }


def inference_gaps(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    *,
    targets: Sequence[str] | str | None = None,
    K: int = 1000,
    local_steps: int = 300,
    local_samples: int = 16,
    lr: float = 0.05,
    elbo_samples: int = 256,
    batch_size: int = 128,
    seed: int | None = None,
    progress: bool = False,
    likelihood: LogLikelihood | None = None,
    likelihood_options: Mapping[str, Any] | None = None,
) -> InferenceGaps:
    r"""Split each row's ELBO gap into its amortisation and approximation parts (Cremer et al. 2018).

    Three numbers per row observing a modality of ``targets`` (default: all):

    - ``log p(X_T)``: :func:`~pyromv.metrics.log_likelihood` with ``K`` particles (pass
      ``likelihood_options={"method": "ais", ...}`` for AIS, or a ready ``likelihood``);
    - ``L[q_phi] = E_q[log p(X_T, z) - log q(z | X_T)]`` over ``elbo_samples`` draws of the
      likelihood's proposal ``model.iw_guide`` (the guide of every latent site);
    - ``L[q*] = E_{q*}[log p(X_T, z) - log q*(z)]`` of a diagonal Gaussian ``q* = N(mu, diag s^2)``
      over the flattened latents, fitted to the row by ``local_steps`` Adam steps (rate ``lr``,
      decaying linearly to zero over the second half) on reparameterised "sticking the landing"
      gradients (Roeder et al. 2017) from ``local_samples`` draws, started at the mean and
      standard deviation of the guide's draws; scored afterwards with ``elbo_samples`` fresh
      draws. ``L[q*]`` is a lower bound on the best diagonal Gaussian's ELBO (the fit is
      finite), so the amortisation gap is, if anything, underestimated.

    Parameters
    ----------
    model : MultimodalVAE
        A model with a likelihood (not the deterministic baselines) whose proposal draws all its
        randomness at its sample sites (not Nexus) and whose latents are real-valued.
    data : MultimodalDataset or MultimodalBatch
    targets : modality name(s), optional
        The modalities scored, as in :func:`~pyromv.metrics.log_likelihood`.
    K : int
        Particles of the importance-sampling ``log p``.
    local_steps, local_samples : int
        Adam steps and draws per step of the per-row fits (``local_steps=0`` scores the
        guide's moment-matched Gaussian).
    lr : float
        Adam's learning rate (the parameters are each row's means and log standard deviations).
    elbo_samples : int
        Draws scoring each ELBO (rounded up to a multiple of ``local_samples``).
    batch_size : int
        Rows fitted at once.
    seed : int, optional
        Seed of every draw (the global RNG state is restored afterwards).
    progress : bool
        Show a progress bar over the fits.
    likelihood : LogLikelihood, optional
        A log-likelihood of the same rows and targets computed already (``K`` and
        ``likelihood_options`` are then unused).
    likelihood_options : mapping, optional
        More keyword arguments of :func:`~pyromv.metrics.log_likelihood`.

    Returns
    -------
    InferenceGaps

    References
    ----------
    .. [1] C. Cremer, X. Li and D. Duvenaud, "Inference suboptimality in variational
       autoencoders", ICML 2018.
    .. [2] G. Roeder, Y. Wu and D. Duvenaud, "Sticking the landing: simple, lower-variance
       gradient estimators for variational inference", NeurIPS 2017.
    """
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    if not getattr(model, "has_likelihood", True):
        raise ValueError(f"{model.name} is a deterministic autoencoder: it has no likelihood, so no ELBO gap")
    _check_positive_int("local_steps", local_steps, 0)
    _check_positive_int("local_samples", local_samples, 2)
    _check_positive_int("elbo_samples", elbo_samples, 2)
    _check_positive_int("batch_size", batch_size, 1)
    _check_positive_int("K", K, 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    plan = scored_rows(model, data, None, targets)
    if likelihood is not None:
        if not isinstance(likelihood, LogLikelihood):
            raise TypeError(f"likelihood must be a LogLikelihood, got {type(likelihood).__name__}")
        if likelihood.given != plan.reported_given or likelihood.values.numel() != plan.rows.numel():
            raise ValueError(f"likelihood scores {likelihood.values.numel()} rows; the data have "
                             f"{plan.rows.numel()} rows observing {list(plan.targets)}: pass the log-likelihood "
                             "of the same rows and targets")
    device = model_device(model)
    draws = -(-elbo_samples // local_samples)
    elbo, elbo_se, local, local_se = [], [], [], []
    chunks = range(0, plan.batch.batch_size, batch_size)
    with _Evaluating(model), seeded(seed, device), tqdm(total=len(chunks) * (local_steps + 2 * draws),
                                                         desc="inference gaps", disable=not progress,
                                                         leave=False) as bar:
        for start in chunks:
            chunk = plan.batch.index(slice(start, start + batch_size)).to(device)
            target = _Target(model, chunk.restrict(plan.proposal_names), chunk.restrict(plan.scored_names),
                             (), local_samples)
            try:
                target.check_deterministic(target.initial)
            except ValueError as err:
                raise ValueError(f"{model.name}: its proposal or model draws randomness outside its sample "
                                 "sites, so per-row fits of q are not defined for it") from err
            a, a_se, samples = _amortised_elbo(target, draws, bar)
            loc, log_scale = _fit(target, samples, local_steps, lr, bar)
            b, b_se = _gaussian_elbo(target, loc, log_scale, draws, bar)
            elbo.append(a.cpu())
            elbo_se.append(a_se.cpu())
            local.append(b.cpu())
            local_se.append(b_se.cpu())
    if likelihood is None:  # after the fits: a model they refuse is refused before this costs anything
        options = dict(likelihood_options or {})
        options.setdefault("seed", seed)
        likelihood = log_likelihood(model, plan.batch, K, targets=plan.targets, **options)
    return InferenceGaps(
        rows=plan.rows, log_p=likelihood.values.cpu(), elbo=torch.cat(elbo), local_elbo=torch.cat(local),
        elbo_stderr=torch.cat(elbo_se), local_elbo_stderr=torch.cat(local_se), likelihood=likelihood,
        local_steps=local_steps,
    )


def _mean_and_stderr(values: Tensor) -> tuple[Tensor, Tensor]:
    """Row means and standard errors of ``(S, B)`` draws."""
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


def _amortised_elbo(target: _Target, draws: int, bar) -> tuple[Tensor, Tensor, Tensor]:
    """``E_q[log p - log q]`` per row over ``draws * C`` guide draws, and the draws ``(S, B, D)``."""
    values, samples = [], []
    with torch.no_grad():
        for _ in range(draws):
            tr = poutine.trace(target.plate(target.model.iw_guide)).get_trace(target.proposal)
            x = target.layout.flatten({n: tr.nodes[n]["value"] for n in target.layout.names}, target.C, target.B)
            lq, ls, _ = target.log_densities(x)
            values.append(ls - lq)
            samples.append(x)
            bar.update()
    mean, se = _mean_and_stderr(torch.cat(values))
    return mean, se, torch.cat(samples)


def _log_normal(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """``log N(x; loc, diag exp(2 log_scale))`` summed over the last dimension."""
    z = (x - loc) * torch.exp(-log_scale)
    return (-0.5 * z**2 - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


def _fit(target: _Target, samples: Tensor, steps: int, lr: float, bar) -> tuple[Tensor, Tensor]:
    """Each row's Gaussian ``(loc, log_scale)`` ``(B, D)``, from the guide's moments, by Adam on
    the "sticking the landing" estimate of the ELBO's gradient (Roeder, Wu & Duvenaud 2017:
    ``log q`` scored with its parameters held fixed, so the gradient's variance vanishes where
    ``q`` is the posterior), the rate decaying linearly to zero over the second half of the
    steps; gradients reach only these parameters."""
    low, high = LOG_SCALE_RANGE
    loc = samples.mean(0).clone().requires_grad_(True)
    log_scale = samples.std(0).clamp_min(math.exp(low)).log().clamp(low, high).requires_grad_(True)
    optim = torch.optim.Adam([loc, log_scale], lr=lr)
    for step in range(steps):
        for group in optim.param_groups:  # then a linear decay to 0: Adam's normalised steps settle
            group["lr"] = lr * min(1.0, 2 * (1 - step / steps))
        eps = torch.randn(target.C, *loc.shape, dtype=loc.dtype, device=loc.device)
        x = loc + log_scale.exp() * eps
        ls, _ = target.log_joint(x)
        objective = (ls - _log_normal(x, loc.detach(), log_scale.detach())).mean(0).sum()
        grads = torch.autograd.grad(-objective, [loc, log_scale])
        if all(bool(torch.isfinite(g).all()) for g in grads):
            loc.grad, log_scale.grad = grads
            optim.step()
        with torch.no_grad():
            log_scale.clamp_(low, high)
        bar.update()
    return loc.detach(), log_scale.detach()


def _gaussian_elbo(target: _Target, loc: Tensor, log_scale: Tensor, draws: int, bar) -> tuple[Tensor, Tensor]:
    """``E_q[log p(X, z) - log q(z)]`` per row of ``q = N(loc, diag exp(2 log_scale))`` (the
    difference, not ``E[log p] + H``: its variance vanishes as ``q`` nears the posterior)."""
    values = []
    with torch.no_grad():
        for _ in range(draws):
            x = loc + log_scale.exp() * torch.randn(target.C, *loc.shape, dtype=loc.dtype, device=loc.device)
            ls, _ = target.log_joint(x)
            values.append(ls - _log_normal(x, loc, log_scale))
            bar.update()
    return _mean_and_stderr(torch.cat(values))
