"""The ``register_*`` functions: what a user registers is what the library builds, by name,
through JSON configs, saving and loading, and the command line's sampler step.

Every test removes what it registered (``monkeypatch`` on the registry tables), so the
parametrisations over ``registered_models()`` / ``registered_samplers()`` elsewhere never see
these toys.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pyromv.distributions.likelihoods as likelihoods
import pyromv.models.registry as model_registry
import pyromv.nn.registry as nn_registry
import pyromv.samplers.base as sampler_base
from pyromv.data import Modality, make_batch
from pyromv.distributions.likelihoods import NormalHead, build_likelihood, register_likelihood, registered_likelihoods
from pyromv.models import MVAE, MVAEConfig, get_model_class, load_model, register_model, registered_models, save_model
from pyromv.nn.registry import (
    build_decoder,
    build_encoder,
    register_decoder,
    register_encoder,
    registered_decoders,
    registered_encoders,
)
from pyromv.samplers import PriorSampler, build_sampler, get_sampler_class, register_sampler, registered_samplers


@pytest.fixture
def clean_registries(monkeypatch):
    """Registry tables restored after the test."""
    for module, table in ((model_registry, "_MODELS"), (nn_registry, "_ENCODERS"), (nn_registry, "_DECODERS"),
                          (likelihoods, "_HEADS"), (sampler_base, "_SAMPLERS")):
        monkeypatch.setattr(module, table, dict(getattr(module, table)))


class _ScaledDecoder(nn.Module):
    """``factor * (W z + b)``: a decoder whose output proves it was the one built."""

    def __init__(self, latent_dim: int, output_shape: tuple[int, ...], factor: float = 1.0) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.linear = nn.Linear(latent_dim, math.prod(self.output_shape))
        self.factor = float(factor)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.factor * self.linear(z).reshape(z.shape[:-1] + self.output_shape)


class _ConstantEncoder(nn.Module):
    """``q(z | x) = N(c, 1)`` whatever ``x``: a factory's output is what the model fuses."""

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, c: float = 0.0) -> None:
        super().__init__()
        self.latent_dim, self.c = latent_dim, float(c)
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape[:1] + (self.latent_dim,)
        return torch.full(shape, self.c) + 0 * self.unused, torch.ones(shape)


def test_registered_networks_are_built_by_name_with_their_kwargs(clean_registries):
    register_encoder("toy_constant")(_ConstantEncoder)
    register_decoder("toy_scaled")(_ScaledDecoder)
    assert "toy_constant" in registered_encoders() and "toy_scaled" in registered_decoders()
    assert isinstance(build_encoder("toy_constant", {"c": 2.0}, (3,), 2), _ConstantEncoder)
    mods = [Modality(m, (3,), encoder={"name": "toy_constant", "kwargs": {"c": 2.0}},
                     decoder={"name": "toy_scaled", "kwargs": {"factor": 3.0}}) for m in ("a", "b")]
    model = MVAE(mods, MVAEConfig(latent_dim=2))
    batch = make_batch(model.modalities, {m: torch.randn(4, 3) for m in ("a", "b")})
    # PoE of the prior N(0, 1) and two experts N(2, 1): precision 3, mean (0 + 2 + 2) / 3
    torch.testing.assert_close(model.encode(batch).mean, torch.full((4, 2), 4 / 3))
    z = torch.randn(5, 2)
    dec = model.decoders["a"]
    torch.testing.assert_close(dec(z), 3.0 * dec.linear(z))
    with pytest.raises(ValueError, match="unknown encoder network 'nope'.*toy_constant"):
        build_encoder("nope", {}, (3,), 2)
    with pytest.raises(ValueError, match="latent_dim"):
        build_decoder("toy_scaled", {"latent_dim": 3}, 2, (3,))
    with pytest.raises(TypeError, match="toy_scaled.*rejected"):
        build_decoder("toy_scaled", {"colour": "red"}, 2, (3,))


def test_a_registered_model_is_built_saved_and_loaded_by_name(clean_registries, tmp_path):
    @register_model("toy_mvae")
    class ToyMVAE(MVAE):
        pass

    assert ToyMVAE.name == "toy_mvae" and "toy_mvae" in registered_models()
    assert get_model_class("toy_mvae") is ToyMVAE
    register_model("toy_mvae")(ToyMVAE)  # the same class again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_model("toy_mvae")(type("Other", (MVAE,), {}))
    model = ToyMVAE([Modality("a", (3,)), Modality("b", (2,))], MVAEConfig(latent_dim=2))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is ToyMVAE
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_model_class("nope")


def test_a_registered_likelihood_is_the_modality_head(clean_registries):
    @register_likelihood("toy_normal")
    class ToyNormal(NormalHead):
        pass

    assert ToyNormal.name == "toy_normal" and "toy_normal" in registered_likelihoods()
    head = build_likelihood("toy_normal", (3,), {"scale": 0.5})
    assert isinstance(head, ToyNormal)
    model = MVAE([Modality("a", (3,), likelihood="toy_normal", likelihood_kwargs={"scale": 0.5})],
                 MVAEConfig(latent_dim=2))
    assert isinstance(model.likelihoods["a"], ToyNormal)
    x, z = torch.randn(4, 3), torch.randn(4, 2)
    loc = model.decoders["a"](z)
    expected = torch.distributions.Normal(loc, 0.5).log_prob(x).sum(-1)  # by hand
    torch.testing.assert_close(model.likelihood("a", z).log_prob(x), expected)
    with pytest.raises(ValueError, match="unknown likelihood 'nope'"):
        build_likelihood("nope", (3,))


def test_a_registered_sampler_runs_in_the_training_job(clean_registries, tmp_path):
    from pyromv.samplers.job import fit_sampler_job
    from tests.metrics.toy import identity_model, one_hot_data

    @register_sampler("toy_prior")
    class ToyPrior(PriorSampler):
        pass

    assert ToyPrior.name == "toy_prior" and "toy_prior" in registered_samplers()
    assert get_sampler_class("toy_prior") is ToyPrior and isinstance(build_sampler("toy_prior"), ToyPrior)
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("toy_prior")(type("Other", (PriorSampler,), {}))
    with pytest.raises(TypeError, match="toy_prior.*rejected"):
        build_sampler("toy_prior", colour="red")
    model = identity_model()
    batch = one_hot_data(20)
    from pyromv.data import MultimodalDataset

    data = MultimodalDataset(model.modalities, batch.data, batch.obs_mask, batch.labels)
    summary = fit_sampler_job("toy_prior", {}, model, data, data, tmp_path, progress=False)
    assert summary["name"] == "toy_prior"
    # the toy is the prior: its held-out density is the prior's, on the same codes
    assert summary["test_log_density"] == summary["prior_test_log_density"]
