"""The defensive proposal, adaptive K and the flat-weights rule against the linear-Gaussian oracle.

Truths are closed forms (``log p(X_obs)`` of the oracle); tolerances are Monte Carlo standard
errors of the draws themselves. The defensive mixture must be unbiased for ``p`` whatever the
guide: the mean of ``w / p = exp(log w - log p)`` over many draws is 1 within its standard error,
for a PoE guide (MVAE), a mixture guide (MMVAE's ``iw_guide`` is a mixture of experts) and a
guide with private latents (DMVAE).
"""

import math

import pytest
import torch

from pyromv.data import make_batch
from pyromv.metrics import log_likelihood
from pyromv.metrics._util import evaluating, seeded
from pyromv.metrics.likelihood import importance_weights
from pyromv.metrics.proposals import DefensiveMixture
from tests.oracles.linear_gaussian import LinearGaussian, build_mvae, mixed_row_masks

N = 30
DRAWS = 20000
SDS = 5.0  # statistical checks: 5 s.e. two-sided, 5.7e-7 false-alarm rate per entry (normal approx.)


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian.random({"a": 4, "b": 3, "c": 5}, 2, {"a": 0.5, "b": 0.8, "c": 1.0}, seed=1)


@pytest.fixture(scope="module")
def data(lg):
    return lg.sample(N, seed=2)


def _narrow(model, c):
    """Every expert ``c`` times narrower: the PoE guide is narrower than the posterior."""
    with torch.no_grad():
        for m in model.names:
            model.encoders[m].log_scale += math.log(c)
    return model


def _ratios(model, batch, truth, mixture, draws=DRAWS, seed=1):
    """``w / p`` of ``draws`` defensive draws per row, ``(draws, B)`` float64."""
    with evaluating(model), seeded(seed, torch.device("cpu")):
        lw, _ = importance_weights(model, batch, batch, draws, defensive=mixture)
    return (lw.double() - truth).exp()


def _assert_mean_one(ratios):
    mean = ratios.mean(0)
    se = ratios.std(0) / math.sqrt(ratios.shape[0])
    assert bool((se > 1e-3).all())  # the proposal is not exact: a real check
    assert bool(((mean - 1).abs() <= SDS * se).all()), ((mean - 1) / se)


# ------------------------------------------------------------------------------ unbiasedness
@pytest.mark.parametrize("missing", [False, True])
def test_defensive_weights_are_unbiased_for_p_with_a_poe_guide(lg, data, missing):
    masks = mixed_row_masks(lg.names, N, seed=3) if missing else None
    model = _narrow(build_mvae(lg), 0.6)
    rows = slice(0, 8)
    batch = make_batch(model.modalities, data, masks).index(rows)
    truth = lg.log_marginal(data, masks)[rows]
    _assert_mean_one(_ratios(model, batch, truth, DefensiveMixture(0.2, 2.0, 3.0)))


def test_defensive_estimates_are_within_monte_carlo_error_of_log_p(lg, data):
    model = _narrow(build_mvae(lg), 0.6)
    batch = make_batch(model.modalities, data)
    truth = lg.log_marginal(data)
    K = 1000
    result = log_likelihood(model, batch, K=K, proposal="defensive", seed=0)
    assert result.proposal == "defensive" and result.method == "iwae"
    # the relative variance of w / p from an independent set of draws; delta method on log mean
    rel_var = _ratios(model, batch, truth, DefensiveMixture(), draws=5000, seed=7).var(0)
    sd = (rel_var / K).sqrt()
    err = result.values - truth + rel_var / (2 * K)
    assert bool((err.abs() <= SDS * sd + 1e-4).all()), (err / sd).abs().max()


def test_defensive_weights_are_unbiased_with_a_mixture_guide():
    from tests.oracles.test_fusion_bounds import _build, _data, _lg

    model = _build("mmvae")  # iw_guide: a mixture of the observed unimodal experts, perturbed
    data, masks = _data()
    rows = torch.arange(0, 70, 10)  # one row of each observation pattern
    batch = make_batch(model.modalities, data, masks).index(rows)
    truth = _lg().log_marginal(data, masks)[rows]
    _assert_mean_one(_ratios(model, batch, truth, DefensiveMixture(0.3, 1.5, 4.0)))


