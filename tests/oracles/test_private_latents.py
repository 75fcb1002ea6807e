"""Importance-sampled likelihoods of models with private latents against closed forms.

The oracle (tests/oracles/linear_gaussian.py, :class:`PrivateLinearGaussian`) is
``z ~ N(0, I_2)``, ``w_m ~ N(0, I_1)``, ``x_m = W_m z + V_m w_m + b_m + N(0, s_m^2 I)`` with
orthogonal columns of ``[W_m | V_m]``. A model with private latents whose linear decoders of
``[z, w_m]`` hold ``[W_m | V_m]``, ``b_m`` and whose likelihood has the true scale *is* this model,
whatever its guide, so ``log p(X_O)`` and ``log p(X_T | X_S)`` are known in closed form. The
encoders hold exact factors of the posterior (:func:`set_private_encoders`):
``q(w_m | x_m) = p(w_m | x_m)`` and shared experts chosen so that the ``z`` proposal of each
model is exact or a known mixture of exact subset posteriors. Modality ``a`` is informative
about ``z`` (large ``W_a``, small noise); ``b``, ``c`` weakly so; every private latent is
about as informative as the noise (``|V_m| / s_m`` between 1 and 1.6).

Statistical checks (the style of tests/infer/test_gradient_estimators.py)
------------------------------------------------------------------------
With weights ``w_k`` i.i.d., ``E[w] = p`` and ``rho = E[w^2] / p^2``, the delta method gives
``log p_hat - log p`` mean ``-(rho - 1) / (2K)`` and standard deviation ``sqrt((rho - 1) / K)``.

* Joint ``log p(X_O)``: the proposal is ``q(z | X_O) prod_{m in O} p(w_m | x_m)`` (unobserved
  modalities' private latents are not scored), so ``w = p(X_O) p(z | X_O) / q(z | X_O)`` and
  ``rho = E_{p(z|X_O)}[p(z | X_O) / q(z | X_O)]``: 1 for a product of experts (DMVAE: the
  estimate is exact for any ``K``), a 2-D Gauss-Hermite integral for mixtures (MoPoE: the
  uniform mixture of the subset posteriors ``p(z | X_s)``, ``s`` in ``O``; mmJSD: of the unimodal
  posteriors; DVCCA: ``p(z | x_a)``), with ``p / q`` bounded there, so the weights have every moment.
* Conditional ``log p(X_T | X_S)``: the proposal of ``z`` given ``X_S`` is exact (``S`` = the
  encoding set of each model: ``{a}``, or ``{a, b}`` for DMVAE's product), so the
  self-normalising denominator is exactly ``K p(X_S)`` and the estimate is
  ``log mean_k p(X_T | z_k, w_{T,k})``, ``z_k ~ p(z | X_S)``, ``w_{T,k} ~ p(w_T)``: ``rho`` is a
  Gaussian integral (:meth:`PrivateLinearGaussian.conditional_log_rho`, checked here by Monte
  Carlo). These weights are bounded (a Gaussian density in ``(z, w_T)``); ``rho`` is at most 18.

Each row must land within ``5 sd`` of the delta-method mean (``+ 1e-6`` for float64
round-off). Rows are independent; under the normal approximation a row fails with probability
``5.7e-7``, so a test of at most 42 rows has a false-alarm probability below ``3e-5`` (the
draws are seeded: the outcome is fixed). ``rho`` is kept moderate (below ~20) so that
``K = 1000`` is well inside the asymptotic regime. Measured: the largest ``|err| / sd`` of any
row is 2.7 (joint) and 2.8 (conditional).

Power: the proposal used before commit 39a92d0 drew the targets' private latents from
``q(w_T | x_T)`` (it saw the scored data) and scored them under the prior alone;
:func:`test_the_leaky_proposal_is_detected` runs it through ``log_likelihood``'s ``guide=``
and lands far off (measured on the cases below: mean error +0.4 to +0.9 nats, every row 12-23
sd off, except DMVAE given ``{a, b}`` with missing rows: 4-18 sd). The test itself, run on the
code before that commit (MoPoE only: the other three models came with the fix), fails with
``max |err| / sd`` 23 (complete rows) and 23 (missing rows).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch

from pyromv.data import make_batch
from pyromv.metrics.likelihood import log_likelihood
from pyromv.models import DMVAE, DVCCA, MMJSD, DMVAEConfig, DVCCAConfig, MMJSDConfig, MoPoE, MoPoEConfig
from pyromv.models.base import MultimodalVAE
from tests.oracles.linear_gaussian import (
    DTYPE,
    PrivateLinearGaussian,
    mixed_row_masks,
    private_modalities,
    set_private_decoders,
    set_private_encoders,
)

DIMS = {"a": 5, "b": 4, "c": 6}
SCALES = {"a": 0.3, "b": 0.5, "c": 0.5}
SHARED_NORMS = {"a": (2.0, 3.0), "b": (0.3, 0.6), "c": (0.3, 0.6)}
PRIVATE_NORMS = (0.5, 0.8)
LATENT, PRIVATE = 2, 1
N = 42  # 6 rows of each of the 7 observation patterns when modalities are missing
K = 1000
SDS = 5.0
ROUND_OFF = 1e-6


@functools.cache
def _oracle() -> PrivateLinearGaussian:
    return PrivateLinearGaussian.random(DIMS, LATENT, PRIVATE, SCALES, seed=1, shared_norms=SHARED_NORMS,
                                        private_norms=PRIVATE_NORMS)


def _data(missing: bool):
    plg = _oracle()
    data = plg.sample(N, seed=2)
    masks = mixed_row_masks(plg.names, N, seed=3) if missing else {m: torch.ones(N, dtype=torch.bool)
                                                                   for m in plg.names}
    return data, masks


# Each model, its encoders (shared expert mode per modality) and the z proposal of a row
# observing O, as mixture components (subsets whose exact posterior p(z | X_s) is a component).
def _mopoe_components(observed):
    return [s for r in range(1, len(observed) + 1) for s in itertools.combinations(observed, r)]


MODELS = {
    "mopoe": (MoPoE, MoPoEConfig, {"prior_expert": True}, "poe", _mopoe_components),
    "dmvae": (DMVAE, DMVAEConfig, {}, "poe", lambda observed: [tuple(observed)]),
    "mmjsd": (MMJSD, MMJSDConfig, {}, "posterior", lambda observed: [(m,) for m in observed]),
    "dvcca": (DVCCA, DVCCAConfig, {}, {"a": "posterior", "b": "poe", "c": "poe"},
              lambda observed: [("a",)] if "a" in observed else [tuple(observed)]),
}


def _build(name: str) -> MultimodalVAE:
    plg = _oracle()
    cls, config_cls, options, shared, _ = MODELS[name]
    model = cls(private_modalities(plg), config_cls(latent_dim=LATENT, private_latent_dim=PRIVATE, **options))
    set_private_decoders(model, plg)
    set_private_encoders(model, plg, shared)
    return model


def _z_posterior(plg, data, rows_mask):
    """Exact ``p(z | X_obs)`` (the ``z`` block of the oracle's posterior of all latents)."""
    mu, sigma = plg.posterior(data, rows_mask)
    return mu[:, :LATENT], sigma[:, :LATENT, :LATENT]


def _log_rho_joint(name, plg, data, masks):
    """``log E_{p(z|X_O)}[p(z | X_O) / q(z | X_O)]`` per row, ``q`` the uniform mixture of the
    model's components; 2-D Gauss-Hermite quadrature (40 x 40 nodes) on ``p(z | X_O)``."""
    components = MODELS[name][4]
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    nodes = torch.as_tensor(nodes, dtype=DTYPE)
    weights = torch.as_tensor(weights / math.sqrt(2 * math.pi), dtype=DTYPE)
    xi = torch.cartesian_prod(nodes, nodes)  # (Q, 2)
    log_wq = (weights[:, None].log() + weights[None, :].log()).flatten()
    out = torch.zeros(N, dtype=DTYPE)
    mu, sigma = _z_posterior(plg, data, masks)
    for i in range(N):
        observed = [m for m in plg.names if bool(masks[m][i])]
        if not observed:
            continue
        row = {m: v[i:i + 1] for m, v in data.items()}
        z = mu[i] + xi @ torch.linalg.cholesky(sigma[i]).T  # (Q, 2) nodes of N(mu, sigma)
        p = torch.distributions.MultivariateNormal(mu[i], sigma[i]).log_prob(z)
        comps = components(observed)
        log_q = []
        for s in comps:
            only = {m: torch.tensor([m in s]) for m in plg.names}
            mu_s, sigma_s = _z_posterior(plg, row, only)
            log_q.append(torch.distributions.MultivariateNormal(mu_s[0], sigma_s[0]).log_prob(z))
        q = torch.logsumexp(torch.stack(log_q), 0) - math.log(len(comps))
        out[i] = torch.logsumexp(log_wq + p - q, 0)
    return out


def _assert_within_delta_method(estimate, truth, log_rho, k):
    rel_var = log_rho.exp() - 1
    assert bool((rel_var >= -1e-9).all())
    rel_var = rel_var.clamp_min(0)
    sd = (rel_var / k).sqrt()
    err = estimate - truth + rel_var / (2 * k)
    z = err.abs() / (sd + ROUND_OFF)
    assert bool((err.abs() <= SDS * sd + ROUND_OFF).all()), (
        f"max |err| / sd = {float(z.max()):.1f} (row {int(z.argmax())}), mean error "
        f"{float((estimate - truth).mean()):+.3f} nats"
    )
    return sd


# ------------------------------------------------------------------------------ the oracle
def test_oracle_marginal_is_bayes_identity():
    """``log p(X_O) = log p(X_O, u) - log p(u | X_O)`` at any ``u``: the marginal's covariance
    against the posterior's precision (two independent routes), with missing modalities."""
    plg = _oracle()
    data, masks = _data(missing=True)
    mu, sigma = plg.posterior(data, masks)
    u = mu + torch.linspace(-1, 1, mu.shape[1], dtype=DTYPE)
    log_post = torch.distributions.MultivariateNormal(mu, sigma).log_prob(u)
    torch.testing.assert_close(plg.log_joint(data, u, masks) - log_post, plg.log_marginal(data, masks),
                               rtol=0, atol=1e-10)


def test_oracle_conditional_and_rho_match_monte_carlo():
    """``p(X_T | X_S) = E[p(X_T | z, w_T)]`` and ``rho`` under ``z ~ p(z | X_S)``,
    ``w_T ~ p(w_T)``: the closed forms against 200k plain-torch draws (relative error of a
    mean of bounded-variance terms: ~sqrt(rho / 2e5) < 1%; tolerance 5%)."""
    plg = _oracle()
    data, masks = _data(missing=True)
    rows = slice(0, 14)
    data = {m: v[rows] for m, v in data.items()}
    masks = {m: v[rows] for m, v in masks.items()}
    given, targets = ["a"], ["b", "c"]
    none = torch.zeros(14, dtype=torch.bool)
    mu, sigma = _z_posterior(plg, data, {m: masks[m] if m in given else none for m in plg.names})
    g = torch.Generator().manual_seed(5)
    draws = 200_000
    z = mu + torch.einsum("nij,snj->sni", torch.linalg.cholesky(sigma),
                          torch.randn(draws, 14, LATENT, generator=g, dtype=DTYPE))
    log_lik = torch.zeros(draws, 14, dtype=DTYPE)
    for m in targets:
        w = torch.randn(draws, 14, PRIVATE, generator=g, dtype=DTYPE)
        resid = data[m] - z @ plg.W[m].T - w @ plg.V[m].T - plg.b[m]
        lp = -0.5 * (math.log(2 * math.pi * plg.s[m] ** 2) + resid**2 / plg.s[m] ** 2)
        log_lik = log_lik + lp.sum(-1) * masks[m]
    log_mean = torch.logsumexp(log_lik, 0) - math.log(draws)
    log_second = torch.logsumexp(2 * log_lik, 0) - math.log(draws)
    scored = masks["a"] & (masks["b"] | masks["c"])
    truth = plg.log_conditional(data, given, targets, masks)
    rho = plg.conditional_log_rho(data, given, targets, masks)
    assert int(scored.sum()) >= 4
    torch.testing.assert_close(log_mean[scored], truth[scored], rtol=0, atol=0.05)
    torch.testing.assert_close(log_second[scored] - 2 * log_mean[scored], rho[scored], rtol=0, atol=0.05)


# ------------------------------------------------------------------------------ joint
@pytest.mark.parametrize("missing", [False, True], ids=["complete", "missing"])
@pytest.mark.parametrize("name", list(MODELS))
def test_joint_log_likelihood_matches_the_closed_form(name, missing):
    plg = _oracle()
    data, masks = _data(missing)
    model = _build(name)
    result = log_likelihood(model, make_batch(model.modalities, data, masks), K=K, particle_chunk=500, seed=0)
    assert result.rows.tolist() == list(range(N))
    truth = plg.log_marginal(data, masks)
    log_rho = _log_rho_joint(name, plg, data, masks)
    sd = _assert_within_delta_method(result.values, truth, log_rho, K)
    if name == "dmvae":  # the product of experts is the exact posterior: every weight is p(X_O)
        assert float(log_rho.abs().max()) < 1e-9
        torch.testing.assert_close(result.values, truth, rtol=0, atol=ROUND_OFF)
    else:
        assert float(sd.max()) > 1e-3  # a mixture proposal: the check is not vacuous
        assert float(sd.max()) < 0.1  # and it is a sharp one
    khat = result.khat[result.khat.isfinite()]  # DMVAE's flat weights have k-hat -inf
    assert khat.numel() == 0 or float(khat.max()) < 0.7


# ------------------------------------------------------------------------------ conditional
CONDITIONALS = [
    ("mopoe", ("a",), ("b", "c")),
    ("dmvae", ("a",), ("b", "c")),
    ("dmvae", ("a", "b"), ("c",)),
    ("mmjsd", ("a",), ("b", "c")),
    ("dvcca", ("a",), ("b",)),
]


def _conditional(name, given, targets, missing, guide=None):
    plg = _oracle()
    data, masks = _data(missing)
    model = _build(name)
    batch = make_batch(model.modalities, data, masks)
    if guide is not None:
        guide = functools.partial(guide, model)
    result = log_likelihood(model, batch, K=K, given=list(given), targets=list(targets), particle_chunk=500,
                            seed=0, guide=guide)
    rows = result.rows
    truth = plg.log_conditional(data, given, targets, masks)[rows]
    log_rho = plg.conditional_log_rho(data, given, targets, masks)[rows]
    return result, truth, log_rho, masks


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "missing"])
@pytest.mark.parametrize(("name", "given", "targets"), CONDITIONALS)
def test_conditional_log_likelihood_matches_the_closed_form(name, given, targets, missing):
    result, truth, log_rho, masks = _conditional(name, given, targets, missing)
    expected_rows = torch.zeros(N, dtype=torch.bool)
    for m in given:
        expected_rows |= masks[m]
    scored_targets = torch.zeros(N, dtype=torch.bool)
    for m in targets:
        scored_targets |= masks[m]
    assert result.rows.tolist() == (expected_rows & scored_targets).nonzero().flatten().tolist()
    sd = _assert_within_delta_method(result.values, truth, log_rho, K)
    assert 1e-3 < float(sd.max()) < 0.15  # informative targets (not vacuous), a sharp check


def test_the_leaky_proposal_is_detected():
    """Positive control: the proposal before the fix (``MultimodalVAE.guide``: the targets'
    private latents drawn from ``q(w_T | x_T)``, unscored) fails the same check clearly."""
    result, truth, log_rho, _ = _conditional("mopoe", ("a",), ("b", "c"), missing=False,
                                             guide=MultimodalVAE.guide)
    sd = ((log_rho.exp() - 1) / K).sqrt()
    err = result.values - truth
    assert float(err.mean()) > 0.3  # it overestimates log p(X_T | X_S) by a large margin
    assert bool((err.abs() > 2 * SDS * sd).all())  # on every row
    with pytest.raises(AssertionError, match="max \\|err\\| / sd"):
        _assert_within_delta_method(result.values, truth, log_rho, K)
