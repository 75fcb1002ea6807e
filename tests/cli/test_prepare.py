"""``pyromv-prepare``: a data source written once as a prepared folder, then read lazily."""

import os
import subprocess
import sys

import torch

from pyromv.data import PolyDigits, mcar
from pyromv.data.prepared import open_prepared, read_index


def _prepare(tmp_path, *options):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    code = "import sys; sys.argv[0] = 'pyromv-prepare'; from pyromv.cli.prepare import main; main()"
    return subprocess.run([sys.executable, "-c", code, *options, f"hydra.run.dir={tmp_path / 'hydra'}",
                           "progress=false"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def test_prepare_writes_the_source_with_its_missingness(tmp_path):
    out = tmp_path / "digits"
    done = _prepare(tmp_path, "data=polydigits", f"out={out}", "dtype=uint8", "missing_rate=0.3", "missing_seed=4")
    assert done.returncode == 0, done.stderr
    assert "data=prepared" in done.stdout
    index = read_index(out)
    assert index["source"]["name"] == "polydigits" and index["source"]["config"]["num_modalities"] == 3
    expected = mcar(PolyDigits().load("train"), 0.3, seed=4)  # what pyromv-train's missing_rate draws
    got = open_prepared(out, "train")
    for m in expected.names:
        assert torch.equal(got.obs_mask[m], expected.obs_mask[m])
        assert got.stored[m].dtype == torch.uint8
        assert float((got.data[m] - expected.data[m]).abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.equal(got.labels, expected.labels)
    assert len(open_prepared(out, "test")) == len(PolyDigits().load("test"))
    # an existing folder is refused in one line, exit status 2
    again = _prepare(tmp_path, "data=polydigits", f"out={out}")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "overwrite=true" in again.stderr
