import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize
from omegaconf import OmegaConf

from pyromv.cli.eval import load_source
from pyromv.cli.eval import run as run_eval
from pyromv.cli.train import run as run_train
from pyromv.data import PolyDigits
from pyromv.metrics import ClassifierConfig, EvalConfig

TINY = ["trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4", "data.hidden_dim=16"]
SMALL_EVAL = EvalConfig(num_particles=30, max_rows=20, joint_samples=50, progress=False, plot_rows=3,
                        classifier=ClassifierConfig(epochs=1, hidden_dim=16))


def _config(*overrides):
    with initialize(version_base=None):
        return compose("train", overrides=list(overrides))


def _train_run_dir(path, *overrides):
    """What ``pyromv-train hydra.run.dir=path`` leaves behind (Hydra writes .hydra/)."""
    cfg = _config(*TINY, *overrides)
    metrics = run_train(cfg, "mvae", "polydigits", path)
    (path / ".hydra").mkdir()
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    return cfg, metrics


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One trained run (no evaluation) shared by the pyromv-eval tests."""
    path = tmp_path_factory.mktemp("run")
    _train_run_dir(path, "evaluate=false")
    return path


def test_train_evaluates_at_the_end_on_a_small_budget_by_default(tmp_path):
    cfg = _config()
    assert cfg.evaluate is True
    assert cfg.evaluation.num_particles == 100 and cfg.evaluation.max_rows == 200
    _, metrics = _train_run_dir(
        tmp_path, "evaluation.num_particles=30", "evaluation.max_rows=20",
        "evaluation.classifier.epochs=1", "evaluation.joint_samples=50", "evaluation.plot_rows=3",
    )
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["log_likelihood"]["num_particles"] == 30
    assert saved["log_likelihood"]["rows"] == 20
    assert metrics["evaluation"]["coherence"]["by_size"] == {
        str(k): v for k, v in saved["coherence"]["by_size"].items()
    }
    assert (tmp_path / "eval" / "coherence.png").is_file()


def test_eval_of_a_train_run_directory(run_dir):
    assert not (run_dir / "eval").exists()
    source, name = load_source(run_dir)
    assert name == "polydigits" and source == PolyDigits(hidden_dim=16)
    metrics = run_eval(run_dir, SMALL_EVAL, run_dir / "eval")
    saved = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert saved["run_dir"] == str(run_dir) and saved["model"] == "mvae" and saved["data"] == "polydigits"
    assert saved["log_likelihood"]["mean"] == pytest.approx(metrics["log_likelihood"]["mean"])
    assert set(saved["classifier_accuracy"]) == {"m0", "m1", "m2"}
    for name in ("reconstructions.png", "cross_generation.png", "samples.png", "latent_pca.png",
                 "coherence.png"):
        assert (run_dir / "eval" / name).is_file()


def test_eval_needs_a_train_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="pyromv-train"):
        run_eval(tmp_path, SMALL_EVAL, tmp_path / "eval")
    (tmp_path / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_source(tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(_config(*TINY), tmp_path / ".hydra" / "config.yaml")
    (tmp_path / "metrics.json").write_text(json.dumps({"data": "nope"}))
    with pytest.raises(ValueError, match="unknown data source 'nope'"):
        load_source(tmp_path)


@pytest.mark.slow
def test_console_script_prints_coherence_and_likelihood(run_dir):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run(
        [sys.executable, "-m", "pyromv.cli.eval", f"run_dir={run_dir}", "output=cli_eval", "num_particles=30",
         "max_rows=20", "classifier.epochs=1", "joint_samples=50", "progress=false", "plot_rows=3"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "test log-likelihood" in out.stdout
    assert "coherence by number of given modalities" in out.stdout
    assert "classifier test accuracy" in out.stdout
    assert (run_dir / "cli_eval" / "metrics.json").is_file()
