"""MVAE through the common surface: encode/decode/generate, partial batches, config, isolation."""

import copy
import dataclasses

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyromv.data import Modality, MultimodalBatch, make_batch
from pyromv.distributions import ProductOfExperts
from pyromv.infer import ELBO, IWAE, SubsampledELBO
from pyromv.models import MVAE, MVAEConfig, get_model_class, registered_models

B, D = 6, 3
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality(
        "img", (1, 8, 8), "continuous_bernoulli",
        encoder={"name": "conv", "kwargs": {"channels": [4, 8], "hidden_dim": 8}},
        decoder={"name": "conv", "kwargs": {"channels": [8, 4], "hidden_dim": 8}},
    ),
    Modality("vec", (5,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
    Modality("cat", (2,), "categorical", {"num_categories": 4}, encoder=MLP, decoder=MLP),
]
SHAPES = {m.name: m.shape for m in MODS}
PARTIAL = {
    "img": [1, 1, 0, 1, 0, 1],
    "vec": [1, 0, 1, 1, 0, 0],
    "cat": [1, 0, 0, 1, 1, 0],
}


def _data(n=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.rand(n, 1, 8, 8, generator=g),
        "vec": torch.randn(n, 5, generator=g),
        "cat": torch.randint(4, (n, 2), generator=g),
    }


def _batch(partial=True, seed=0):
    masks = {k: torch.tensor(v, dtype=torch.bool) for k, v in PARTIAL.items()} if partial else None
    return make_batch(MODS, _data(seed=seed), masks)


def _model(seed=0, **cfg):
    torch.manual_seed(seed)
    return MVAE(MODS, MVAEConfig(latent_dim=D, **cfg))


def test_registered():
    assert "mvae" in registered_models()
    assert get_model_class("mvae") is MVAE
    assert MVAE.name == "mvae"


@pytest.mark.parametrize("partial", [False, True])
def test_encode_shapes(partial):
    model = _model()
    q = model.encode(_batch(partial))
    assert isinstance(q, ProductOfExperts)
    assert q.batch_shape == (B,)
    assert q.event_shape == (D,)
    assert q.rsample().shape == (B, D)
    assert (q.scale > 0).all()


def test_decode_shapes():
    model = _model()
    for lead in [(B,), (4, B)]:
        out = model.decode(torch.randn(*lead, D))
        assert set(out) == set(SHAPES)
        for name, d in out.items():
            assert d.batch_shape == lead, name
            assert d.event_shape == SHAPES[name], name
            x = d.sample()
            assert x.shape == (*lead, *SHAPES[name])
            assert d.log_prob(x).shape == lead


def _check_outputs(out, n, names):
    assert set(out) == set(names)
    for name, x in out.items():
        assert x.shape == (n, *SHAPES[name]), name
        assert not x.requires_grad, name
        assert torch.isfinite(x.float()).all()
    if "img" in out:
        assert (out["img"] >= 0).all() and (out["img"] <= 1).all()
    if "cat" in out:
        assert not out["cat"].is_floating_point()
        assert ((out["cat"] >= 0) & (out["cat"] < 4)).all()


@pytest.mark.parametrize("sample", [False, True])
def test_reconstruct_cross_generate_generate(sample):
    model = _model()
    batch = _batch()
    _check_outputs(model.reconstruct(batch, sample=sample), B, SHAPES)
    _check_outputs(model.cross_generate(batch, sample=sample), B, SHAPES)
    _check_outputs(model.cross_generate(batch.restrict(["vec"]), ["img", "cat"], sample), B,
                   ["img", "cat"])
    _check_outputs(model.generate(7), 7, SHAPES)
    _check_outputs(model.generate(2, targets=["vec"]), 2, ["vec"])


def test_unknown_target_is_a_value_error():
    model = _model()
    with pytest.raises(ValueError, match="nope"):
        model.cross_generate(_batch(), ["nope"])
    with pytest.raises(ValueError, match="nope"):
        model.generate(2, ["nope"])


def test_cross_generate_ignores_unobserved_data():
    model = _model()
    batch = _batch(partial=False).restrict(["vec"])
    out = model.cross_generate(batch, ["img", "cat"])
    other = _data(seed=1)
    changed = MultimodalBatch(
        {"img": other["img"], "vec": batch.data["vec"], "cat": other["cat"]}, batch.obs_mask
    )
    out2 = model.cross_generate(changed, ["img", "cat"])
    assert torch.equal(out["img"], out2["img"])
    assert torch.equal(out["cat"], out2["cat"])
    # while changing the observed modality does change the output
    moved = MultimodalBatch({**batch.data, "vec": batch.data["vec"] + 3.0}, batch.obs_mask)
    assert not torch.equal(model.cross_generate(moved, ["img"])["img"], out["img"])
    # conditioning on nothing observed is the prior mean for every row
    q = model.encode(batch.restrict([]))
    assert torch.equal(q.loc, torch.zeros(B, D)) and torch.equal(q.scale, torch.ones(B, D))


def test_model_and_guide_sites():
    model = _model()
    batch = _batch()
    guide_tr = poutine.trace(model.guide).get_trace(batch)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(batch)

    def samples(tr):
        return {
            n: s for n, s in tr.nodes.items()
            if s["type"] == "sample" and not site_is_subsample(s)
        }

    assert list(samples(guide_tr)) == ["z"]
    samples = samples(model_tr)
    assert set(samples) == {"z", "x_img", "x_vec", "x_cat"}
    for name in SHAPES:
        site = samples[f"x_{name}"]
        assert site["is_observed"]
        assert torch.equal(site["mask"], torch.tensor(PARTIAL[name], dtype=torch.bool))
    assert not samples["z"]["is_observed"]


@pytest.mark.parametrize("objective", ["subsampled", "elbo", "iwae"])
def test_partial_batch_trains(objective):
    model = _model(objective=objective, num_particles=3)
    loss_fn = model.default_loss()
    expected_type = {"subsampled": SubsampledELBO, "elbo": ELBO, "iwae": IWAE}[objective]
    assert isinstance(loss_fn, expected_type)
    batch = _batch()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = loss_fn.differentiable_loss(model.model, model.guide, batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
        opt.step()
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), name


def test_default_loss_options():
    model = _model(objective="iwae", num_particles=5, beta=0.5)
    loss = model.default_loss()
    assert loss.num_particles == 5 and loss.beta == 0.5
    model = _model(objective="subsampled", num_random_subsets=2, beta=2.0)
    loss = model.default_loss()
    assert loss.num_random_subsets == 2 and loss.beta == 2.0


def test_feature_level_missingness_trains():
    masks = {k: torch.tensor(v, dtype=torch.bool) for k, v in PARTIAL.items()}
    feat = torch.rand(B, 5, generator=torch.Generator().manual_seed(2)) < 0.6
    feat[0] = True
    masks["vec"] = feat
    batch = make_batch(MODS, _data(), masks)
    model = _model(objective="elbo")
    tr = poutine.trace(model.model).get_trace(batch)
    assert torch.equal(tr.nodes["x_vec"]["mask"], feat.any(1))
    loss = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_modality_missing_in_every_row():
    masks = {k: torch.tensor(v, dtype=torch.bool) for k, v in PARTIAL.items()}
    masks["vec"] = torch.ones(B, dtype=torch.bool)
    masks["cat"] = torch.zeros(B, dtype=torch.bool)
    batch = make_batch(MODS, _data(), masks)
    for objective in ["subsampled", "elbo", "iwae"]:
        model = _model(objective=objective)
        loss = model.default_loss().differentiable_loss(model.model, model.guide, batch)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "cfg",
    [
        {"objective": "foo"},
        {"latent_dim": 0},
        {"num_random_subsets": -1},
        {"beta": -1.0},
        {"num_particles": 0},
        {"prior_scale": 0.0},
    ],
)
def test_invalid_config(cfg):
    key = next(iter(cfg))
    with pytest.raises(ValueError, match=key):
        MVAE(MODS, MVAEConfig(**cfg))


