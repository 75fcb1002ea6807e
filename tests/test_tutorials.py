"""The tutorial notebooks run top to bottom, and the committed copies carry their outputs.

Each notebook in ``docs/tutorials/`` is executed from a fresh kernel in a temporary working
directory (what it writes stays there) with ``nbclient``; a cell that raises fails the test. The
committed notebook must have been executed (every code cell has outputs or an execution count)
and hold no error output, so that it reads well on GitHub and in the documentation site.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the tutorials need the docs extra: pip install -e '.[docs]'")
nbclient = pytest.importorskip("nbclient", reason="the tutorials need the docs extra: pip install -e '.[docs]'")

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "docs" / "tutorials").glob("*.ipynb"))


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 7


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_committed_notebook_is_executed_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a tutorial without code"
    assert all(c.execution_count is not None for c in code), "commit the notebook executed"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("ename") if errors else None
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "start with a title"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # the kernel inherits this environment
