"""Every registered model through the common surface, complete and partial batches alike.

Parametrised over :func:`pyromv.models.registered_models` (a model is tested the moment it
registers; one not listed in ``VARIANTS`` runs with its default config) and over option variants
of the known models. Each case: the default objective trains (torch loop, ``Trainer``, plain
``pyro.infer.SVI``) with finite losses and finite gradients on every parameter it should reach;
``encode``/``reconstruct``/``cross_generate``/``generate`` answer with the same shapes;
``cross_generate`` ignores what the conditioning set leaves out; rows that observe nothing of it
encode to the prior; ``save_model``/``load_model`` give back identical outputs. Pyro validation
is on (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses

import pyro
import pytest
import torch

from pyromv.data import Modality, MultimodalBatch, MultimodalDataset, make_batch, mcar
from pyromv.infer import importance_log_weights
from pyromv.models import (
    JMVAE,
    MMVAE,
    MoPoE,
    MoPoEConfig,
    MultimodalVAE,
    get_model_class,
    load_model,
    registered_models,
    save_model,
)
from pyromv.training import Trainer, TrainerConfig

B, D = 6, 3
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
CONV = {"name": "conv", "kwargs": {"channels": [4, 8], "hidden_dim": 8}}
MODS = [
    Modality("img", (1, 8, 8), "continuous_bernoulli", encoder=CONV,
             decoder={"name": "conv", "kwargs": {"channels": [8, 4], "hidden_dim": 8}}),
    Modality("vec", (5,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
    Modality("cat", (2,), "categorical", {"num_categories": 4}, encoder=MLP, decoder=MLP),
]
NAMES = [m.name for m in MODS]
SHAPES = {m.name: m.shape for m in MODS}
# rows: all three; img; vec; img+vec; cat; img+vec
PARTIAL = {
    "img": [1, 1, 0, 1, 0, 1],
    "vec": [1, 0, 1, 1, 0, 1],
    "cat": [1, 0, 0, 0, 1, 0],
}

VARIANTS: dict[str, list[tuple[str, dict]]] = {
    "mvae": [
        ("subsampled", {}),
        ("elbo", {"objective": "elbo"}),
        ("iwae", {"objective": "iwae", "num_particles": 3}),
    ],
    "mmvae": [
        ("default", {}),  # stratified DReG-IWAE, Laplace prior and experts
        ("iwae-normal-learnprior", {"objective": "iwae", "num_particles": 3,
                                    "distribution": "normal", "learn_prior_scale": True}),
        ("elbo-laplace-learnprior", {"objective": "elbo", "learn_prior_scale": True}),
    ],
    "mopoe": [
        ("elbo", {}),  # one subset per row (balanced), KL averaged over subsets
        ("elbo-random", {"subset_sampling": "random"}),
        ("stratified-elbo", {"objective": "stratified_elbo"}),
        ("iwae", {"objective": "iwae", "num_particles": 3}),
        ("dreg", {"objective": "dreg", "num_particles": 3}),
        ("subsets", {"subsets": [["img"], ["vec"], ["cat"], ["img", "vec", "cat"]]}),
        ("prior-expert", {"prior_expert": True}),
        ("private", {"private_latent_dim": 2}),
        ("private-stratified", {"private_latent_dim": 2, "objective": "stratified_elbo"}),
        ("private-iwae", {"private_latent_dim": 2, "objective": "iwae", "num_particles": 2}),
    ],
    "jmvae": [
        ("alpha0", {"alpha": 0.0, "joint_hidden_dims": [16]}),
        ("alpha", {"alpha": 0.5, "joint_hidden_dims": [16]}),
    ],
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared machine (measured 30x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cases():
    for name in registered_models():
        for vid, cfg in VARIANTS.get(name, [("default", {})]):
            yield pytest.param(name, cfg, id=f"{name}-{vid}")


CASES = list(_cases())


def _data(n: int = B, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.rand(n, 1, 8, 8, generator=g),
        "vec": torch.randn(n, 5, generator=g),
        "cat": torch.randint(4, (n, 2), generator=g),
    }


def _batch(partial: bool, seed: int = 0) -> MultimodalBatch:
    masks = {k: torch.tensor(v, dtype=torch.bool) for k, v in PARTIAL.items()} if partial else None
    return make_batch(MODS, _data(seed=seed), masks)


def _model(name: str, cfg: dict, seed: int = 0) -> MultimodalVAE:
    torch.manual_seed(seed)
    cls = get_model_class(name)
    return cls(MODS, cls.config_class(latent_dim=D, **cfg))


def _has_private(model) -> bool:
    return getattr(model, "private_dim", 0) > 0


def _unreached_on_complete_rows(model) -> set[str]:
    """Parameters the default objective leaves untouched (no or zero gradient) when every row
    is complete: JMVAE without its KL terms uses its unimodal encoders only for incomplete rows."""
    if isinstance(model, JMVAE) and model.config.alpha == 0:
        return {n for n, _ in model.named_parameters() if n.startswith("encoders.")}
    return set()


def test_variants_name_registered_models():
    assert set(VARIANTS) <= set(registered_models())
    assert {"mvae", "mmvae", "mopoe", "jmvae"} <= set(registered_models())


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
@pytest.mark.parametrize("name,cfg", CASES)
def test_default_loss_trains_in_a_torch_loop(name, cfg, partial):
    model = _model(name, cfg)
    batch = _batch(partial)
    loss_fn = model.default_loss()
    unreached = set() if partial else _unreached_on_complete_rows(model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        loss = loss_fn.differentiable_loss(model.model, model.guide, batch)
        assert loss.shape == () and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            if n in unreached:
                assert p.grad is None or not p.grad.any(), n
            else:
                assert p.grad is not None and torch.isfinite(p.grad).all(), n
        opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]) == (n in unreached), n
    if isinstance(model, MMVAE) and model.config.learn_prior_scale:
        assert "log_prior_scale" in dict(model.named_parameters())


@pytest.mark.parametrize("name,cfg", CASES)
def test_trainer_fits_mcar_data(name, cfg):
    model = _model(name, cfg)
    data = MultimodalDataset(MODS, _data(n=24, seed=3))
    partial = mcar(data, 0.4, seed=1)
    assert any(f < 1.0 for f in partial.observed_fraction().values())
    config = TrainerConfig(epochs=2, batch_size=8, val_fraction=0.25, progress=False, patience=0)
    history = Trainer(model, config=config).fit(partial)
    assert len(history) == 2
    for record in history:
        assert torch.isfinite(torch.tensor([record["train_loss"], record["val_loss"]])).all()


@pytest.mark.parametrize("name,cfg", CASES)
def test_plain_svi_script_trains(name, cfg):
    model = _model(name, cfg)
    batch = _batch(partial=True)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}),
                         loss=model.default_loss())
    for _ in range(2):
        loss = svi.step(batch)
        assert isinstance(loss, float) and torch.isfinite(torch.tensor(loss))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert set(changed) == set(before)  # the partial batch reaches every parameter
    assert len(pyro.get_param_store()) == 0  # parameters live in the model


# ---------------------------------------------------------------------- the four methods
def _check_outputs(out: dict, n: int, names) -> None:
    assert set(out) == set(names)
    for name, x in out.items():
        assert x.shape == (n, *SHAPES[name]), name
        assert not x.requires_grad, name
        assert torch.isfinite(x.float()).all(), name
    if "img" in out:
        assert ((out["img"] >= 0) & (out["img"] <= 1)).all()
    if "cat" in out:
        assert not out["cat"].is_floating_point()
        assert ((out["cat"] >= 0) & (out["cat"] < 4)).all()


@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
@pytest.mark.parametrize("name,cfg", CASES)
def test_encode_and_generation_shapes(name, cfg, partial):
    model = _model(name, cfg)
    batch = _batch(partial)
    q = model.encode(batch)
    assert q.batch_shape == (B,) and q.event_shape == (D,)
    z = q.rsample()
    assert z.shape == (B, D)
    assert q.sample((4,)).shape == (4, B, D)
    assert q.mean.shape == (B, D) and torch.isfinite(q.mean).all()
    lp = q.log_prob(z)
    assert lp.shape == (B,) and torch.isfinite(lp).all()
    for sample in (False, True):
        _check_outputs(model.reconstruct(batch, sample=sample), B, NAMES)
        _check_outputs(model.cross_generate(batch, sample=sample), B, NAMES)
        _check_outputs(model.cross_generate(batch.restrict(["vec", "cat"]), ["img"], sample), B,
                       ["img"])
    _check_outputs(model.generate(5), 5, NAMES)
    _check_outputs(model.generate(2, targets=["cat"]), 2, ["cat"])
    with pytest.raises(ValueError, match="nope"):
        model.cross_generate(batch, ["nope"])


@pytest.mark.parametrize("name,cfg", CASES)
def test_cross_generate_ignores_unobserved_modalities(name, cfg):
    model = _model(name, cfg)
    batch = _batch(partial=False).restrict(["vec"])
    other = _data(seed=1)
    changed = MultimodalBatch({"img": other["img"], "vec": batch.data["vec"], "cat": other["cat"]},
                              batch.obs_mask)
    # private latents of unobserved modalities are drawn from their prior: same seed, same draw
    torch.manual_seed(5)
    out = model.cross_generate(batch, ["img", "cat"])
    torch.manual_seed(5)
    out2 = model.cross_generate(changed, ["img", "cat"])
    for t in ("img", "cat"):
        assert torch.equal(out[t], out2[t]), t
    torch.testing.assert_close(model.encode(changed).mean, model.encode(batch).mean, rtol=0, atol=0)
    # what is observed does matter
    moved = MultimodalBatch({**batch.data, "vec": batch.data["vec"] + 3.0}, batch.obs_mask)
    assert not torch.equal(model.encode(moved).mean, model.encode(batch).mean)


@pytest.mark.parametrize("name,cfg", CASES)
def test_rows_observing_nothing_encode_to_the_prior(name, cfg):
    """``q(z | nothing) = p(z)``: its density equals the prior's at any point (PoE with the
    prior expert; a mixture with the prior as its only component; JMVAE's product of no
    experts), for all rows of ``restrict([])`` and for the rows of a partial batch that miss
    every modality of the conditioning set."""
    model = _model(name, cfg)
    prior = model.prior()
    z = 2.0 * torch.randn(7, B, D)
    empty = model.encode(_batch(partial=False).restrict([]))
    torch.testing.assert_close(empty.log_prob(z), prior.log_prob(z).expand(7, B))
    torch.testing.assert_close(empty.mean, prior.mean.expand(B, D))
    batch = _batch(partial=True).restrict(["cat"])
    nothing = ~batch.row_mask("cat")
    assert nothing.any() and not nothing.all()
    got, expected = model.encode(batch).log_prob(z), prior.log_prob(z).expand(7, B)
    torch.testing.assert_close(got[:, nothing], expected[:, nothing])
    assert not torch.allclose(got[:, ~nothing], expected[:, ~nothing])
    if not _has_private(model):  # every such row decodes the same prior mean
        out = model.cross_generate(batch, ["img", "vec"])
        rows = nothing.nonzero().flatten()
        for t in ("img", "vec"):
            assert torch.equal(out[t][rows], out[t][rows[:1]].expand_as(out[t][rows])), t


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name,cfg", CASES)
def test_save_load_round_trip(name, cfg, tmp_path):
    model = _model(name, cfg)
    with torch.no_grad():  # away from the initial values: a load that rebuilt a fresh model fails
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loaded = load_model(save_model(model, tmp_path / name))
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    state, state2 = model.state_dict(), loaded.state_dict()
    assert state.keys() == state2.keys()
    for k in state:
        assert torch.equal(state[k], state2[k]), k
    batch = _batch(partial=True)
    torch.testing.assert_close(loaded.encode(batch).mean, model.encode(batch).mean, rtol=0, atol=0)
    for method in ("reconstruct", "cross_generate"):
        torch.manual_seed(1)
        a = getattr(model, method)(batch, sample=True)
        torch.manual_seed(1)
        b = getattr(loaded, method)(batch, sample=True)
        for t in NAMES:
            assert torch.equal(a[t], b[t]), (method, t)
    torch.manual_seed(2)
    a = model.generate(3)
    torch.manual_seed(2)
    b = loaded.generate(3)
    assert all(torch.equal(a[t], b[t]) for t in NAMES)
    losses = []
    for m in (model, loaded):
        torch.manual_seed(3)
        losses.append(m.default_loss().differentiable_loss(m.model, m.guide, batch).detach())
    assert torch.equal(*losses)


def test_config_is_copied_not_mutated():
    cfg = MoPoEConfig(latent_dim=D, subsets=[["img"], ["vec", "cat"]])
    snapshot = dataclasses.replace(cfg, subsets=[list(s) for s in cfg.subsets])
    model = MoPoE(MODS, cfg)
    model.default_loss().differentiable_loss(model.model, model.guide, _batch(partial=False))
    assert cfg == snapshot and model.config is not cfg


# ---------------------------------------------------------------------- MoPoE's custom subsets
@pytest.mark.parametrize("objective", [
    "elbo",
    "stratified_elbo",
    "iwae",
    "dreg",
])
def test_mopoe_rows_outside_every_subset(objective):
    """Subsets {img, vec} and {vec, cat}: the rows observing img alone, vec alone or cat alone
    lie in no subset. They encode to the prior and add nothing to the loss (documented)."""
    model = MoPoE(MODS, MoPoEConfig(latent_dim=D, objective=objective, num_particles=2,
                                    subsets=[["img", "vec"], ["vec", "cat"]]))
    batch = _batch(partial=True)
    outside = torch.tensor([False, True, True, False, True, False])
    z = torch.randn(5, B, D)
    q = model.encode(batch)
    torch.testing.assert_close(q.log_prob(z)[:, outside],
                               model.prior().log_prob(z).expand(5, B)[:, outside])
    loss = model.default_loss()
    if hasattr(loss, "per_datum"):
        per_row = loss.per_datum(model.model, model.guide, batch)
    else:  # the ELBO's single-sample terms log p(X, z) - log q(z | X) of each row
        per_row = importance_log_weights(model.model, model.guide, batch, num_particles=1,
                                         max_plate_nesting=model.max_plate_nesting)[0]
    assert torch.equal(per_row[outside], torch.zeros(int(outside.sum())))
    assert torch.isfinite(per_row).all() and (per_row[~outside] != 0).all()
