"""The README's commands and CI's script must agree (CI runs what a new user runs)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = ROOT.joinpath("README.md").read_text()
    ci = ROOT.joinpath(".ci", "run").read_text()
    test_command = 'pip install -e ".[dev]" && pytest'
    assert f"python -m venv .venv && . .venv/bin/activate && {test_command}" in readme
    assert test_command in ci.splitlines()


def test_readme_main_job_command():
    readme = ROOT.joinpath("README.md").read_text()
    assert "python -m venv .venv && . .venv/bin/activate && pip install -e . && pyromv-train" in readme


def test_the_code_is_ruff_clean():
    """The style standard is checked where CI runs: ``ruff check`` (in the ``test`` extra)."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    done = subprocess.run([ruff, "check", "pyromv", "tests", "benchmarks", "examples"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
