"""AIS / BDMC surface: schedules, argument errors, seeding, genericity over registered models."""

from __future__ import annotations

import math

import pytest
import torch

from pyromv.metrics.ais import annealed_log_likelihood, annealing_schedule, bdmc, simulate
from pyromv.metrics.likelihood import log_likelihood
from pyromv.models.registry import get_model_class
from tests.models.three_modalities import MODS, batch

FAST = {"num_steps": 5, "num_chains": 4, "leapfrog_steps": 2, "warmup": 2}


def _model(name: str = "mvae", **options):
    cls = get_model_class(name)
    return cls(MODS, cls.config_class(latent_dim=3, **options))


def test_sigmoid_schedule_is_grosse_et_al():
    b = annealing_schedule(10)
    s = torch.sigmoid(4 * (2 * torch.arange(11, dtype=torch.float64) / 10 - 1))
    torch.testing.assert_close(b, (s - s[0]) / (s[-1] - s[0]))
    assert float(b[0]) == 0 and float(b[-1]) == 1 and bool((b.diff() > 0).all())
    torch.testing.assert_close(annealing_schedule(4, "linear"), torch.linspace(0, 1, 5, dtype=torch.float64))


@pytest.mark.parametrize(("option", "value", "match"), [
    ("num_steps", 0, "num_steps"), ("num_chains", 1.5, "num_chains"), ("leapfrog_steps", True, "leapfrog_steps"),
    ("warmup", 1, "warmup"), ("batch_size", 0, "batch_size"), ("step_size", -0.1, "step_size"),
    ("step_size", math.nan, "step_size"), ("schedule", "cosine", "schedule"), ("max_stderr", 0, "max_stderr"),
    ("given", "nope", "unknown modality"), ("targets", [], "targets"),
])
def test_argument_errors(option, value, match):
    with pytest.raises(ValueError, match=match):
        annealed_log_likelihood(_model(), batch(n=4), **{**FAST, option: value})


def test_overlapping_sets_and_bad_types():
    with pytest.raises(ValueError, match="overlap"):
        annealed_log_likelihood(_model(), batch(n=4), given="vec", targets=["vec", "img"], **FAST)
    with pytest.raises(TypeError, match="MultimodalVAE"):
        annealed_log_likelihood(torch.nn.Linear(2, 2), batch(n=4))
    with pytest.raises(TypeError, match="Simulated"):
        bdmc(_model(), "rows", **FAST)
    with pytest.raises(ValueError, match="n must be"):
        simulate(_model(), 0)


def test_seeded_runs_repeat_and_restore_the_global_rng():
    model = _model()
    state = torch.get_rng_state()
    a = annealed_log_likelihood(model, batch(n=4), seed=3, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    b = annealed_log_likelihood(model, batch(n=4), seed=3, **FAST)
    torch.testing.assert_close(a.values, b.values, rtol=0, atol=0)


def test_model_state_is_restored_and_progress_bar_runs():
    model = _model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    annealed_log_likelihood(model, batch(n=3), progress=True, batch_size=2, **FAST)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(("name", "options"), [
    ("mmvae_plus", {"private_latent_dim": 2}),  # mixture proposal, Laplace shared and private latents
    ("mopoe", {"private_latent_dim": 2}),  # w_{m} private latents
    ("mhvae", {}),  # a hierarchy of latent sites
])
def test_generic_over_registered_models(name, options):
    """Every latent site of the proposal is annealed, whatever the model: on partial rows the
    estimate is finite and agrees with a long importance-sampling estimate within a nat (an
    untrained model's guide is poor, so IS at K=2000 is itself only roughly right)."""
    model = _model(name, **options)
    data = batch(missing=0.3, n=5)
    result = annealed_log_likelihood(model, data, num_steps=30, num_chains=8, leapfrog_steps=3, warmup=5,
                                     seed=0)
    reference = log_likelihood(model, data, K=2000, seed=0, khat=False)
    assert result.rows.tolist() == reference.rows.tolist()
    assert bool(result.values.isfinite().all()) and bool(result.row_stderr.isfinite().all())
    assert float((result.values - reference.values).abs().max()) < 1.0


def test_conditional_on_a_registered_model():
    model = _model("mopoe", private_latent_dim=1)
    result = annealed_log_likelihood(model, batch(n=4), given="img", **FAST)
    assert result.given == ("img",) and result.targets == ("vec", "tag")
    assert bool(result.values.isfinite().all())


def test_nexus_proposal_without_a_density_is_refused():
    """Nexus's proposal encodes ``z`` from draws made outside its sample sites: the density at
    fixed latents is random, so there is nothing to anneal — a clear error, not a wrong number."""
    with pytest.raises(ValueError, match="randomness outside its sample sites"):
        annealed_log_likelihood(_model("nexus"), batch(n=3), **FAST)


def test_simulate_and_bdmc_on_a_registered_model():
    model = _model("mopoe", private_latent_dim=1)
    sim = simulate(model, 4, seed=0)
    assert set(sim.latents) == {"z", "w_img", "w_vec", "w_tag"}
    result = bdmc(model, sim, **FAST)
    assert result.upper.shape == (4,) and bool(result.gap.isfinite().all())
