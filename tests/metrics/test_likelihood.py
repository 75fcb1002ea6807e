"""``log_likelihood`` mechanics (chunking, rows, seeds, errors) and the PSIS k-hat wrapper.

The estimator's values are checked against closed forms in tests/oracles/test_log_likelihood.py.
"""

import math
import sys
import types

import numpy as np
import pyro
import pytest
import torch

import pyromv.metrics.likelihood as lik
from pyromv.data import MultimodalBatch
from pyromv.metrics import LogLikelihood, log_likelihood, pareto_khat
from tests.metrics.toy import identity_model, one_hot_data


# ------------------------------------------------------------------------------ k-hat
def _gpd_log_weights(xi, K, B, seed):
    """log of generalized-Pareto draws with shape ``xi`` (inverse CDF), ``(K, B)``."""
    u = np.random.default_rng(seed).uniform(size=(K, B))
    return np.log((u ** (-xi) - 1.0) / xi)


@pytest.mark.parametrize("xi", [0.2, 0.6, 1.0])
def test_khat_estimates_the_pareto_shape_of_the_weights(xi):
    k = pareto_khat(_gpd_log_weights(xi, K=4000, B=4, seed=1))
    assert k.shape == (4,)
    # PSIS fits the tail of exactly this family; its sampling sd at K=4000 is ~0.05
    # statistical check: 0.2 is 4 sd: false-alarm rate 6.3e-5 per estimate, 12 estimates (normal approx.)
    np.testing.assert_allclose(k, xi, atol=0.2)


def test_khat_of_flat_weights_is_minus_inf_and_nan_below_25_particles():
    lw = torch.full((100, 3), -12.5)
    lw[:, 1] += 1e-7 * torch.randn(100)  # round-off sized noise is still flat
    assert np.all(pareto_khat(lw) == -np.inf)
    assert np.all(np.isnan(pareto_khat(torch.randn(24, 3))))
    assert np.isposinf(pareto_khat(torch.tensor([[0.0], [math.inf]] * 20))).all()
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        pareto_khat(torch.zeros(30))


def test_khat_uses_arviz_stats_when_it_is_installed(monkeypatch):
    # arviz >= 1 moved PSIS to arviz_stats.base.array_stats.psislw(ary, r_eff, axis)
    calls = {}

    class FakeArrayStats:
        @staticmethod
        def psislw(ary, r_eff=1, axis=-1):
            calls["shape"], calls["r_eff"], calls["axis"] = ary.shape, r_eff, axis
            return ary, np.full(ary.shape[:-1], 0.123)

    base = types.ModuleType("arviz_stats.base")
    base.array_stats = FakeArrayStats()
    monkeypatch.setitem(sys.modules, "arviz_stats", types.ModuleType("arviz_stats"))
    monkeypatch.setitem(sys.modules, "arviz_stats.base", base)
    k = pareto_khat(torch.randn(50, 3))
    np.testing.assert_array_equal(k, 0.123)
    assert calls == {"shape": (3, 50), "r_eff": 1.0, "axis": -1}


# ------------------------------------------------------------------------------ chunking
class _ScriptedWeights:
    """Stands in for ``importance_weights``: hands out the next block of fixed (K, B) weights
    (row chunks in order, particle chunks in order within each)."""

    def __init__(self, num, den):
        self.num, self.den = num, den
        self.row, self.particle = 0, 0

    def __call__(self, model, proposal, scored, k, exclude, guide):
        rows = slice(self.row, self.row + scored.batch_size)
        parts = slice(self.particle, self.particle + k)
        out = self.num[parts, rows], self.den[parts, rows]
        self.particle += k
        if self.particle == self.num.shape[0]:
            self.row, self.particle = self.row + scored.batch_size, 0
        return out


@pytest.mark.parametrize(("particle_chunk", "batch_size"), [(7, 3), (50, 40), (1, 100)])
def test_chunks_over_particles_and_rows_combine_exactly(monkeypatch, particle_chunk, batch_size):
    K, B = 50, 40
    g = torch.Generator().manual_seed(0)
    num = 3 * torch.randn(K, B, generator=g, dtype=torch.float64)
    den = torch.randn(K, B, generator=g, dtype=torch.float64)
    monkeypatch.setattr(lik, "importance_weights", _ScriptedWeights(num, den))
    model, batch = identity_model(), one_hot_data(B)
    kw = {"particle_chunk": particle_chunk, "batch_size": batch_size, "khat_threshold": math.inf}
    joint = log_likelihood(model, batch, K, **kw)
    torch.testing.assert_close(joint.values, torch.logsumexp(num, 0) - math.log(K))
    np.testing.assert_allclose(joint.khat.numpy(), pareto_khat(num))
    monkeypatch.setattr(lik, "importance_weights", _ScriptedWeights(num, den))
    cond = log_likelihood(model, batch, K, given="a", **kw)
    # self-normalised: log sum_k w_k(S, T) - log sum_k w_k(S)
    torch.testing.assert_close(cond.values, torch.logsumexp(num, 0) - torch.logsumexp(den, 0))
    np.testing.assert_allclose(cond.khat.numpy(), np.fmax(pareto_khat(num), pareto_khat(den)))


