"""Every registered model through every path of the command line (issue 20).

``pyromv-train model=<m> sampler=<s>`` with the quick evaluation *on* (likelihoods, conditional
likelihoods, coherence, FID, clustering), then ``pyromv-eval`` on the run directory, for every
model of :func:`~pyromv.models.registered_models` and every sampler of
:func:`~pyromv.samplers.registered_samplers`: a model or sampler registered tomorrow is covered
the day it is registered.

Cost: each model is trained once (one epoch of PolyDigits, tiny networks) by ``run`` itself with
one sampler (the samplers take turns over the models) and the evaluation on; every other
sampler is then fitted to that trained model by :func:`~pyromv.samplers.job.fit_sampler_job`,
the very function ``run`` calls after training (the sampler step depends on nothing else of the
run). A failure of any (model, sampler) pair is therefore a failure of
``pyromv-train model=<m> sampler=<s>``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize
from omegaconf import OmegaConf

from pyromv.cli.eval import run as run_eval
from pyromv.cli.train import run as run_train
from pyromv.metrics import ClassifierConfig, EvalConfig
from pyromv.models import load_model, registered_models
from pyromv.samplers import load_sampler, registered_samplers
from pyromv.samplers.job import PICTURE_NAME, fit_sampler_job

MODELS = registered_models()
SAMPLERS = registered_samplers()

#: tiny options of the samplers we know; a sampler registered later runs with its defaults
TINY_SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {
    "gmm": {"n_components": 2},
    "maf": {"num_layers": 1, "hidden_dims": [8], "max_epochs": 2, "batch_size": 512},
    "iaf": {"num_layers": 1, "hidden_dims": [8], "max_epochs": 2, "batch_size": 512},
    "prior": {},
}

TINY = [
    "trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4", "data.hidden_dim=16", "plot_rows=2",
    # the quick evaluation, on, with every part enabled but on a tiny budget
    "evaluate=true", "evaluation.conditional=true", "evaluation.fid=true", "evaluation.clustering=true",
    "evaluation.num_particles=4", "evaluation.max_rows=8", "evaluation.joint_samples=20",
    "evaluation.plot_rows=2", "evaluation.classifier.epochs=1", "evaluation.classifier.hidden_dim=8",
]

SMALL_EVAL = EvalConfig(num_particles=4, max_rows=8, joint_samples=20, progress=False, plot_rows=2,
                        classifier=ClassifierConfig(epochs=1, hidden_dim=8))


def _config(*overrides):
    with initialize(version_base=None):
        return compose("train", overrides=list(overrides))


def _sampler_overrides(name: str) -> list[str]:
    return [f"sampler={name}"] + [
        f"+sampler_kwargs.{k}={json.dumps(v)}" for k, v in TINY_SAMPLER_OPTIONS.get(name, {}).items()
    ]


def _first_sampler(model: str) -> str:
    """The sampler ``run`` itself fits for ``model`` (the samplers take turns)."""
    return SAMPLERS[MODELS.index(model) % len(SAMPLERS)]


_RUNS: dict[str, tuple[Path, Any, dict[str, Any]]] = {}


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    return tmp_path_factory.mktemp("every_model")


def _trained(model: str, root: Path) -> tuple[Path, Any, dict[str, Any]]:
    """``pyromv-train model=<model> sampler=<first sampler>`` with the evaluation on, once per
    model (cached for the module), as Hydra leaves it (``.hydra/config.yaml``)."""
    if model not in _RUNS:
        path = root / model
        path.mkdir()
        cfg = _config(f"model={model}", *TINY, *_sampler_overrides(_first_sampler(model)))
        metrics = run_train(cfg, model, "polydigits", path)
        (path / ".hydra").mkdir()
        OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
        _RUNS[model] = (path, cfg, metrics)
    return _RUNS[model]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_evaluation(model, metrics: dict[str, Any]) -> None:
    """Every part of the quick evaluation ran and gave finite numbers (none was skipped)."""
    generated = model.generated_modalities
    # deterministic autoencoders (DCCAE, mAAE, mWAE) have no likelihood: skipped, and said so
    no_density = set() if getattr(model, "has_likelihood", True) else {"log_likelihood", "conditional_log_likelihood"}
    assert metrics["skipped"].keys() <= {"joint_coherence"} | no_density, metrics["skipped"]
    assert no_density <= metrics["skipped"].keys() and not no_density & metrics.keys()
    if len(generated) > 1:
        assert 0.0 <= metrics["joint_coherence"] <= 1.0
    assert set(metrics["classifier_accuracy"]) == set(model.names)
    if no_density:
        conditional = {}
    else:
        assert _finite(metrics["log_likelihood"]["mean"]) and metrics["log_likelihood"]["rows"] == 8
        conditional = metrics["conditional_log_likelihood"]
        assert set(conditional) == set(generated)
    for m, summary in conditional.items():
        assert _finite(summary["mean"]), m
        assert summary["targets"] == [m] and m not in summary["given"]
    assert metrics["coherence"]["by_size"] and all(
        0.0 <= v <= 1.0 for v in metrics["coherence"]["by_size"].values()
    )
    assert set(metrics["fid"]) == set(generated)  # PolyDigits: every modality is an image
    for m, values in metrics["fid"].items():
        assert values and all(_finite(v) and v >= 0 for v in values.values()), m
    clustering = metrics["clustering"]
    assert 0.0 <= clustering["nmi"] <= 1.0 and -1.0 <= clustering["ari"] <= 1.0


@pytest.mark.parametrize("model_name", MODELS)
def test_train_with_a_sampler_and_the_evaluation_on(run_root, model_name):
    path, _, metrics = _trained(model_name, run_root)
    model = load_model(path / "model")
    assert model.name == model_name
    assert math.isfinite(metrics["test_elbo"])
    assert metrics["sampler"]["name"] == _first_sampler(model_name)
    assert _finite(metrics["sampler"]["test_log_density"]["log_density"])
    _check_evaluation(model, metrics["evaluation"])
    saved = json.loads((path / "eval" / "metrics.json").read_text())
    if "log_likelihood" in saved:
        assert saved["log_likelihood"]["mean"] == pytest.approx(metrics["evaluation"]["log_likelihood"]["mean"])
    else:
        assert saved["skipped"]["log_likelihood"] == metrics["evaluation"]["skipped"]["log_likelihood"]
    for name in ("coherence.png", "latent_pca.png", "samples.png"):
        assert (path / "eval" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model_name", MODELS)
def test_pyromv_eval_on_the_trained_run(run_root, model_name):
    path, _, _ = _trained(model_name, run_root)
    metrics = run_eval(path, SMALL_EVAL, path / "cli_eval")
    assert metrics["model"] == model_name and metrics["data"] == "polydigits"
    _check_evaluation(load_model(path / "model"), metrics)
    saved = json.loads((path / "cli_eval" / "metrics.json").read_text())
    assert saved["run_dir"] == str(path) and saved["model"] == model_name


@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize("model_name", MODELS)
def test_every_sampler_on_every_trained_model(run_root, model_name, sampler_name):
    """The sampler step of ``pyromv-train model=<m> sampler=<s>``: the function ``run`` calls
    after training, on the trained (and reloaded) model, with the run's own data."""
    path, cfg, _ = _trained(model_name, run_root)
    model = load_model(path / "model")
    source = OmegaConf.to_object(cfg.data)
    train, test = source.load("train"), source.load("test")
    out = path / f"sampler_{sampler_name}"
    out.mkdir()
    summary = fit_sampler_job(
        sampler_name, TINY_SAMPLER_OPTIONS.get(sampler_name, {}), model, train, test, out, n_plot=2,
        progress=False,
    )
    assert summary["name"] == sampler_name
    for key in ("test_log_density", "prior_test_log_density"):
        assert _finite(summary[key]["log_density"]) and summary[key]["rows"] == len(test)
    assert (out / PICTURE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sampler = load_sampler(out / "sampler", model=model)
    generated = sampler.generate(3)
    assert len(generated) == 3
    for m in model.generated_modalities:
        assert generated.data[m].isfinite().all(), m