def test_defensive_weights_are_unbiased_with_private_latents():
    from tests.oracles.test_private_latents import _build, _data, _oracle

    model = _build("dmvae")  # z and the private w_m of every modality are latent sites
    data, masks = _data(missing=True)
    rows = torch.arange(0, 42, 6)
    batch = make_batch(model.modalities, data, masks).index(rows)
    truth = _oracle().log_marginal(data, masks)[rows]
    with evaluating(model):
        sites = {n for n, s in __import__("pyro").poutine.trace(model.iw_guide).get_trace(batch).nodes.items()
                 if s["type"] == "sample" and not s["is_observed"]}
    assert {"z", "w_a", "w_b", "w_c"} <= sites
    _assert_mean_one(_ratios(model, batch, truth, DefensiveMixture(0.5, 2.0, 3.0)))


def test_a_wrong_mixture_density_would_be_caught(lg, data):
    """The unbiasedness check has teeth: weighting the same defensive draws by the guide's density
    alone (forgetting the mixture) is far from 1."""
    model = _narrow(build_mvae(lg), 0.6)
    rows = slice(0, 8)
    batch = make_batch(model.modalities, data).index(rows)
    truth = lg.log_marginal(data)[rows]
    mixture = DefensiveMixture(0.2, 2.0, 3.0)
    wrong = DefensiveMixture(0.2, 2.0, 3.0)
    object.__setattr__(wrong, "log_density", lambda log_q, log_r: log_q)  # noqa: ARG005
    ratios = _ratios(model, batch, truth, wrong)
    se = ratios.std(0) / math.sqrt(DRAWS)
    assert not bool(((ratios.mean(0) - 1).abs() <= SDS * se).all())  # (even inf: r can be ~0 where q is not)
    _assert_mean_one(_ratios(model, batch, truth, mixture))


# ------------------------------------------------------------------------------ rescue
def test_defensive_proposal_rescues_a_too_narrow_guide(lg, data):
    model = _narrow(build_mvae(lg), 0.4)
    batch = make_batch(model.modalities, data)
    truth = lg.log_marginal(data)
    plain = log_likelihood(model, batch, K=1000, seed=0, khat_threshold=math.inf)
    safe = log_likelihood(model, batch, K=1000, seed=0, proposal="defensive", khat_threshold=math.inf)
    assert float(plain.khat.median()) > 0.7  # the narrow guide's weights are heavy-tailed
    assert float(safe.khat.median()) < 0.5
    assert float((safe.khat > 0.7).double().mean()) < 0.5 * float((plain.khat > 0.7).double().mean())
    assert float((safe.values - truth).abs().mean()) < 0.5 * float((plain.values - truth).abs().mean())


# ------------------------------------------------------------------------------ adaptive K
def test_adaptive_k_stops_at_once_with_the_exact_guide_and_grows_with_a_narrow_one(lg, data):
    exact = build_mvae(lg)
    batch = make_batch(exact.modalities, data)
    easy = log_likelihood(exact, batch, K=50, adaptive=True, max_particles=400, seed=0)
    assert easy.particles.tolist() == [50] * N and bool(easy.passed.all())
    torch.testing.assert_close(easy.values, lg.log_marginal(data), rtol=0, atol=1e-4)
    narrow = _narrow(build_mvae(lg), 0.3)
    with pytest.warns(UserWarning, match="up to 400 particles"):
        hard = log_likelihood(narrow, batch, K=50, adaptive=True, max_particles=400, seed=0)
    assert int(hard.particles.max()) == 400 and float(hard.particles.double().mean()) > 100
    assert set(hard.particles.tolist()) <= {50, 100, 200, 400}
    # a row passes exactly when its final k-hat is below the threshold; only rows at the budget fail
    assert torch.equal(hard.passed, hard.khat < 0.7)
    assert bool((hard.particles[~hard.passed] == 400).all())


# ------------------------------------------------------------------------------ flat weights
@pytest.mark.parametrize(("dim", "scale"), [(20, 0.5), (784, 0.1), (1500, 0.02)])
def test_the_exact_guide_is_flat_even_where_log_p_is_large(dim, scale):
    """Exact guide, |log p| from tens to about 10^4 nats (image-sized data): the log-weights differ
    by float32 round-off only (measured spread up to 4e-3 nats at 10^4); every row is flat
    (k-hat -inf) and passes, and the estimate is log p within the round-off."""
    big = LinearGaussian.random({"a": dim, "b": dim}, 16, {"a": scale, "b": scale}, seed=1)
    x = big.sample(6, seed=2)
    model = build_mvae(big)
    truth = big.log_marginal(x)
    result = log_likelihood(model, make_batch(model.modalities, x), K=100, seed=0)
    assert bool((result.khat == -math.inf).all()) and bool(result.passed.all())
    torch.testing.assert_close(result.values, truth, rtol=0, atol=1e-6 * float(truth.abs().max()) + 1e-4)
