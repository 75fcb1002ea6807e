"""``Modality.missingness`` (not-MIWAE) on every registered model: modelled, or refused clearly.

A model that scores its likelihood through ``MultimodalVAE.observe`` gets the factor
``s_{m} = log p(s_m | x_m)`` of a modality's feature mask in its model trace, and training
reaches the missingness network's parameters and (through the reparameterised draws of the
missing entries) the decoder; a model with its own observation sites (CVAE, Nexus) or without a
likelihood (the deterministic baselines) refuses the option with a ValueError naming the
modality. The numbers are checked against integrals in tests/oracles/test_not_miwae.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pyro import poutine

from pyromv.data import Modality, MultimodalDataset, feature_mcar
from pyromv.metrics import log_likelihood
from pyromv.models import get_model_class, load_model, registered_models, save_model
from pyromv.nn.missingness import LinearMissingness, SelfMasking, mask_log_prob
from tests.models.test_common_surface import MODS, PARTIAL, _data

pytestmark = pytest.mark.usefixtures("one_thread")

REFUSED = {"cvae", "nexus", "dccae", "maae", "mwae"}


def _dataset(kind: str = "self_masking") -> MultimodalDataset:
    mods = [dataclasses.replace(m, missingness=kind) if m.name in ("img", "vec") else m for m in MODS]
    masks = {k: torch.tensor(v, dtype=torch.bool) for k, v in PARTIAL.items()}
    return feature_mcar(MultimodalDataset(mods, _data(), masks), 0.3, seed=0)


@pytest.mark.parametrize("name", registered_models())
def test_every_model_models_the_mask_or_refuses(name):
    ds = _dataset()
    cls = get_model_class(name)
    torch.manual_seed(0)
    if name in REFUSED:
        with pytest.raises(ValueError, match="'img'.*missingness"):
            cls(ds.modalities, cls.config_class(latent_dim=3))
        return
    model = cls(ds.modalities, cls.config_class(latent_dim=3))
    batch = ds.batch()
    trace = poutine.trace(model.model).get_trace(batch)
    assert {"s_img", "s_vec"} <= set(trace.nodes) and "s_cat" not in trace.nodes
    stage = next(iter(model.stages()))
    loss = stage.loss.differentiable_loss(stage.model, stage.guide, batch)
    assert torch.isfinite(loss)
    loss.backward()
    for m in ("img", "vec"):
        grads = [p.grad for p in model.missingness[m].parameters()]
        assert all(g is not None and bool(g.abs().sum() > 0) for g in grads), (name, m)
    # the estimates and the imputation run on it: log p(x_obs, s), a conditional, filled entries
    joint = log_likelihood(model, ds, K=4, khat=False, seed=0)
    given = [m for m in model.names if m not in model.generated_modalities] or ["vec"]
    targets = [m for m in model.generated_modalities if m not in given]
    conditional = log_likelihood(model, ds, K=4, khat=False, seed=0, given=given, targets=targets)
    assert bool(joint.values.isfinite().all()) and bool(conditional.values.isfinite().all())
    filled = model.impute(ds, num_samples=4, num_imputations=2, seed=0)
    for m in filled.imputations:
        assert bool(filled.dataset.data[m].isfinite().all()) and bool(filled.imputations[m].isfinite().all())


def test_missing_entries_values_never_matter():
    """The draws replace the missing entries before the missingness network sees them: the loss
    is unchanged when the data hold other values there (1e6 in the normal modality, 0.37 in the
    continuous Bernoulli one, inside its support), with the same seed."""
    ds = _dataset()
    cls = get_model_class("mvae")
    torch.manual_seed(0)
    model = cls(ds.modalities, cls.config_class(latent_dim=3))
    batch = ds.batch()
    poisoned = dict(batch.data)
    for m, value in (("vec", 1e6), ("img", 0.37)):
        poisoned[m] = torch.where(batch.obs_mask[m], batch.data[m], torch.full_like(batch.data[m], value))
    losses = []
    for data in (batch.data, poisoned):
        torch.manual_seed(1)
        b = type(batch)(data, batch.obs_mask, batch.labels)
        losses.append(model.evaluation_loss().differentiable_loss(model.model, model.guide, b))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    assert not torch.equal(poisoned["vec"], batch.data["vec"])


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="missingness must be one of"):
        Modality("v", (3,), missingness="mnar")
    cat = Modality("c", (2,), "categorical", {"num_categories": 3}, missingness="self_masking")
    cls = get_model_class("mvae")
    with pytest.raises(ValueError, match="'c'.*reparameterisation.*categorical"):
        cls([cat, Modality("v", (3,))], cls.config_class(latent_dim=2))


def test_saved_model_keeps_its_missingness_model(tmp_path):
    ds = _dataset("self_masking_high")
    cls = get_model_class("mopoe")
    model = cls(ds.modalities, cls.config_class(latent_dim=3))
    with torch.no_grad():
        model.missingness["vec"].weight.normal_()
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.modality("vec").missingness == "self_masking_high"
    torch.testing.assert_close(back.missingness["vec"].weight, model.missingness["vec"].weight)


@pytest.mark.parametrize("kind", ["self_masking", "self_masking_high", "self_masking_low", "linear"])
def test_missingness_networks(kind):
    """Shapes, the known signs, and ``mask_log_prob`` = Bernoulli log-likelihood of the mask."""
    ds = _dataset(kind)
    model = get_model_class("mvae")(ds.modalities, get_model_class("mvae").config_class(latent_dim=2))
    net = model.missingness["img"]
    assert isinstance(net, LinearMissingness if kind == "linear" else SelfMasking)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    x = torch.randn(4, 2, 1, 8, 8)
    logits = net(x)
    assert logits.shape == x.shape
    if kind.endswith("high"):
        assert bool((net.slope() >= 0).all())
    if kind.endswith("low"):
        assert bool((net.slope() <= 0).all())
    observed = torch.rand(x.shape) < 0.5
    expected = torch.distributions.Bernoulli(logits=logits).log_prob((~observed).float()).flatten(2).sum(-1)
    torch.testing.assert_close(mask_log_prob(logits, observed, 3), expected)