# ------------------------------------------------------------------------------ the result
def test_result_summary_mean_and_standard_error():
    model, batch = identity_model(), one_hot_data(20)
    result = log_likelihood(model, batch, K=30, seed=0, khat_threshold=math.inf)
    assert isinstance(result, LogLikelihood)
    assert result.values.shape == (20,) and result.values.dtype == torch.float64
    assert result.mean == pytest.approx(float(result.values.mean()))
    assert result.stderr == pytest.approx(float(np.std(result.values.numpy(), ddof=1) / math.sqrt(20)))
    summary = result.summary()
    assert summary["rows"] == 20 and summary["num_particles"] == 30
    assert summary["given"] is None and summary["targets"] == ["a", "b", "c"]


def test_rows_that_do_not_observe_the_targets_or_given_are_left_out():
    n = 12
    masks = {"a": torch.arange(n) < 6, "b": torch.arange(n) >= 4, "c": torch.arange(n) % 2 == 0}
    model, batch = identity_model(), one_hot_data(n, masks=masks)
    assert log_likelihood(model, batch, K=5, targets=["a"]).rows.tolist() == list(range(6))
    cond = log_likelihood(model, batch, K=5, given=["a"], targets=["b"])
    assert cond.rows.tolist() == [4, 5]


def test_seed_reproduces_and_leaves_the_global_rng_and_model_alone():
    model, batch = identity_model(), one_hot_data(10)
    model.train()
    before = {m: v.clone() for m, v in batch.data.items()}
    torch.manual_seed(3)
    expected_next = torch.rand(4)
    torch.manual_seed(3)
    one = log_likelihood(model, batch, K=40, seed=11, particle_chunk=16, khat=False)
    assert torch.equal(torch.rand(4), expected_next)
    two = log_likelihood(model, batch, K=40, seed=11, particle_chunk=16, khat=False)
    assert bool(one.khat.isnan().all())  # not computed
    torch.testing.assert_close(one.values, two.values, rtol=0, atol=0)
    assert model.training
    for m in before:
        assert torch.equal(batch.data[m], before[m])


def test_bad_arguments_are_named():
    model, batch = identity_model(), one_hot_data(10)
    with pytest.raises(ValueError, match="K must be a positive int"):
        log_likelihood(model, batch, K=0)
    with pytest.raises(ValueError, match="particle_chunk"):
        log_likelihood(model, batch, K=5, particle_chunk=0)
    with pytest.raises(ValueError, match="overlap"):
        log_likelihood(model, batch, K=5, given=["a"], targets=["a", "b"])
    with pytest.raises(ValueError, match="unknown modality 'zz' in given"):
        log_likelihood(model, batch, K=5, given=["zz"])
    with pytest.raises(ValueError, match="nothing is left to score"):
        log_likelihood(model, batch, K=5, given=["a", "b", "c"])
    with pytest.raises(TypeError, match="MultimodalVAE"):
        log_likelihood(object(), batch, K=5)
    other = MultimodalBatch({"a": batch.data["a"]}, {"a": batch.obs_mask["a"]})
    with pytest.raises(ValueError, match="modalities"):
        log_likelihood(model, other, K=5)
    masks = {"a": torch.zeros(10, dtype=torch.bool), "b": torch.ones(10, dtype=torch.bool),
             "c": torch.ones(10, dtype=torch.bool)}
    with pytest.raises(ValueError, match="no row observes"):
        log_likelihood(model, one_hot_data(10, masks=masks), K=5, given=["a"])


def test_likelihood_rescaling_of_a_modality_does_not_change_the_density():
    model = identity_model()
    mods = [m if m.name != "b" else m.__class__(**{**m.__dict__, "rescale": 3.0})
            for m in model.modalities]
    rescaled = model.__class__(mods, model.config)
    rescaled.load_state_dict(model.state_dict())
    batch = one_hot_data(10)
    kw = {"K": 30, "seed": 4, "khat": False}
    plain = log_likelihood(model, batch, **kw)
    torch.testing.assert_close(log_likelihood(rescaled, batch, **kw).values, plain.values)
    cond = log_likelihood(model, batch, given="a", **kw)
    torch.testing.assert_close(log_likelihood(rescaled, batch, given="a", **kw).values, cond.values)



def test_evaluation_turns_pyro_validation_off_and_restores_it():
    """The metrics run on validated data sets; Pyro's support checks would cost about a quarter of
    a likelihood evaluation (docs/performance.md), so ``evaluating`` turns them off."""
    from pyro.infer.util import is_validation_enabled

    from pyromv.metrics._util import evaluating

    model = torch.nn.Linear(2, 2)
    with pyro.validation_enabled(True):
        with evaluating(model):
            assert not is_validation_enabled() and not torch.is_grad_enabled() and not model.training
        assert is_validation_enabled() and model.training
