"""save_model / load_model: a folder of config.json + model.safetensors, loaded without pickle."""

import dataclasses
import json
import os
import pickle

import pytest
import safetensors.torch
import torch

from pyromv.data import Modality, make_batch
from pyromv.models import MVAE, MVAEConfig, build_model, load_model, save_model

B, D = 5, 3
MODS = [
    Modality(
        "img", (1, 8, 8), "continuous_bernoulli",
        encoder={"name": "conv", "kwargs": {"channels": [4, 8], "hidden_dim": 8}},
        decoder={"name": "conv", "kwargs": {"channels": [8, 4], "hidden_dim": 8}},
    ),
    Modality("vec", (4,), "normal", {"scale": 0.5, "learn_scale": True},
             encoder={"name": "mlp", "kwargs": {"hidden_dims": [8, 6]}},
             decoder={"name": "mlp", "kwargs": {"hidden_dims": [7], "activation": "tanh"}},
             rescale=2.0),
    Modality("cat", (2,), "categorical", {"num_categories": 3},
             encoder={"name": "linear", "kwargs": {}}, decoder={"name": "linear", "kwargs": {}}),
]
CFG = MVAEConfig(latent_dim=D, beta=0.5, objective="elbo", num_random_subsets=2, prior_scale=1.5)


def _model():
    torch.manual_seed(0)
    model = MVAE(MODS, CFG)
    # move every parameter and buffer away from its initial value, so a load that silently
    # rebuilt a fresh model would be caught
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    data = {"img": torch.rand(B, 1, 8, 8, generator=g), "vec": torch.randn(B, 4, generator=g),
            "cat": torch.randint(3, (B, 2), generator=g)}
    masks = {
        "img": torch.tensor([1, 0, 1, 1, 0]).bool(),
        "vec": torch.tensor([1, 1, 0, 1, 0]).bool(),
        "cat": torch.tensor([0, 1, 1, 1, 1]).bool(),
    }
    return make_batch(MODS, data, masks)


def test_round_trip_state_dict_and_outputs(tmp_path):
    model = _model()
    folder = save_model(model, tmp_path / "m")
    loaded = load_model(folder)
    assert type(loaded) is MVAE
    assert loaded.config == model.config
    assert loaded.modalities == model.modalities
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype, k
        assert torch.equal(sd[k], sd2[k]), k
    batch = _batch()
    q, q2 = model.encode(batch), loaded.encode(batch)
    assert torch.equal(q.loc, q2.loc) and torch.equal(q.scale, q2.scale)
    z = torch.randn(B, D)
    for name, d in model.decode(z).items():
        d2 = loaded.decode(z)[name]
        x = d.sample()
        assert torch.equal(d.log_prob(x), d2.log_prob(x)), name
    rec, rec2 = model.reconstruct(batch), loaded.reconstruct(batch)
    for name in rec:
        assert torch.equal(rec[name], rec2[name])
    torch.manual_seed(3)
    a = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(3)
    b = loaded.default_loss().differentiable_loss(loaded.model, loaded.guide, batch)
    assert torch.equal(a, b)


def test_config_json_is_plain_json(tmp_path):
    model = _model()
    folder = save_model(model, tmp_path / "m")
    text = (folder / "config.json").read_text()
    desc = json.loads(text)
    assert json.loads(json.dumps(desc)) == desc
    assert desc["model"] == "mvae"
    assert desc["config"] == dataclasses.asdict(CFG)
    assert isinstance(desc["format_version"], int)
    mods = desc["modalities"]
    assert [m["name"] for m in mods] == ["img", "vec", "cat"]
    assert mods[0]["shape"] == [1, 8, 8]
    assert mods[0]["likelihood"] == "continuous_bernoulli"
    assert mods[0]["encoder"] == {"name": "conv", "kwargs": {"channels": [4, 8], "hidden_dim": 8}}
    assert mods[0]["decoder"] == {"name": "conv", "kwargs": {"channels": [8, 4], "hidden_dim": 8}}
    assert mods[1]["likelihood_kwargs"] == {"scale": 0.5, "learn_scale": True}
    assert mods[1]["encoder"] == {"name": "mlp", "kwargs": {"hidden_dims": [8, 6]}}
    assert mods[1]["decoder"] == {
        "name": "mlp", "kwargs": {"hidden_dims": [7], "activation": "tanh"}
    }
    assert mods[1]["rescale"] == 2.0
    assert mods[2]["likelihood_kwargs"] == {"num_categories": 3}
    assert mods[2]["encoder"] == {"name": "linear", "kwargs": {}}
    # the description alone rebuilds the same architecture
    desc.pop("format_version")
    rebuilt = build_model(desc)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_weights_are_plain_safetensors(tmp_path):
    model = _model()
    folder = save_model(model, tmp_path / "m")
    tensors = safetensors.torch.load_file(str(folder / "model.safetensors"))
    sd = model.state_dict()
    assert set(tensors) == set(sd)
    for k, v in sd.items():
        assert torch.equal(tensors[k], v), k
    # buffers (the prior, fixed likelihood scales) travel too; the learned scale is a parameter
    assert "prior_scale" in tensors
    assert torch.equal(tensors["prior_scale"], torch.full((D,), 1.5))
    assert "likelihoods.vec.raw_scale" in dict(model.named_parameters())


def test_folder_holds_only_the_two_files_and_load_runs_no_pickle(tmp_path, monkeypatch):
    model = _model()
    folder = save_model(model, tmp_path / "m")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    # saving again over the folder leaves no temporary file behind
    save_model(model, folder)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a model must not unpickle anything")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = load_model(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_missing_file(tmp_path, missing):
    folder = save_model(_model(), tmp_path / "m")
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        load_model(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nowhere")


def _edit_config(folder, fn):
    path = folder / "config.json"
    desc = json.loads(path.read_text())
    fn(desc)
    path.write_text(json.dumps(desc))


def test_unknown_model_name(tmp_path):
    folder = save_model(_model(), tmp_path / "m")
    _edit_config(folder, lambda d: d.update(model="no_such_model"))
    with pytest.raises(ValueError, match="no_such_model"):
        load_model(folder)


def test_newer_format_version(tmp_path):
    folder = save_model(_model(), tmp_path / "m")
    _edit_config(folder, lambda d: d.update(format_version=d["format_version"] + 1))
    with pytest.raises(ValueError, match="format version"):
        load_model(folder)


def test_description_without_model_key(tmp_path):
    folder = save_model(_model(), tmp_path / "m")
    _edit_config(folder, lambda d: d.pop("model"))
    with pytest.raises(ValueError, match="model"):
        load_model(folder)


def test_weights_that_do_not_match_the_config(tmp_path):
    folder = save_model(_model(), tmp_path / "m")
    _edit_config(folder, lambda d: d["config"].update(latent_dim=D + 1))
    with pytest.raises(RuntimeError):
        load_model(folder)


def test_save_does_not_change_the_model(tmp_path):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_model(model, tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.training


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["truncated", "empty"])
def test_truncated_weights_are_a_clear_error_naming_the_file(tmp_path, keep):
    """A truncated ``model.safetensors`` (an interrupted copy) gives a ValueError naming it,
    not safetensors' raw deserialisation error."""
    save_model(_model(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="model.safetensors cannot be read as model weights"):
        load_model(tmp_path / "m")
