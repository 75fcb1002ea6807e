"""``pyromv-eval likelihood.<option>=...``: the likelihood estimator chosen on the command line
(importance sampling with the guide or the defensive proposal, adaptive K, AIS) reaches
``metrics.json`` with what it did; a bad choice is one line and exit status 2."""

from __future__ import annotations

import json
import os

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import pyromv.cli.eval as cli_eval
from tests.cli.test_errors import QUIET, _call, _one_line
from tests.cli.test_eval import _train_run_dir

#: a small evaluation: the likelihood only does real work
SMALL = ["max_rows=6", "joint_samples=10", "classifier.epochs=1", "classifier.hidden_dim=8", "fid=false",
         "clustering=false", "plots=false", "progress=false"]


@pytest.fixture(autouse=True)
def _fresh_hydra(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cwd = os.getcwd()
    yield
    GlobalHydra.instance().clear()
    assert os.getcwd() == cwd


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    _train_run_dir(path, "evaluate=false")
    return path


def _evaluate(run_dir, output, capfd, monkeypatch, *overrides):
    code, out, err = _call(cli_eval.main, [*QUIET, f"run_dir={run_dir}", f"output={output}", *SMALL, *overrides],
                           capfd, monkeypatch)
    assert code == 0, err
    return json.loads((run_dir / output / "metrics.json").read_text()), out


def test_eval_with_annealed_importance_sampling(run_dir, capfd, monkeypatch):
    pytest.importorskip("pyromv.metrics.ais")
    metrics, out = _evaluate(
        run_dir, "eval_ais", capfd, monkeypatch, "conditional=false", "likelihood.method=ais",
        "likelihood.num_steps=3", "likelihood.num_chains=4", "+likelihood.ais_options.warmup=2",
        "+likelihood.ais_options.leapfrog_steps=2",
    )
    ll = metrics["log_likelihood"]
    assert (ll["method"], ll["num_steps"], ll["num_chains"], ll["rows"]) == ("ais", 3, 4, 6)
    assert ll["proposal"] is None and 0.0 <= ll["passed_fraction"] <= 1.0 and ll["row_stderr_mean"] > 0
    assert metrics["config"]["likelihood"]["method"] == "ais"
    assert "AIS, T=3, 4 chains" in out


def test_eval_with_the_defensive_proposal_and_adaptive_k(run_dir, capfd, monkeypatch):
    metrics, out = _evaluate(
        run_dir, "eval_defensive", capfd, monkeypatch, "num_particles=30", "likelihood.proposal=defensive",
        "likelihood.defensive_weight=0.2", "likelihood.adaptive=true", "likelihood.max_particles=120",
    )
    ll = metrics["log_likelihood"]
    assert (ll["method"], ll["proposal"], ll["num_particles"]) == ("iwae", "defensive", 30)
    assert 30 <= ll["particles_mean"] <= ll["particles_max"] <= 120
    assert ll["passed_fraction"] is not None
    for m, cond in metrics["conditional_log_likelihood"].items():  # every estimate uses the options
        assert cond["proposal"] == "defensive" and cond["particles_max"] <= 120, m
    assert "defensive IS, adaptive K=30.." in out
    saved = OmegaConf.load(run_dir / "eval_defensive" / ".hydra" / "config.yaml")
    assert saved.likelihood.proposal == "defensive"


def test_eval_bad_likelihood_option_is_one_line(run_dir, capfd, monkeypatch):
    for override, words in [("likelihood.method=mcmc", ["likelihood.method", "mcmc"]),
                            ("likelihood.defensive_weight=1.5", ["defensive_weight", "(0, 1)"])]:
        extra = ["likelihood.proposal=defensive"] if "defensive" in override else []
        code, _, err = _call(cli_eval.main, [*QUIET, f"run_dir={run_dir}", "output=bad", override, *extra],
                             capfd, monkeypatch)
        line = _one_line(code, err, prog="pyromv-eval")
        assert all(w in line for w in words), line
