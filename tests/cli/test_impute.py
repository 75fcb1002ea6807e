"""``pyromv-impute`` on a tiny training run: arrays written, held-out entries scored, bad input refused."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pyromv.cli.impute import ImputeJob
from pyromv.cli.impute import run as run_impute
from pyromv.data import Diabetes
from pyromv.models import MVAE, MVAEConfig, save_model
from pyromv.training import Trainer, TrainerConfig

# the fixture's model is trained on complete data: its encoders do not see masks, and imputing the
# held-out entries says so (the warning itself is tested in tests/nn/test_mask_aware.py)
pytestmark = pytest.mark.filterwarnings("ignore:modality .* the data miss single entries:UserWarning")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """What ``pyromv-train data=diabetes model=mvae`` leaves behind, on tiny settings: ``model/``,
    ``.hydra/config.yaml`` (the data source's options) and ``metrics.json`` (its name)."""
    path = tmp_path_factory.mktemp("run")
    source = Diabetes(hidden_dim=8)
    torch.manual_seed(0)
    model = MVAE(source.modalities(), MVAEConfig(latent_dim=2, objective="iwae", num_particles=5))
    Trainer(model, config=TrainerConfig(epochs=2, progress=False, val_fraction=0.0)).fit(source.load("train"))
    save_model(model, path / "model")
    (path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"data": {"hidden_dim": 8}}), path / ".hydra" / "config.yaml")
    (path / "metrics.json").write_text(json.dumps({"data": "diabetes"}))
    return path


def _job(run_dir, **kw):
    kw.setdefault("num_samples", 30)
    kw.setdefault("progress", False)
    return ImputeJob(run_dir=str(run_dir), **kw)


def test_writes_arrays_and_scores_held_out_entries(run_dir, tmp_path):
    out = tmp_path / "imp"
    summary = run_impute(_job(run_dir, holdout=0.3, num_imputations=3), out)
    for m in ("clinical", "serum"):
        with np.load(out / f"{m}.npz") as f:
            assert f["imputed"].shape == f["std"].shape == f["missing"].shape
            assert f["imputations"].shape == (3,) + f["imputed"].shape
            assert np.isfinite(f["imputed"]).all()
            assert (f["std"][~f["missing"]] == 0).all()
    with np.load(out / "rows.npz") as f:
        assert f["ess"].shape == (summary["rows"],)
    saved = json.loads((out / "summary.json").read_text())
    serum = saved["errors"]["serum"]["continuous"]
    assert serum["pyromv"]["entries"] == serum["column_mean"]["entries"] > 0
    # the categorical sex column of clinical is scored by accuracy
    assert 0.0 <= saved["errors"]["clinical"]["categorical"]["pyromv_accuracy"] <= 1.0
    assert "| serum |" in (out / "errors.md").read_text()


def test_npz_input_with_nan(run_dir, tmp_path):
    from pyromv.cli.eval import load_source

    source, _ = load_source(run_dir)
    test = source.load("test")
    clinical = test.data["clinical"].numpy().copy()
    serum = test.data["serum"].numpy().copy()
    serum[:3] = np.nan  # whole modality missing in 3 rows
    serum[5, 1] = np.nan  # one entry
    path = tmp_path / "x.npz"
    np.savez(path, clinical=clinical, serum=serum)
    out = tmp_path / "imp"
    summary = run_impute(_job(run_dir, data=str(path)), out)
    assert summary["imputed_entries"] == {"clinical": 0, "serum": 3 * 6 + 1}
    with np.load(out / "serum.npz") as f:
        assert np.isfinite(f["imputed"]).all()
        np.testing.assert_array_equal(f["imputed"][6:], serum[6:])
    np.savez(path, clinical=clinical, blood=serum)
    with pytest.raises(ValueError, match="unknown arrays"):
        run_impute(_job(run_dir, data=str(path)), out)
    np.savez(path, clinical=clinical)
    with pytest.raises(ValueError, match="serum"):
        run_impute(_job(run_dir, data=str(path)), out)


@pytest.mark.parametrize("option, value", [("holdout", 1.0), ("num_samples", 0), ("num_imputations", -1)])
def test_bad_options(run_dir, tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        run_impute(_job(run_dir, **{option: value}), tmp_path)


def test_command_line(run_dir, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "pyromv.cli.impute", f"run_dir={run_dir}", f"out={out}", "num_samples=10",
         "holdout=0.2", "progress=false", "max_rows=20"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "serum.npz").is_file() and "RMSE" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "pyromv.cli.impute", f"run_dir={tmp_path / 'nope'}"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "run_dir" in bad.stderr and bad.stderr.count("\n") == 1