def test_wrong_config_type():
    from pyromv.models import ModelConfig

    with pytest.raises(TypeError, match="MVAEConfig"):
        MVAE(MODS, ModelConfig())


def test_batch_missing_a_modality():
    model = _model()
    batch = make_batch(MODS[:2], {k: v for k, v in _data().items() if k != "cat"})
    for fn in (model.model, model.guide, model.encode):
        with pytest.raises(ValueError, match="cat"):
            fn(batch)
    with pytest.raises(ValueError, match="cat"):
        model.default_loss().differentiable_loss(model.model, model.guide, batch)


def test_batch_with_an_extra_modality():
    model = _model()
    extra = [*MODS, Modality("aux", (2,))]
    batch = make_batch(extra, {**_data(), "aux": torch.zeros(B, 2)})
    with pytest.raises(ValueError, match="aux"):
        model.encode(batch)


def test_not_a_batch():
    model = _model()
    with pytest.raises(TypeError, match="MultimodalBatch"):
        model.encode(_data())


def test_caller_objects_not_mutated():
    cfg = MVAEConfig(latent_dim=D, objective="elbo")
    snapshot = copy.deepcopy(cfg)
    mods = list(MODS)
    model = MVAE(mods, cfg)
    assert model.config is not cfg
    assert model.config == cfg
    model.config.beta = 7.0
    assert cfg == snapshot
    assert mods == MODS
    batch = _batch()
    data = {k: v.clone() for k, v in batch.data.items()}
    masks = {k: v.clone() for k, v in batch.obs_mask.items()}
    for objective in ["subsampled", "elbo", "iwae"]:
        model = MVAE(mods, dataclasses.replace(cfg, objective=objective))
        model.default_loss().differentiable_loss(model.model, model.guide, batch).backward()
        model.reconstruct(batch)
        model.cross_generate(batch.restrict(["img"]))
    assert cfg == snapshot
    for k in data:
        assert torch.equal(batch.data[k], data[k])
        assert torch.equal(batch.obs_mask[k], masks[k])


def test_instances_do_not_share_parameters():
    m1 = _model(seed=0, objective="elbo")
    m2 = _model(seed=0, objective="elbo")
    ptrs1 = {p.data_ptr() for p in m1.parameters()}
    ptrs2 = {p.data_ptr() for p in m2.parameters()}
    assert not ptrs1 & ptrs2
    frozen = {k: v.clone() for k, v in m2.state_dict().items()}
    batch = _batch()
    # a torch loop on m1
    opt = torch.optim.Adam(m1.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        m1.default_loss().differentiable_loss(m1.model, m1.guide, batch).backward()
        opt.step()
    # and a plain SVI script on m1
    svi = pyro.infer.SVI(m1.model, m1.guide, pyro.optim.Adam({"lr": 1e-2}), loss=m1.default_loss())
    for _ in range(3):
        svi.step(batch)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert any(not torch.equal(v, frozen[k]) for k, v in m1.state_dict().items())
    assert len(pyro.get_param_store()) == 0
