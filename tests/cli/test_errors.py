"""The command line's errors (issue 16, item 5): a user error is one line on stderr naming the
option and what was expected, with exit status 2; the traceback only with ``HYDRA_FULL_ERROR=1``
or ``--debug``; a bug keeps its traceback (exit status 1).

Most cases call the console scripts' ``main`` in this process with ``sys.argv`` patched (a
fraction of a second each); two run the installed entry points of ``pyproject.toml`` in a
subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

import pyromv.cli.eval as cli_eval
import pyromv.cli.train as cli_train

ROOT = Path(__file__).resolve().parents[2]
#: Hydra writes nothing but the run directory's config; no logging set-up
QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
TINY = ["trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4", "data.hidden_dim=16", "evaluate=false"]


@pytest.fixture(autouse=True)
def _fresh_hydra(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cwd = os.getcwd()
    yield
    GlobalHydra.instance().clear()
    assert os.getcwd() == cwd


def _call(main, argv, capfd, monkeypatch) -> tuple[int, str, str]:
    """Run ``main`` as the console script with ``argv``; its exit status, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = 0 if exit_info.code is None else exit_info.code
    out, err = capfd.readouterr()
    return code, out, err


def train(tmp_path, capfd, monkeypatch, *overrides) -> tuple[int, str, str]:
    argv = [f"hydra.run.dir={tmp_path / 'run'}", *QUIET, *TINY, *overrides]
    return _call(cli_train.main, argv, capfd, monkeypatch)


def evaluate(capfd, monkeypatch, *overrides) -> tuple[int, str, str]:
    return _call(cli_eval.main, [*QUIET, *overrides], capfd, monkeypatch)


