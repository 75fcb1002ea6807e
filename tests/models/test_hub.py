"""Sharing on the Hugging Face Hub, offline: the folder and its model card, loading from a local
clone and from the huggingface_hub cache layout, a clear error offline without a cached copy,
and the upload calls (mocked)."""

from pathlib import Path

import pytest
import torch
import yaml

from pyromv.data import Modality
from pyromv.hub import model_card, parse_hub_path, push_to_hub, save_for_hub
from pyromv.models import MMVAE, MMVAEConfig, load_model

MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [Modality("img", (1, 4, 4), "bernoulli", encoder=MLP, decoder=MLP),
        Modality("tag", (1,), "categorical", {"num_categories": 3}, encoder=MLP, decoder=MLP)]
METRICS = {  # the layout of pyromv-train's metrics.json with its evaluation
    "test_elbo": -12.5,
    "evaluation": {
        "log_likelihood": {"mean": -11.25, "stderr": 0.5, "num_particles": 100, "rows": 200},
        "coherence": {"by_size": {"1": 0.75}},
        "joint_coherence": 0.625,
        "classifier_accuracy": {"img": 0.875},
    },
}
REV = "0123456789abcdef0123456789abcdef01234567"


def _model():
    torch.manual_seed(0)
    return MMVAE(MODS, MMVAEConfig(latent_dim=2))


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _card(folder):
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_save_for_hub_writes_the_model_and_its_card(tmp_path):
    model = _model()
    folder = save_for_hub(model, tmp_path / "repo", repo_id="me/tiny", metrics=METRICS, license="apache-2.0",
                          data={"name": "polydigits", "missing_rate": 0.3}, command="pyromv-train model=mmvae")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta, body = _card(folder)
    assert meta["library_name"] == "pyromv" and meta["license"] == "apache-2.0"
    assert {"pyromv", "mmvae"} <= set(meta["tags"])
    assert "| test ELBO (nats per row) | -12.5 |" in body
    assert "| test log-likelihood (K=100, 200 rows) | -11.25 ± 0.5 |" in body
    assert "| joint coherence | 0.625 |" in body and "| classifier accuracy img | 0.875 |" in body
    assert "| img | (1, 4, 4) | bernoulli | mlp | mlp |" in body
    assert "- missing_rate: `0.3`" in body and "pyromv-train model=mmvae" in body
    assert 'load_model("hf://me/tiny")' in body
    assert _same(load_model(folder), model)


def test_card_reads_a_metrics_file_and_leaves_out_what_is_not_given(tmp_path):
    import json

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(METRICS["evaluation"]))
    text = model_card(_model(), metrics=path)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert "license" not in meta and "## Training" not in text and "## Data" not in text
    assert "| test log-likelihood (K=100, 200 rows) | -11.25 ± 0.5 |" in text


def test_load_from_a_local_clone_of_a_hub_repository(tmp_path):
    model = _model()
    clone = tmp_path / "clone"
    save_for_hub(model, clone)
    (clone / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    assert _same(load_model(str(clone)), model)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache in tmp_path, offline."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_load_hf_path_from_the_hub_cache_offline(hub_cache):
    model = _model()
    repo = hub_cache / "models--owner--tiny"
    save_for_hub(model, repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    assert _same(load_model("hf://owner/tiny"), model)
    assert _same(load_model(f"hf://owner/tiny@{REV}"), model)


def test_offline_without_a_cached_copy_is_a_clear_error(hub_cache):
    with pytest.raises(FileNotFoundError, match="hf://owner/absent is not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        load_model("hf://owner/absent")


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {p.name: p.read_bytes() for p in sorted(Path(folder_path).iterdir())}
        calls["upload"] = (repo_id, files, kwargs)
        return "commit-info"

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    model = _model()
    assert push_to_hub(model, "me/tiny", metrics=METRICS, private=True, token="hf_x") == "commit-info"
    assert calls["create"] == ("me/tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    repo_id, files, kwargs = calls["upload"]
    assert repo_id == "me/tiny" and kwargs["repo_type"] == "model"
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert b'load_model("hf://me/tiny")' in files["README.md"]
    with pytest.raises(ValueError, match="Repo id must use"):
        push_to_hub(model, "not a repo id")


@pytest.mark.parametrize("bad", ["hf://owner", "hf://owner/name/extra", "hf://owner/name@", "hf:///name"])
def test_bad_hub_paths_are_refused(bad):
    with pytest.raises(ValueError, match="expected hf://owner/name"):
        parse_hub_path(bad)
    assert parse_hub_path("hf://a/b@v1") == ("a/b", "v1")


def test_missing_hub_extra_names_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name == "huggingface_hub" or name.startswith("huggingface_hub."):
            raise ImportError("No module named 'huggingface_hub'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(ImportError, match=r"pip install 'pyromv\[hub\]'"):
        load_model("hf://owner/tiny")
