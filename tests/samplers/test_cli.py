"""``pyromv-train sampler=...``: the sampler is fitted after training, saved and pictured."""

import json

import pytest
import torch
from hydra import compose, initialize
from omegaconf import OmegaConf

from pyromv.cli.train import run
from pyromv.models import load_model
from pyromv.samplers import GaussianMixtureSampler, encode_latents, load_sampler

TINY = ["trainer.epochs=1", "trainer.progress=false", "model.latent_dim=3", "data.hidden_dim=16"]


def _config(*overrides):
    with initialize(version_base=None):
        return compose("train", overrides=list(overrides))


def test_default_is_no_sampler():
    cfg = _config()
    assert cfg.sampler == "none" and dict(cfg.sampler_kwargs) == {}


@pytest.mark.slow
def test_run_fits_saves_and_pictures_the_sampler(tmp_path):
    cfg = _config(*TINY, "sampler=gmm", "+sampler_kwargs.n_components=3")
    metrics = run(cfg, "mvae", "polydigits", tmp_path)
    summary = json.loads((tmp_path / "metrics.json").read_text())["sampler"]
    assert summary["name"] == "gmm" and summary["options"]["n_components"] == 3
    assert summary["fit_info"]["rows"] == metrics["train_rows"]  # partial rows included
    assert (tmp_path / "sampler_generations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_model(tmp_path / "model")
    sampler = load_sampler(tmp_path / "sampler", model=model)
    assert isinstance(sampler, GaussianMixtureSampler)
    # the reported held-out density is that of the test set's posterior means
    test = OmegaConf.to_object(cfg.data).load("test")
    codes = encode_latents(model, test)
    expected = float(sampler.log_density(codes).double().mean())
    assert summary["test_log_density"]["log_density"] == pytest.approx(expected, abs=1e-4)
    assert summary["test_log_density"]["rows"] == len(test) == summary["prior_test_log_density"]["rows"]
    torch.manual_seed(0)
    assert len(sampler.generate(4)) == 4


def test_unknown_sampler_fails_before_training(tmp_path):
    cfg = _config(*TINY, "sampler=vae")
    with pytest.raises(ValueError, match="unknown sampler 'vae'"):
        run(cfg, "mvae", "polydigits", tmp_path)
    assert not (tmp_path / "checkpoint").exists()
