"""Mask-aware encoders (MaskConcat around every registered encoder, the set encoder), the natural
parameter head, the mask_aware flag of the modality specs and its round trip through config.json."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from pyromv.data import Modality, MultimodalDataset, feature_mcar, mcar
from pyromv.models.io import load_model, save_model
from pyromv.models.mvae import MVAE, MVAEConfig
from pyromv.nn import MaskConcat, SetEncoder, build_encoder, registered_encoders
from pyromv.nn.layers import NaturalHead, knee_positive

SHAPES = {"conv": (2, 8, 8), "mlp": (3, 4), "linear": (5,), "set": (6,)}
KWARGS = {"conv": {"channels": [4], "hidden_dim": 8}, "mlp": {"hidden_dims": [8]}, "linear": {},
          "set": {"embed_dim": 4, "feature_hidden_dims": [8], "feature_dim": 8, "hidden_dims": [8]}}


@pytest.mark.parametrize("name", registered_encoders())
def test_every_registered_encoder_can_take_the_mask(name):
    assert name in SHAPES, f"give the new encoder {name!r} an input shape and kwargs here"
    shape = SHAPES[name]
    net = build_encoder(name, KWARGS[name], shape, 3, mask_aware=True)
    assert net.takes_mask
    x = torch.randn(7, *shape)
    mask = torch.rand(7, *shape) < 0.6
    loc, scale = net(x, mask)
    assert loc.shape == scale.shape == (7, 3) and bool((scale > 0).all())
    # whatever a missing entry holds (NaN, inf, any value) does not matter, nor its gradient
    junk = torch.where(mask, x, torch.tensor(float("nan")))
    junk = junk.clone().requires_grad_(True)
    loc2, scale2 = net(junk, mask)
    torch.testing.assert_close((loc2, scale2), (loc, scale))
    (loc2.sum() + scale2.sum()).backward()
    assert bool(torch.isfinite(junk.grad).all()) and bool((junk.grad[~mask] == 0).all())
    # the mask is information: the same values with other entries missing give another expert
    other, _ = net(x, mask & (torch.rand(7, *shape) < 0.5))
    assert not torch.allclose(other, loc)
    # no mask = everything observed
    torch.testing.assert_close(net(x), net(x, torch.ones_like(mask)))


def test_mask_concat_feeds_values_then_mask_on_the_first_event_dim():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, h):
            seen.append(h)
            return h, h

    net = MaskConcat(Probe(), (1, 2, 2))
    assert MaskConcat.widened((1, 2, 2)) == (2, 2, 2)  # one mask channel per image channel
    x = torch.tensor([[[[1.0, 2.0], [3.0, float("inf")]]]])
    mask = torch.tensor([[[[True, False], [True, False]]]])
    net(x, mask)
    expected = torch.tensor([[[[1.0, 0.0], [3.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]]])
    torch.testing.assert_close(seen[0], expected)


def test_plain_build_is_unchanged():
    net = build_encoder("mlp", {"hidden_dims": [8]}, (5,), 2)
    assert not getattr(net, "takes_mask", False)
    assert net.body[0].in_features == 5


def test_set_encoder_is_permutation_invariant_and_ignores_missing_entries():
    torch.manual_seed(0)
    net = SetEncoder((6,), 2, embed_dim=4, feature_hidden_dims=[8], feature_dim=8, hidden_dims=[8])
    x = torch.randn(5, 6)
    mask = torch.rand(5, 6) < 0.5
    loc, scale = net(x, mask)
    # permuting the entries together with their embeddings leaves q unchanged
    perm = torch.randperm(6)
    with torch.no_grad():
        net.embedding.copy_(net.embedding[perm])
    torch.testing.assert_close(net(x[:, perm], mask[:, perm]), (loc, scale))
    # c is the sum over the observed entries of the per-entry code
    one = torch.zeros(5, 6, dtype=torch.bool)
    parts = []
    for j in range(6):
        e = one.clone()
        e[:, j] = True
        parts.append(net.pooled(x[:, perm], e) * mask[:, perm][:, j:j + 1])
    torch.testing.assert_close(net.pooled(x[:, perm], mask[:, perm]), sum(parts))


def test_set_encoder_first_layer_is_the_linear_layer_on_value_times_embedding_and_embedding():
    torch.manual_seed(1)
    net = SetEncoder((3,), 1, embed_dim=2, feature_hidden_dims=[], feature_dim=4, hidden_dims=[])
    x = torch.randn(4, 3)
    e = net.embedding
    direct = net.feature_net(torch.cat([x.unsqueeze(-1) * e, e.expand(4, 3, 2)], -1)).sum(-2)
    torch.testing.assert_close(net.pooled(x), direct)


def test_knee_positive_is_linear_above_the_knee_and_positive_below():
    raw = torch.tensor([-1e4, -3.0, 0.0, 0.5, 1.0, 2.5], requires_grad=True)
    out = knee_positive(raw, 1.0)
    assert bool((out > 0).all())
    torch.testing.assert_close(out[-2:], raw[-2:])
    torch.testing.assert_close(out[2], torch.tensor(math.exp(-1.0)))
    out.sum().backward()
    assert bool(torch.isfinite(raw.grad).all())


def test_natural_head_converts_natural_parameters():
    head = NaturalHead(2, 1, knee=0.5)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.linear.bias.zero_()
    loc, scale = head(torch.tensor([[3.0, 4.0]]))  # eta = 3, precision = 4
    torch.testing.assert_close(loc, torch.tensor([[0.75]]))
    torch.testing.assert_close(scale, torch.tensor([[0.5]]))


def test_modality_flag_values():
    assert Modality("a", (2,)).mask_aware == "auto"
    assert Modality("a", (2,), mask_aware=True).mask_aware == "on"
    assert Modality("a", (2,), mask_aware=False).mask_aware == "off"
    with pytest.raises(ValueError, match="'a'.*mask_aware"):
        Modality("a", (2,), mask_aware="sometimes")


def _data(n=30):
    g = torch.Generator().manual_seed(0)
    return {"v": torch.randn(n, 5, generator=g), "c": torch.randint(0, 3, (n, 2), generator=g)}


MODS = [Modality("v", (5,), "normal", encoder={"name": "mlp", "kwargs": {"hidden_dims": [8]}}, decoder="linear"),
        Modality("c", (2,), "categorical", {"num_categories": 3},
                 encoder={"name": "set", "kwargs": {"embed_dim": 4, "feature_dim": 8}}, decoder="linear")]


def test_auto_is_switched_on_by_feature_masks_only():
    ds = MultimodalDataset(MODS, _data())
    assert [m.mask_aware for m in ds.modalities] == ["auto", "auto"]
    assert [m.mask_aware for m in mcar(ds, 0.3).modalities] == ["auto", "auto"]  # whole modalities
    partial = feature_mcar(ds, {"v": 0.3})
    assert [m.mask_aware for m in partial.modalities] == ["on", "auto"]
    assert [m.mask_aware for m in mcar(partial, 0.3).modalities] == ["on", "auto"]  # kept downstream
    model = MVAE(partial.modalities, MVAEConfig(latent_dim=2))
    assert [m.mask_aware for m in model.modalities] == ["on", "auto"]  # "auto" in a model: built plain
    assert isinstance(model.encoders["v"], MaskConcat)
    # an explicit choice wins over the data
    off = [Modality(**{**MODS[0].__dict__, "mask_aware": "off"}), MODS[1]]
    assert feature_mcar(MultimodalDataset(off, _data()), 0.3).modalities[0].mask_aware == "off"


def test_categorical_mask_is_spread_over_the_one_hot_code():
    ds = feature_mcar(MultimodalDataset(MODS, _data()), {"c": 0.5}, seed=1)
    model = MVAE(ds.modalities, MVAEConfig(latent_dim=2))
    batch = ds.batch()
    m = model.encoder_mask("c", batch)
    assert m.shape == (30, 2, 3)
    torch.testing.assert_close(m, batch.obs_mask["c"].unsqueeze(-1).expand(30, 2, 3))
    row = model.encoder_mask("v", batch)  # a row mask spread over the row
    assert row.shape == (30, 5) and bool(row.all())


def test_mask_aware_model_saves_and_reloads_identically(tmp_path):
    torch.manual_seed(0)
    ds = feature_mcar(MultimodalDataset(MODS, _data()), 0.3)
    model = MVAE(ds.modalities, MVAEConfig(latent_dim=2))
    save_model(model, tmp_path / "m")
    desc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [m["mask_aware"] for m in desc["modalities"]] == ["on", "on"]
    again = load_model(tmp_path / "m")
    assert [m.mask_aware for m in again.modalities] == ["on", "on"]
    batch = ds.batch()
    torch.testing.assert_close(again.experts(batch), model.experts(batch))
    # a config.json written before the flag existed loads with the flag off
    for m in desc["modalities"]:
        del m["mask_aware"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(desc))
    with pytest.raises(RuntimeError):  # the weights are those of mask-aware encoders
        load_model(tmp_path / "m")
    plain = MVAE(MultimodalDataset(MODS, _data()).modalities, MVAEConfig(latent_dim=2))
    save_model(plain, tmp_path / "p")
    desc = json.loads((tmp_path / "p" / "config.json").read_text())
    for m in desc["modalities"]:
        del m["mask_aware"]
    (tmp_path / "p" / "config.json").write_text(json.dumps(desc))
    old = load_model(tmp_path / "p")
    assert [m.mask_aware for m in old.modalities] == ["auto", "auto"]  # plain encoders, as before the flag


def test_a_model_built_before_the_data_warns_once_that_its_encoder_misses_the_mask():
    partial = feature_mcar(MultimodalDataset(MODS, _data()), {"v": 0.3})
    plain = MVAE(MODS, MVAEConfig(latent_dim=2))  # built from the user's specs: "auto", plain encoders
    with pytest.warns(UserWarning, match="'v'.*does not see the mask"):
        partial.check_against(plain.modalities)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        partial.check_against(plain.modalities)  # once per data set and modality
        feature_mcar(MultimodalDataset(MODS, _data()), {"v": 0.3}).check_against(
            MVAE(partial.modalities, MVAEConfig(latent_dim=2)).modalities)  # built from the data: no warning
        off = [Modality(**{**MODS[0].__dict__, "mask_aware": "off"}), MODS[1]]
        feature_mcar(MultimodalDataset(MODS, _data()), {"v": 0.3}).check_against(off)  # a choice: no warning


def test_cvae_networks_see_the_entry_masks_of_mask_aware_modalities():
    """CVAE's own recognition and prior networks (not registered encoders) take ``(x * m, m)``
    for a mask-aware modality: two rows with the same zero-filled values but different masks
    (an observed 0 vs a missing entry) get different posteriors and priors; with the flag off
    they cannot be told apart."""
    from pyromv.models.cvae import CVAE, CVAEConfig

    mods = [Modality("y", (4,), "normal", {"scale": 0.5}), Modality("c", (3,), "normal", {"scale": 0.5})]
    data = {"y": torch.tensor([[0.5, 0.0, 1.0, -1.0]] * 2), "c": torch.tensor([[0.0, 2.0, 1.0]] * 2)}
    masks = {"y": torch.tensor([[True, True, True, True], [True, False, True, True]]),
             "c": torch.tensor([[True, True, True], [False, True, True]])}
    for setting, differ in (("on", True), ("off", False)):
        specs = [Modality(m.name, m.shape, m.likelihood, m.likelihood_kwargs, mask_aware=setting) for m in mods]
        torch.manual_seed(0)
        model = CVAE(specs, CVAEConfig(latent_dim=2, main_modality="y"))
        batch = MultimodalDataset(specs, data, masks).batch()
        with torch.no_grad():
            q, p = model.posterior(batch).base_dist, model.conditional_prior(batch).base_dist
        for d in (q, p):
            assert (not torch.allclose(d.loc[0], d.loc[1])) is differ, setting
