"""Annealed importance sampling and BDMC against the closed forms of the linear-Gaussian oracle.

The oracle's data are weakly informative (noise scales 0.7 and 1.0, posterior s.d. ~0.3-0.5),
and the guide is made wrong on purpose (encoder locations shifted, scales changed), so that the
proposal is *not* the posterior and AIS has work to do. Tolerances: mean |error| over rows at
most 0.025 nats, every row within 0.1 nats and within 4 of its own reported standard errors
(+ 0.01; this checks that ``row_stderr`` is honest). At these few-second settings (T = 100,
32 chains) a row's s.e. is 0.005-0.03 nats; an atypical row (far in the data's tail, where the
wrong guide is worst) reaches 0.05-0.08 nats of error, so every row within 0.05 would need
about four times the chains or steps. Draws are seeded: outcomes are fixed.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from pyromv.data import make_batch
from pyromv.metrics.ais import annealed_log_likelihood, bdmc, simulate
from pyromv.metrics.likelihood import log_likelihood
from pyromv.models import MoPoE, MoPoEConfig
from tests.oracles.linear_gaussian import (
    DTYPE,
    LinearGaussian,
    PrivateLinearGaussian,
    build_mvae,
    private_modalities,
    set_private_decoders,
    set_private_encoders,
)

N = 8
TOL = 0.05


@functools.cache
def _oracle() -> LinearGaussian:
    return LinearGaussian.random({"a": 3, "b": 2}, 2, {"a": 0.7, "b": 1.0}, seed=0)


def _model(shift: float, log_scale: float):
    model = build_mvae(_oracle())
    with torch.no_grad():
        for m in model.names:
            model.encoders[m].linear.bias.add_(shift)
            model.encoders[m].log_scale.add_(log_scale)
    return model


def _data():
    lg = _oracle()
    data = lg.sample(N, seed=1)
    return data, make_batch(_model(0, 0).modalities, data)


def _assert_close_rows(result, truth, mean_tol=TOL / 2):
    err = result.values - truth
    assert float(err.abs().mean()) <= mean_tol, f"mean |err| {float(err.abs().mean()):.3f} nats"
    assert bool((err.abs() <= 2 * TOL).all()), f"max |err| {float(err.abs().max()):.3f} nats"
    assert bool((err.abs() <= 4 * result.row_stderr + 0.01).all()), (
        f"max |err| / s.e. {float((err.abs() / result.row_stderr).max()):.1f}"
    )


def test_exact_guide_makes_every_chain_weight_exact():
    """With the exact posterior as proposal, ``log p(X, z) - log q(z | X) = log p(X)`` at every
    ``z``, so every chain's weight is ``sum_t (b_t - b_{t-1}) log p(X) = log p(X)``, whatever
    the transitions: the estimate is exact to round-off and its s.e. is zero."""
    data, batch = _data()
    result = annealed_log_likelihood(build_mvae(_oracle()), batch, num_steps=7, num_chains=4, warmup=3,
                                     seed=0)
    torch.testing.assert_close(result.values, _oracle().log_marginal(data), rtol=0, atol=1e-9)
    assert float(result.row_stderr.max()) < 1e-9
    assert bool(result.passed.all())
    assert result.method == "ais" and result.num_steps == 7 and result.num_chains == 4


def test_joint_matches_the_closed_form_with_a_wrong_guide():
    data, batch = _data()
    model = _model(0.2, 0.2)
    result = annealed_log_likelihood(model, batch, num_steps=100, num_chains=32, seed=0)
    _assert_close_rows(result, _oracle().log_marginal(data))
    assert result.rows.tolist() == list(range(N))
    assert bool(result.khat.isfinite().all())  # C >= 25: k-hat of the chain weights


def test_conditional_matches_the_closed_form_with_a_wrong_guide():
    """``log p(x_b | x_a) = log p(x_a, x_b) - log p(x_a)``, one set of chains through both."""
    lg = _oracle()
    data, batch = _data()
    model = _model(0.2, 0.2)
    result = annealed_log_likelihood(model, batch, given="a", targets="b", num_steps=100, num_chains=32, seed=0)
    only_a = {"a": torch.ones(N, dtype=torch.bool), "b": torch.zeros(N, dtype=torch.bool)}
    truth = lg.log_marginal(data) - lg.log_marginal(data, only_a)
    _assert_close_rows(result, truth)
    assert result.given == ("a",) and result.targets == ("b",)


def test_bad_guide_ais_recovers_where_iwae_does_not():
    """A shifted, narrowed encoder: IWAE with as many samples as AIS has chains is nats below
    ``log p``; AIS from the same proposal gets close (within 4 of its s.e., and 0.3 nats)."""
    data, batch = _data()
    model = _model(1.0, -0.7)
    truth = _oracle().log_marginal(data)
    iwae = log_likelihood(model, batch, K=32, seed=0, khat=False)
    assert float((truth - iwae.values).mean()) > 1.0
    result = annealed_log_likelihood(model, batch, num_steps=300, num_chains=32, seed=0)
    err = result.values - truth
    assert float(err.abs().max()) < 0.3, f"max |err| {float(err.abs().max()):.3f}"
    assert bool((err.abs() <= 4 * result.row_stderr + 0.01).all())


# ------------------------------------------------------------------ private latents (MoPoE)
@functools.cache
def _private_oracle() -> PrivateLinearGaussian:
    return PrivateLinearGaussian.random({"a": 4, "b": 3}, 2, 1, {"a": 0.7, "b": 0.8}, seed=1,
                                        shared_norms=(0.5, 1.0), private_norms=(0.5, 0.8))


def _private_model():
    plg = _private_oracle()
    model = MoPoE(private_modalities(plg), MoPoEConfig(latent_dim=2, private_latent_dim=1, prior_expert=True))
    set_private_decoders(model, plg)
    set_private_encoders(model, plg, "poe")  # the MoPoE mixture of subset posteriors: not exact
    return model


@pytest.mark.parametrize("given", [None, "a"], ids=["joint", "conditional"])
def test_private_latents_match_the_closed_form(given):
    """Shared ``z`` and private ``w_a``, ``w_b`` annealed together (the targets' ``w`` from the
    prior in the conditional's proposal, as in importance sampling)."""
    plg = _private_oracle()
    model = _private_model()
    data = plg.sample(N, seed=2)
    batch = make_batch(model.modalities, data)
    result = annealed_log_likelihood(model, batch, given=given, num_steps=100, num_chains=32, seed=0)
    truth = plg.log_marginal(data) if given is None else plg.log_conditional(data, ["a"], ["b"])
    # the conditional moves the targets' private latents from their prior to their posterior
    # in its second stage: a harder path (measured mean |err| 0.035 at these settings)
    _assert_close_rows(result, truth, mean_tol=TOL if given else TOL / 2)


# ------------------------------------------------------------------ simulation and BDMC
def test_simulated_latents_are_posterior_samples():
    """``(z, X) ~ p(z) p(X | z)``, so ``z`` is an exact draw from ``p(z | X)``: standardised by
    the closed-form posterior, the draws of 400 rows are N(0, I) (mean within 4 s.e. of 0,
    variance within 0.2 of 1)."""
    model = build_mvae(_oracle())
    sim = simulate(model, 400, seed=0)
    assert set(sim.latents) == {"z"}
    data = {m: sim.batch.data[m] for m in model.names}
    mu, sigma = _oracle().posterior(data)
    u = torch.linalg.solve_triangular(torch.linalg.cholesky(sigma), (sim.latents["z"].to(DTYPE) - mu)[..., None],
                                      upper=False)[..., 0]
    assert float(u.mean(0).abs().max()) < 4 / math.sqrt(400)
    assert float((u.var(0) - 1).abs().max()) < 0.2
    assert bool(sim.batch.obs_mask["a"].all())


def test_bdmc_sandwiches_the_closed_form():
    model = _model(0.5, -0.3)
    sim = simulate(model, N, seed=3)
    result = bdmc(model, sim, num_steps=30, num_chains=16, seed=0)
    truth = _oracle().log_marginal({m: sim.batch.data[m] for m in model.names})
    se = result.lower.row_stderr
    assert bool((result.lower.values <= truth + 4 * se + 0.01).all())
    assert bool((result.upper >= truth - 4 * se - 0.01).all())
    torch.testing.assert_close(result.gap, result.upper - result.lower.values)
    assert float(result.gap.mean()) < 0.2  # both bounds are close at these settings
    # more annealing tightens the sandwich
    longer = bdmc(model, sim, num_steps=120, num_chains=16, seed=0)
    assert float(longer.gap.abs().mean()) < float(result.gap.abs().mean())
