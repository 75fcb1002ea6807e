import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize

from pyromv.cli.train import run
from pyromv.models import load_model, registered_models


def _config(*overrides):
    with initialize(version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("model", registered_models())
def test_every_model_trains_from_the_command_line(tmp_path, model):
    cfg = _config(f"model={model}", "trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4",
                  "data.hidden_dim=16", "evaluate=false")
    metrics = run(cfg, model, "polydigits", tmp_path)
    assert metrics["model"] == model
    assert load_model(tmp_path / "model").name == model
    assert (tmp_path / "cross_generation.png").is_file()


def test_defaults_are_mvae_on_polydigits_with_30_percent_missing():
    cfg = _config()
    assert cfg.missing_rate == 0.3
    assert cfg.data.num_modalities == 3
    assert cfg.model.objective == "subsampled"


def test_run_writes_checkpoint_metrics_and_pictures(tmp_path):
    cfg = _config("trainer.epochs=2", "trainer.progress=false", "model.latent_dim=4",
                  "data.hidden_dim=16", "evaluate=false")
    metrics = run(cfg, "mvae", "polydigits", tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_elbo"] == pytest.approx(metrics["test_elbo"])
    assert len(saved["history"]) == 2
    # 30% MCAR on the training set, every row keeps at least one modality
    for fraction in saved["train_observed_fraction"].values():
        assert 0.6 < fraction < 0.8
    for name in ("cross_generation.png", "samples.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoint" / "last" / "training_state.pt").is_file()
    model = load_model(tmp_path / "model")
    assert model.config.latent_dim == 4


def test_trainer_seed_sets_the_initial_weights_too(tmp_path):
    """``trainer.seed`` seeds the networks' initialisation as well as the batches: one seed, one
    model; another seed, other weights."""
    states = []
    for i, seed in enumerate((1, 1, 2)):
        cfg = _config("trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4", "data.hidden_dim=16",
                      "evaluate=false", f"trainer.seed={seed}")
        run(cfg, "mvae", "polydigits", tmp_path / str(i))
        states.append(load_model(tmp_path / str(i) / "model").state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_rerun_in_the_same_directory_resumes(tmp_path):
    cfg = _config("trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4",
                  "data.hidden_dim=16", "evaluate=false")
    run(cfg, "mvae", "polydigits", tmp_path)
    cfg = _config("trainer.epochs=2", "trainer.progress=false", "model.latent_dim=4",
                  "data.hidden_dim=16", "evaluate=false")
    metrics = run(cfg, "mvae", "polydigits", tmp_path)
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]


@pytest.mark.slow
def test_console_script_prints_the_test_elbo(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run(
        [sys.executable, "-m", "pyromv.cli.train", f"hydra.run.dir={tmp_path}", "trainer.epochs=1",
         "trainer.progress=false", "model.latent_dim=4", "evaluate=false"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "test ELBO:" in out.stdout
    assert (tmp_path / "metrics.json").is_file()


def test_self_masked_entries_and_a_missingness_model(tmp_path):
    """``feature_missing_pattern=self_masking`` drops large entries (MNAR) and ``missingness=...``
    gives every modality with missing entries a missingness model, saved with the model."""
    cfg = _config("trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4", "evaluate=false",
                  "feature_missing_rate=0.3", "feature_missing_pattern=self_masking", "missingness=self_masking_high")
    metrics = run(cfg, "mvae", "polydigits", tmp_path)
    assert all(0.6 < f <= 1 for f in metrics["train_observed_fraction"].values())
    model = load_model(tmp_path / "model")
    assert {m.missingness for m in model.modalities} == {"self_masking_high"}
    assert set(model.missingness) == set(model.names)