def _one_line(code: int, err: str, prog: str = "pyromv-train") -> str:
    """The single line of a user error, after checking the exit status and the line count."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- pyromv-train, bad values


def test_missing_rate_out_of_range_is_one_line_naming_the_option(tmp_path, capfd, monkeypatch):
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "missing_rate=1.5")[::2])
    assert "missing_rate" in line and "[0, 1]" in line and "1.5" in line
    assert not (tmp_path / "run" / "checkpoint").exists()  # refused before anything was trained


def test_a_value_of_the_wrong_type_names_the_option_and_the_type(tmp_path, capfd, monkeypatch):
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "missing_rate=abc")[::2])
    assert "missing_rate=abc" in line and "Float" in line
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "trainer.epochs=many")[::2])
    assert "trainer.epochs=many" in line and "Integer" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.latent_dim=0", ["model=mvae", "latent_dim", ">= 1", "0"]),  # the model's config refuses it
        ("trainer.lr=-1", ["trainer", "learning rate", "-1"]),  # torch's optimiser refuses it
        ("data.test_fraction=2", ["data=polydigits", "test_fraction", "(0, 1)"]),  # the data source refuses it
        ("evaluation.embedding=umap", ["evaluation", "embedding", "'pca' or 'tsne'", "umap"]),
        ("missingness=mnar", ["missingness", "self_masking", "mnar"]),
        ("feature_missing_pattern=blocks", ["feature_missing_pattern", "mcar or self_masking", "blocks"]),
        ("missingness=self_masking", ["missingness=self_masking", "misses single entries", "feature_missing_rate"]),
        ("evaluate=true", None),  # a valid option: no error (checked below, trains one tiny epoch)
    ],
)
def test_a_refused_option_value_is_one_line_naming_the_group(tmp_path, capfd, monkeypatch, override, expected):
    code, out, err = train(tmp_path, capfd, monkeypatch, override, "evaluate=true",
                           "evaluation.num_particles=2", "evaluation.max_rows=4", "evaluation.joint_samples=4",
                           "evaluation.classifier.epochs=1", "evaluation.plot_rows=2", "plot_rows=2")
    if expected is None:
        assert code == 0, err
        assert "test ELBO:" in out
        return
    line = _one_line(code, err)
    for part in expected:
        assert part in line, line


def test_a_model_that_cannot_model_missingness_is_one_line(tmp_path, capfd, monkeypatch):
    code, out, err = train(tmp_path, capfd, monkeypatch, "model=cvae", "feature_missing_rate=0.3",
                           "missingness=self_masking")
    line = _one_line(code, err)
    for part in ("model=cvae", "does not model missingness", "ignorable"):
        assert part in line, line


# --------------------------------------------------------------------------- unknown names and keys


def test_unknown_likelihood_names_the_option_and_the_registered_ones(tmp_path, capfd, monkeypatch):
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "data.likelihood=nosuch")[::2])
    assert "data.likelihood" in line and "'nosuch'" in line
    assert "bernoulli" in line and "laplace" in line


def test_unknown_model_lists_the_registered_models(tmp_path, capfd, monkeypatch):
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "model=nosuch")[::2])
    assert "model=nosuch" in line and "mvae" in line and "mopoe" in line


def test_unknown_data_source_lists_the_sources(tmp_path, capfd, monkeypatch):
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "data=nosuch")[::2])
    assert "data=nosuch" in line and "polydigits" in line


def test_unknown_key_and_unparsable_override(tmp_path, capfd, monkeypatch):
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "trainer.nosuch=1")[::2])
    assert "trainer.nosuch" in line and "TrainerConfig" in line
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "a=b=c")[::2])
    assert "'a=b=c'" in line


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sampler=nosuch"], ["sampler=nosuch", "gmm", "maf"]),
        (["sampler=gmm", "+sampler_kwargs.n_components=0"], ["sampler=gmm", "n_components", "positive", "0"]),
        (["sampler=gmm", "+sampler_kwargs.nosuch=3"], ["sampler=gmm", "nosuch"]),
        (["+sampler_kwargs.n_components=3"], ["sampler_kwargs", "sampler=none", "gmm"]),
    ],
)
def test_bad_sampler_options_are_refused_before_training(tmp_path, capfd, monkeypatch, overrides, expected):
    line = _one_line(*train(tmp_path, capfd, monkeypatch, *overrides)[::2])
    for part in expected:
        assert part in line, line
    assert not (tmp_path / "run" / "checkpoint").exists()


# --------------------------------------------------------------------------- missing files


def test_missing_data_files_name_the_folder_and_the_option(tmp_path, capfd, monkeypatch):
    empty = tmp_path / "nothing_here"
    line = _one_line(*train(tmp_path, capfd, monkeypatch, "data=polymnist", f"data.root={empty}")[::2])
    assert str(empty) in line and "not found" in line and "data.root" in line


# --------------------------------------------------------------------------- pyromv-eval


def test_eval_without_run_dir(capfd, monkeypatch):
    line = _one_line(*evaluate(capfd, monkeypatch)[::2], prog="pyromv-eval")
    assert "run_dir" in line and "pyromv-train" in line


def test_eval_of_a_directory_that_does_not_exist_writes_nothing(tmp_path, capfd, monkeypatch):
    missing = tmp_path / "no_such_run"
    line = _one_line(*evaluate(capfd, monkeypatch, f"run_dir={missing}")[::2], prog="pyromv-eval")
    assert f"run_dir={missing}" in line and "no such directory" in line
    assert not missing.exists()  # Hydra did not create run_dir/eval


def test_eval_of_a_directory_that_is_not_a_run(tmp_path, capfd, monkeypatch):
    line = _one_line(*evaluate(capfd, monkeypatch, f"run_dir={tmp_path}")[::2], prog="pyromv-eval")
    assert "model" in line and "pyromv-train" in line
    assert not (tmp_path / "eval").exists()


def test_eval_bad_option_value(tmp_path, capfd, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("{}\n")
    line = _one_line(*evaluate(capfd, monkeypatch, f"run_dir={tmp_path}", "num_particles=0")[::2],
                     prog="pyromv-eval")
    assert "num_particles" in line and "positive" in line and "0" in line
    line = _one_line(*evaluate(capfd, monkeypatch, f"run_dir={tmp_path}", "embedding=umap")[::2],
                     prog="pyromv-eval")
    assert "embedding" in line and "umap" in line


# --------------------------------------------------------------------------- the traceback when asked


def test_hydra_full_error_shows_the_traceback(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    code, _, err = train(tmp_path, capfd, monkeypatch, "missing_rate=1.5")
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert "check_options" in err  # the frame that refused the value
    assert err.strip().splitlines()[-1].startswith("pyromv-train: error: missing_rate")
    assert os.environ["HYDRA_FULL_ERROR"] == "1"  # left as it was


def test_debug_switch_shows_the_traceback_and_is_not_passed_to_hydra(tmp_path, capfd, monkeypatch):
    code, _, err = train(tmp_path, capfd, monkeypatch, "--debug", "data.likelihood=nosuch")
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("pyromv-train: error: data.likelihood")
    assert "HYDRA_FULL_ERROR" not in os.environ  # set only while Hydra ran
    code, _, err = train(tmp_path, capfd, monkeypatch, "--debug", "model=nosuch")  # an error of Hydra's own
    assert code == 2 and "Traceback (most recent call last)" in err


# --------------------------------------------------------------------------- bugs keep their traceback


def _implicit_value_error(*args):
    first, second = [1]  # noqa: F841 - a bug: not a deliberate refusal of the user's input


def _runtime_error(*args):
    raise RuntimeError("something broke inside")


@pytest.mark.parametrize("bug", [_implicit_value_error, _runtime_error])
def test_an_internal_error_keeps_its_traceback(tmp_path, capfd, monkeypatch, bug):
    monkeypatch.setattr(cli_train, "run", bug)
    code, _, err = train(tmp_path, capfd, monkeypatch)
    assert code == 1, err
    assert "Traceback (most recent call last)" in err
    assert bug.__name__ in err  # the frame of the bug is shown
    assert "internal error" in err


def test_a_failure_pyromv_detects_is_one_line_with_status_1(tmp_path, capfd, monkeypatch):
    """Not the user's option and not a bug: an error class of pyromv's own (here a non-finite
    loss) is reported in one line, exit status 1."""
    from pyromv.training import NonFiniteLossError

    def diverges(*args):
        raise NonFiniteLossError("non-finite loss at epoch 3: lower trainer.lr or set trainer.grad_clip")

    monkeypatch.setattr(cli_train, "run", diverges)
    code, _, err = train(tmp_path, capfd, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0] == "pyromv-train: error: non-finite loss at epoch 3: lower trainer.lr or set trainer.grad_clip"


# --------------------------------------------------------------------------- the installed entry points


def _console_scripts() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
    assert section is not None
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section.group(1), re.M))


def _bad_command(script: str, tmp_path: Path) -> list[str]:
    return {
        "pyromv-train": ["missing_rate=1.5", f"hydra.run.dir={tmp_path / 'run'}"],
        "pyromv-eval": [f"run_dir={tmp_path / 'no_such_run'}"],
        "pyromv-impute": [f"run_dir={tmp_path / 'no_such_run'}", f"hydra.run.dir={tmp_path / 'run'}"],
        "pyromv-prepare": ["dtype=int8", f"out={tmp_path / 'prepared'}", f"hydra.run.dir={tmp_path / 'run'}"],
    }[script]


@pytest.mark.parametrize("script", sorted(_console_scripts()))
def test_every_console_script_in_a_subprocess(tmp_path, script):
    """Every ``[project.scripts]`` entry, run as the installed script runs it: one line, status 2."""
    module, function = _console_scripts()[script].split(":")
    code = f"import sys; sys.argv[0] = {script!r}; from {module} import {function}; {function}()"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run(
        [sys.executable, "-c", code, *_bad_command(script, tmp_path)],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), out.stderr
