"""``pyromv-eval ... push_to_hub=owner/name``: the card of a run directory (its data, the command
that trained it, its metrics) and the upload (mocked); a bad repository id fails before the
evaluation."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import pyromv.cli.eval as cli_eval
from pyromv.cli.errors import UsageError
from pyromv.cli.sharing import check_push, push_run
from pyromv.data import Modality
from pyromv.models import MVAE, MVAEConfig, save_model

hub = pytest.importorskip("huggingface_hub")
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [4]}}


def _run_dir(path: Path) -> Path:
    """What pyromv-train leaves: model/, metrics.json and Hydra's .hydra/ files."""
    torch.manual_seed(0)
    save_model(MVAE([Modality("m0", (3,), "normal", encoder=MLP, decoder=MLP)], MVAEConfig(latent_dim=2)),
               path / "model")
    (path / "metrics.json").write_text(json.dumps({"test_elbo": -7.5, "data": "polydigits"}))
    (path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"data": {"num_modalities": 3, "seed": 0}, "missing_rate": 0.3}),
                   path / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(["model=mvae", "trainer.epochs=5"]), path / ".hydra" / "overrides.yaml")
    return path


def test_push_run_uploads_the_model_with_the_run_card(tmp_path, monkeypatch):
    uploaded = {}
    monkeypatch.setattr(hub.HfApi, "create_repo", lambda self, repo_id, **kw: uploaded.update(create=(repo_id, kw)))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        uploaded["files"] = {p.name: p.read_text(errors="replace") for p in Path(folder_path).iterdir()}
        return "ok"

    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    evaluation = {"log_likelihood": {"mean": -6.5, "stderr": 0.25, "num_particles": 30, "rows": 20}}
    assert push_run(_run_dir(tmp_path), evaluation, "polydigits", "me/run", license="mit") == "ok"
    assert uploaded["create"] == ("me/run", {"repo_type": "model", "private": False, "exist_ok": True})
    card = uploaded["files"]["README.md"]
    assert yaml.safe_load(card.split("---\n")[1])["license"] == "mit"
    assert "pyromv-train model=mvae trainer.epochs=5" in card
    assert "- name: `\"polydigits\"`" in card and "- training set missing rate: `0.3`" in card
    assert "| test ELBO (nats per row) | -7.5 |" in card and "-6.5 ± 0.25" in card
    assert sorted(uploaded["files"]) == ["README.md", "config.json", "model.safetensors"]


@pytest.mark.parametrize("bad", ["me", "me/run/x", "me/bad name"])
def test_check_push_refuses_a_bad_repo_id(bad):
    with pytest.raises(UsageError, match=f"push_to_hub={bad}: not a Hub repository id owner/name"):
        check_push(bad)


def test_eval_refuses_a_bad_repo_id_before_evaluating(tmp_path, capfd, monkeypatch):
    run_dir = _run_dir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pyromv-eval", f"run_dir={run_dir}", "push_to_hub=not-a-repo",
                                      "hydra/job_logging=none", "hydra/hydra_logging=none"])
    with pytest.raises(SystemExit) as exit_info:
        cli_eval.main()
    GlobalHydra.instance().clear()
    assert exit_info.value.code == 2
    assert "push_to_hub=not-a-repo: not a Hub repository id" in capfd.readouterr().err
    assert not (run_dir / "eval" / "metrics.json").exists()
