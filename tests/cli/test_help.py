"""``--help`` of the commands: every option with a sentence taken from its dataclass's docstring
(so the help cannot go stale), the chosen model's own options, and the one-line answer to a bare
run directory given to ``pyromv-eval``."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra

import pyromv.cli.eval as cli_eval
import pyromv.cli.train as cli_train
from pyromv.cli.config import DATA_SOURCES, TrainJob
from pyromv.cli.help import UNDOCUMENTED, eval_help, first_sentence, option_lines, train_help
from pyromv.metrics.evaluate import EvalConfig
from pyromv.models import get_model_class, registered_models
from pyromv.training import TrainerConfig


def _fields(obj, prefix=""):
    """Every leaf option of a dataclass instance (nested dataclasses dotted), walked directly."""
    for f in dataclasses.fields(obj):
        if f.name in ("defaults", "hydra"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def _train_options(model="mvae", data="polydigits"):
    """The options of pyromv-train for a model and a data set, from the classes themselves."""
    yield from (n for n in _fields(TrainJob()) if n not in ("model", "data", "trainer"))
    yield from _fields(TrainerConfig(), "trainer.")
    yield from _fields(get_model_class(model).config_class(), "model.")
    yield from _fields(DATA_SOURCES[data](), "data.")


def _documented(lines):
    return {left.split("=", 1)[0]: right for left, right in lines}


@pytest.fixture
def hydra_compose():
    GlobalHydra.instance().clear()
    with initialize(version_base=None):
        yield lambda name, *overrides: compose(name, overrides=list(overrides))
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("model", registered_models())
def test_every_option_of_every_model_has_a_sentence(hydra_compose, model):
    shown = _documented(option_lines(hydra_compose("train", f"model={model}")))
    for name in _train_options(model=model):
        assert name in shown, name
        assert shown[name] != UNDOCUMENTED, name


@pytest.mark.parametrize("data", sorted(DATA_SOURCES))
def test_every_option_of_every_data_source_has_a_sentence(hydra_compose, data):
    shown = _documented(option_lines(hydra_compose("train", f"data={data}")))
    for name in _train_options(data=data):
        assert name in shown and shown[name] != UNDOCUMENTED, name


def test_every_eval_option_has_a_sentence(hydra_compose):
    shown = _documented(option_lines(hydra_compose("eval")))
    expected = list(_fields(EvalConfig())) + ["run_dir", "output", "push_to_hub", "hub_private", "hub_license"]
    assert sorted(shown) == sorted(expected)
    assert all(v != UNDOCUMENTED for v in shown.values())
    assert "run_dir=???" in eval_help(hydra_compose("eval"))


def test_help_shows_the_chosen_model_and_data(hydra_compose):
    text = train_help(hydra_compose("train", "model=mmvae", "model.latent_dim=7"), {"model": "mmvae"})
    assert "model.latent_dim=7" in text and "model=mmvae" in text
    assert "model.objective=" in text  # MMVAE's own option
    assert "mvae" in text.split("== Groups")[1]  # the other models are listed as choices


def test_first_sentence_skips_abbreviations():
    assert first_sentence("Clusters (``x``, e.g. CMVAE) also. Second one.") == "Clusters ('x', e.g. CMVAE) also."
    assert first_sentence(":class:`~pyromv.a.B` of 'k'.\n  More.") == "B of 'k'."


def _call(main, argv, capfd, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = 0 if exit_info.code is None else exit_info.code
    finally:
        GlobalHydra.instance().clear()
    return (code, *capfd.readouterr())


def test_train_help_on_the_command_line(capfd, monkeypatch):
    code, out, _ = _call(cli_train.main, ["model=jmvae", "--help"], capfd, monkeypatch)
    assert code == 0
    assert out.startswith("pyromv-train: train a multimodal VAE")
    assert "  trainer.epochs=100" in out and "Maximum number of passes over the training set." in out
    assert "  model.latent_dim=" in out and "model.* and data.* are those of model=jmvae" in out
    assert "--hydra-help" in out  # Hydra's own flags follow
    assert UNDOCUMENTED not in out


def test_eval_help_on_the_command_line(capfd, monkeypatch):
    code, out, _ = _call(cli_eval.main, ["--help"], capfd, monkeypatch)
    assert code == 0 and out.startswith("pyromv-eval: evaluate a run directory")
    assert "  run_dir=???" in out and "  push_to_hub=null" in out and UNDOCUMENTED not in out


@pytest.mark.parametrize(("argv", "call"), [
    (["some/run/dir"], "pyromv-eval run_dir=some/run/dir"),
    (["some/run/dir", "num_particles=5"], "pyromv-eval run_dir=some/run/dir num_particles=5"),
])
def test_a_bare_run_directory_says_how_to_call(capfd, monkeypatch, argv, call):
    code, _, err = _call(cli_eval.main, argv, capfd, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("pyromv-eval: error: ") and lines[0].endswith(call)


def test_a_bare_argument_besides_run_dir_is_refused(capfd, monkeypatch):
    code, _, err = _call(cli_eval.main, ["run_dir=a", "b"], capfd, monkeypatch)
    assert code == 2 and "unexpected argument 'b'" in err
