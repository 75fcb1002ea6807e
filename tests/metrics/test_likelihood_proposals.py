"""Mechanics of the likelihood estimators beyond plain IWAE: the shift-invariant flat-weights rule,
adaptive K (on scripted weights), the defensive proposal's options and refusals, ``method=`` and
the summary. Values against closed forms: tests/oracles/test_likelihood_proposals.py."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyromv.metrics.likelihood as lik
from pyromv.data import make_batch
from pyromv.metrics import EvalConfig, log_likelihood, pareto_khat
from pyromv.metrics.likelihood import FLAT_RELATIVE_VARIANCE, LikelihoodOptions, LogLikelihood
from pyromv.metrics.proposals import guide_moments
from tests.metrics.toy import identity_model, one_hot_data


# ------------------------------------------------------------------------------ flat weights
def _rows_of_spread(K=200, seed=0):
    """Rows whose log-weights have standard deviations from 0 to 1 nat (and one heavy tail)."""
    g = np.random.default_rng(seed)
    sds = [0.0, 1e-7, 1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 0.05, 0.3, 1.0]
    rows = [sd * g.standard_normal(K) for sd in sds]
    rows.append(np.log((g.uniform(size=K) ** -1.5 - 1.0) / 1.5))  # generalized Pareto, shape 1.5
    return np.stack(rows, 1), np.array(sds + [math.inf])


@pytest.mark.parametrize("shift", [-1e5, -3000.0, -1.0, 0.5, 1e4])
def test_khat_does_not_change_when_a_constant_is_added_to_a_row(shift):
    lw, _ = _rows_of_spread()
    base = pareto_khat(lw)
    shifted = pareto_khat(lw + shift)
    np.testing.assert_array_equal(np.isneginf(shifted), np.isneginf(base))  # the flat decision
    np.testing.assert_allclose(shifted, base, rtol=1e-6, atol=1e-9)  # and the PSIS fits


def test_flat_means_the_normalised_weights_barely_vary():
    lw, sds = _rows_of_spread()
    k = pareto_khat(lw)
    # relative variance of w ~ sd^2 for small sd: flat iff sd^2 below 1e-5 (sd ~ 3e-3)
    assert FLAT_RELATIVE_VARIANCE == 1e-5
    np.testing.assert_array_equal(np.isneginf(k), sds**2 < 0.5e-5)
    assert k[-1] > 0.7  # the heavy tail is fitted and flagged
    # the former rule called a row flat when its spread was below 1e-4 |log w|: at log p = -3000
    # (image data) that hid spreads up to 0.3 nats; now the shifted rows are fitted like the others
    moved = pareto_khat(lw - 3000.0)
    assert np.isfinite(moved[sds == 0.05]).all() and np.isfinite(moved[sds == 0.3]).all()


# ------------------------------------------------------------------------------ adaptive K
class _RowWeights:
    """Stands in for ``importance_weights``: row ``i`` (``a[:, 0] == i``) draws log-weights from
    its own generator: ``easy`` rows normal (sd 0.3), the others generalized Pareto with shape 3
    (arviz shrinks k-hat towards 0.5 with short tails, so K = 100 to start)."""

    def __init__(self, hard):
        self.hard = hard
        self.gens = {}
        self.drawn = {}

    def __call__(self, model, proposal, scored, k, exclude, guide):
        ids = scored.data["a"][:, 0].round().long().tolist()
        cols = []
        for i in ids:
            g = self.gens.setdefault(i, np.random.default_rng(100 + i))
            if i in self.hard:
                col = np.log((g.uniform(size=k) ** -3.0 - 1.0) / 3.0)
            else:
                col = 0.3 * g.standard_normal(k)
            self.drawn.setdefault(i, []).append(col)
            cols.append(col)
        lw = torch.from_numpy(np.stack(cols, 1))
        return lw, lw


def _indexed_batch(n):
    model = identity_model()
    x = torch.zeros(n, 2)
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return model, make_batch(model.modalities, {m: x for m in model.names})


def test_adaptive_k_doubles_only_the_rows_that_need_it_and_reuses_their_weights(monkeypatch):
    n, hard = 10, {2, 5, 7}
    stub = _RowWeights(hard)
    monkeypatch.setattr(lik, "importance_weights", stub)
    model, batch = _indexed_batch(n)
    with pytest.warns(lik.ImportanceSamplingWarning, match="up to 800 particles"):
        result = log_likelihood(model, batch, K=100, adaptive=True, max_particles=800, particle_chunk=30,
                                batch_size=4)
    for i in range(n):
        drawn = np.concatenate(stub.drawn[i])
        assert drawn.size == int(result.particles[i])  # every weight drawn is used, none twice
        expected = np.logaddexp.reduce(drawn) - math.log(drawn.size)
        assert float(result.values[i]) == pytest.approx(expected, abs=1e-9)
        assert float(result.khat[i]) == pytest.approx(float(pareto_khat(drawn[:, None])[0]), abs=1e-9)
    easy = [i for i in range(n) if i not in hard]
    assert result.particles[easy].tolist() == [100] * len(easy) and bool(result.passed[easy].all())
    assert result.particles[sorted(hard)].tolist() == [800] * len(hard)
    assert not bool(result.passed[sorted(hard)].any())  # never passes: reported, not hidden
    summary = result.summary()
    assert summary["passed_fraction"] == pytest.approx(0.7) and summary["particles_max"] == 800


def test_adaptive_k_stops_at_the_budget_even_when_it_is_not_a_power_of_two(monkeypatch):
    stub = _RowWeights({0})
    monkeypatch.setattr(lik, "importance_weights", stub)
    model, batch = _indexed_batch(2)
    with pytest.warns(lik.ImportanceSamplingWarning):
        result = log_likelihood(model, batch, K=100, adaptive=True, max_particles=300)
    assert result.particles.tolist() == [300, 100]


def test_adaptive_k_of_a_conditional_uses_both_terms(monkeypatch):
    stub = _RowWeights(set())
    monkeypatch.setattr(lik, "importance_weights", stub)
    model, batch = _indexed_batch(3)
    result = log_likelihood(model, batch, K=40, adaptive=True, given="a")
    # the stub returns the same weights for both terms: the ratio is exactly 0
    torch.testing.assert_close(result.values, torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------------------ defensive
def test_defensive_moments_of_a_mixture_follow_the_law_of_total_variance():
    from pyromv.distributions import MixtureOfExperts

    loc = torch.tensor([[[0.0, 1.0], [4.0, -1.0]]])  # (B=1, M=2, D=2)
    scale = torch.tensor([[[1.0, 2.0], [0.5, 1.0]]])
    mix = MixtureOfExperts(dist.Normal(loc, scale).to_event(1), torch.tensor([[True, True]]))
    mean, sd = guide_moments(mix)
    torch.testing.assert_close(mean, torch.tensor([[2.0, 0.0]]))
    var = 0.5 * (scale**2 + loc**2).sum(-2) - mean**2  # E[z^2] - E[z]^2
    torch.testing.assert_close(sd, var.sqrt())
    # an excluded expert never enters, whatever its parameters
    bad = MixtureOfExperts(dist.Normal(loc, scale).to_event(1), torch.tensor([[True, False]]))
    torch.testing.assert_close(guide_moments(bad)[0], loc[:, 0])


def test_defensive_option_errors_are_named():
    model, batch = identity_model(), one_hot_data(8)
    for kw, match in [
        ({"defensive_weight": 0.0}, "defensive_weight must be in"),
        ({"defensive_weight": 1.0}, "defensive_weight must be in"),
        ({"defensive_weight": math.nan}, "defensive_weight must be a finite"),
        ({"defensive_scale": -1.0}, "defensive_scale must be > 0"),
        ({"defensive_df": 0}, "defensive_df must be > 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            log_likelihood(model, batch, K=5, proposal="defensive", **kw)
    with pytest.raises(ValueError, match="proposal must be one of"):
        log_likelihood(model, batch, K=5, proposal="wide")


def test_defensive_proposal_refuses_a_latent_site_that_is_not_real_valued():
    model, batch = identity_model(), one_hot_data(8)

    def positive_guide(b):
        with pyro.plate("batch", b.batch_size):
            pyro.sample("z", dist.LogNormal(torch.zeros(b.batch_size, 2), 1.0).to_event(1))

    with pytest.raises(ValueError, match="latent site 'z' has support .*real-valued"):
        log_likelihood(model, batch, K=5, proposal="defensive", guide=positive_guide)

    class Opaque(dist.TorchDistribution):  # real support, but no mean or variance
        support = dist.constraints.real_vector
        arg_constraints = {}

    with pytest.raises(ValueError, match="no mean and variance"):
        guide_moments(Opaque(torch.Size([3]), torch.Size([2])), "z")


def test_defensive_proposal_keeps_the_guide_and_draws_every_latent():
    model, batch = identity_model(), one_hot_data(12)
    plain = log_likelihood(model, batch, K=30, seed=0, khat_threshold=math.inf)
    safe = log_likelihood(model, batch, K=30, seed=0, proposal="defensive", khat_threshold=math.inf)
    assert safe.values.shape == plain.values.shape and bool(safe.values.isfinite().all())
    assert safe.summary()["proposal"] == "defensive"


# ------------------------------------------------------------------------------ options
def test_adaptive_and_method_option_errors_are_named():
    model, batch = identity_model(), one_hot_data(8)
    cases = [
        ({"adaptive": True, "khat": False}, "needs khat=True"),
        ({"adaptive": True, "K": 10}, "K >= 25"),
        ({"adaptive": True, "K": 50, "max_particles": 40}, "max_particles must be an int >= K=50"),
        ({"max_particles": 100}, "budget of adaptive=True"),
        ({"method": "mcmc"}, "method must be one of"),
        ({"num_steps": 10}, "options of method='ais'"),
        ({"method": "ais", "proposal": "defensive"}, "proposal is an option of method='iwae'"),
        ({"method": "ais", "adaptive": True}, "adaptive is an option of method='iwae'"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            log_likelihood(model, batch, **{"K": 30, **kw})


def test_likelihood_options_validate_and_map_to_keyword_arguments():
    assert LikelihoodOptions().kwargs() == {"method": "iwae", "proposal": "guide"}
    opts = LikelihoodOptions(proposal="defensive", adaptive=True, defensive_weight=0.2)
    assert opts.kwargs() == {"method": "iwae", "proposal": "defensive", "defensive_weight": 0.2,
                             "defensive_scale": 2.0, "defensive_df": 3.0, "adaptive": True,
                             "max_particles": None}
    assert LikelihoodOptions(method="ais", num_steps=7).kwargs()["num_steps"] == 7
    for bad, match in [({"method": "x"}, "likelihood.method"), ({"proposal": "x"}, "likelihood.proposal"),
                       ({"proposal": "defensive", "defensive_weight": 2.0}, "defensive_weight"),
                       ({"num_chains": 0}, "likelihood.num_chains"),
                       ({"method": "ais", "adaptive": True}, "options of method=iwae")]:
        with pytest.raises(ValueError, match=match):
            LikelihoodOptions(**bad).validate()
    with pytest.raises(ValueError, match="likelihood.method"):
        EvalConfig(likelihood=LikelihoodOptions(method="x")).validate()


# ------------------------------------------------------------------------------ summary, AIS
def test_summary_records_the_estimator_and_the_share_of_rows_passing():
    model, batch = identity_model(), one_hot_data(20)
    result = log_likelihood(model, batch, K=30, seed=0, khat_threshold=math.inf)
    s = result.summary()
    assert s["method"] == "iwae" and s["proposal"] == "guide" and s["num_steps"] is None
    assert s["passed_fraction"] == pytest.approx(float((result.khat < math.inf).double().mean()))
    none = log_likelihood(model, batch, K=30, seed=0, khat=False)
    assert none.passed is None and none.summary()["passed_fraction"] is None  # no diagnostic
    made = LogLikelihood(values=torch.zeros(4, dtype=torch.float64), khat=torch.full((4,), math.nan),
                         rows=torch.arange(4), num_particles=8, given=None, targets=("a",), method="ais",
                         num_steps=10, num_chains=8, row_stderr=torch.full((4,), 0.5),
                         passed=torch.tensor([True, False, True, True]))
    s = made.summary()
    assert (s["method"], s["num_steps"], s["num_chains"]) == ("ais", 10, 8)
    assert s["passed_fraction"] == 0.75 and s["row_stderr_mean"] == 0.5 and s["khat_median"] is None


def test_method_ais_dispatches_to_annealed_importance_sampling():
    pytest.importorskip("pyromv.metrics.ais")
    model, batch = identity_model(), one_hot_data(6)
    small = {"leapfrog_steps": 2, "warmup": 2}
    result = log_likelihood(model, batch, method="ais", num_steps=5, num_chains=4, ais_options=small, seed=0)
    assert result.method == "ais" and result.num_steps == 5 and result.num_chains == 4
    assert result.row_stderr is not None and result.passed is not None
    assert result.values.shape == (6,) and bool(result.values.isfinite().all())
    cond = log_likelihood(model, batch, method="ais", num_steps=5, num_chains=4, ais_options=small, seed=0,
                          given="a", targets="b")
    assert cond.given == ("a",) and cond.targets == ("b",)
