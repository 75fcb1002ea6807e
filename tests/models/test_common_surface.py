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
    "dccae": [
        ("default", {}),  # lambda 1, all correlations, ridge 1e-4, pairs need latent_dim + 2 rows
        ("top1-ridge-every-pair", {"top_k": 1, "ridge": 1e-2, "reconstruction_weight": 0.1, "min_pair_rows": 2}),
    ],
    "maae": [
        ("default", {"discriminator_hidden_dims": [8]}),
        ("linear-discriminator", {"discriminator_hidden_dims": [], "adversarial_weight": 0.5}),
    ],
    "mwae": [
        ("default", {}),  # lambda 10, IMQ kernel over 7 scales
        ("one-scale-wide-prior", {"kernel_scales": [1.0], "mmd_weight": 100.0, "prior_scale": 2.0}),
    ],
    "nexus": [
        ("default", {"message_dim": 8, "top_hidden_dims": [8]}),  # forced perceptual dropout 0.2
        ("always-drop-weights", {"dropout_rate": 1.0, "bottom_latent_dim": 2, "message_dim": 4,
                                 "top_hidden_dims": [8], "gammas": {"cat": 5.0}, "top_beta": 0.5}),
        ("mc-particles", {"analytic_kl": False, "num_particles": 2, "dropout_rate": 0.0, "message_dim": 4,
                          "top_hidden_dims": []}),
    ],
    "cvae": [
        ("default", {"encoder_hidden_dims": [16], "prior_hidden_dims": [16]}),  # y = img given vec, cat
        ("no-prior-net-mc-k2", {"prior_network": False, "analytic_kl": False, "num_particles": 2,
                                "encoder_hidden_dims": [16]}),
        ("cat-given-vec", {"main_modality": "cat", "conditioning": ["vec"], "encoder_hidden_dims": [16],
                           "prior_hidden_dims": [16]}),  # img ignored
    ],
    "jnf": [
        ("default", {}),  # 2 MAF layers, analytic KL on Gaussian rows, PoE of bases for subsets
        ("gaussian-mc-k2", {"flow_layers": 0, "analytic_kl": False, "num_particles": 2, "beta": 0.5}),
        ("flows3-small", {"flow_layers": 3, "flow_hidden_dims": [6], "joint_hidden_dims": [8]}),
    ],
    "mhvae": [
        ("default", {}),  # 3 levels, all 7 subsets, shared posterior blocks
        ("capped-k2", {"max_subsets": 3, "num_particles": 2, "level_dims": [3, 2]}),  # subsets drawn per row
        ("flat-mc-kl", {"num_levels": 1, "analytic_kl": False}),
        ("per-modality-blocks", {"num_levels": 2, "shared_posterior_blocks": False}),
    ],
    "telbo": [
        ("default", {"joint_hidden_dims": [16]}),  # lambda = gamma = 1, switch at half the epochs
        ("weighted-mc-k2", {"joint_hidden_dims": [16], "lambda_weights": {"cat": 5.0}, "gamma_weights": {"img": 0.5},
                            "analytic_kl": False, "num_particles": 2, "joint_epochs": 1}),
    ],
    "cmvae": [
        ("default", {"private_latent_dim": 2, "n_clusters": 3}),  # DReG, K = 1, beta 2.5, Laplace
        ("normal-iwae-k2-learned-scale", {"private_latent_dim": 1, "distribution": "normal", "objective": "iwae",
                                          "num_particles": 2, "n_clusters": 4, "learn_prior_scale": True}),
    ],
    "mmvae_plus": [
        ("default", {"private_latent_dim": 2}),  # DReG, K = 1, beta 2.5, Laplace
        ("normal-iwae-k2", {"private_latent_dim": 2, "distribution": "normal", "objective": "iwae",
                            "num_particles": 2}),
        ("elbo-fixed-aux", {"private_latent_dim": 1, "objective": "elbo", "learn_auxiliary_scale": False,
                            "learn_prior_scale": True}),
    ],
    "mvtcae": [
        ("default", {}),  # alpha = 5/6, beta = 2.5
        ("alpha0-mc", {"alpha": 0.0, "beta": 1.0, "analytic_kl": False, "num_particles": 2}),
        ("alpha1", {"alpha": 1.0}),  # one-modality rows have no reconstruction term
    ],
    "crmvae": [
        ("default", {}),
        ("mc-particles", {"analytic_kl": False, "num_particles": 2, "beta": 1.0}),
    ],
    "mmjsd": [
        ("default", {}),  # stratified reconstruction, JS factor (alpha 2.5)
        ("private", {"private_latent_dim": 2}),
        ("alpha0-K2", {"alpha": 0.0, "num_particles": 2}),
    ],
    "gpoe": [
        ("default", {}),  # learned weights, no prior expert
        ("prior-expert-mc", {"prior_expert": True, "analytic_kl": False}),
    ],
    "dmvae": [
        ("default", {}),  # private latent of size 1, unimodal terms without the prior expert
        ("no-private", {"private_latent_dim": 0}),
        ("unimodal-prior-private3", {"unimodal_prior_expert": True, "private_latent_dim": 3, "num_particles": 2}),
    ],
    "dvcca": [
        ("vcca", {}),  # q(z | x_img), the PoE extension for rows without img
        ("private", {"private_latent_dim": 2}),
        ("view-cat", {"encoding_view": "cat", "private_latent_dim": 1}),
    ],
    "mcvae": [
        ("default", {}),
        ("sparse", {"sparse": True}),
        ("sparse-keep-all", {"sparse": True, "dropout_threshold": 1.0, "num_particles": 2, "beta": 0.5}),
    ],
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
        ("siwae-k2", {"objective": "siwae", "num_particles": 2}),
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
        ("siwae", {"objective": "siwae", "num_particles": 2}),
        ("private-siwae", {"private_latent_dim": 2, "objective": "siwae", "num_particles": 2}),
    ],
    "jmvae": [
        ("alpha0", {"alpha": 0.0, "joint_hidden_dims": [16]}),
        ("alpha", {"alpha": 0.5, "joint_hidden_dims": [16]}),
    ],
}


pytestmark = pytest.mark.usefixtures("one_thread")


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


def _gen(model) -> list[str]:
    """The modalities the model generates (all but a conditional model's inputs)."""
    return list(model.generated_modalities)


def _unreached_on_complete_rows(model) -> set[str]:
    """Parameters the default objective leaves untouched (no or zero gradient) when every row
    is complete: JMVAE without its KL terms uses its unimodal encoders only for incomplete rows."""
    if isinstance(model, JMVAE) and model.config.alpha == 0:
        return {n for n, _ in model.named_parameters() if n.startswith("encoders.")}
    if model.name == "telbo":  # stage 1 (the default loss): the joint encoder on complete rows
        return {n for n, _ in model.named_parameters() if n.startswith("encoders.")}
    if model.name == "jnf":  # stage 1: the joint encoder on complete rows; flows train in stage 2
        return {n for n, _ in model.named_parameters() if n.startswith(("encoders.", "flows."))}
    if model.name == "dvcca" and model.config.poe_extension:  # other views encode rows missing the view
        return {n for n, _ in model.named_parameters()
                if n.startswith("encoders.") and not n.startswith(f"encoders.{model.view}.")}
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
    gen = _gen(model)
    target = "img" if "img" in gen else gen[0]
    for sample in (False, True):
        _check_outputs(model.reconstruct(batch, sample=sample), B, gen)
        _check_outputs(model.cross_generate(batch, sample=sample), B, gen)
        _check_outputs(model.cross_generate(batch.restrict([m for m in NAMES if m != target]), [target], sample),
                       B, [target])
    _check_outputs(model.generate(5), 5, gen)
    one = "cat" if "cat" in gen else gen[-1]
    _check_outputs(model.generate(2, targets=[one]), 2, [one])
    with pytest.raises(ValueError, match="nope"):
        model.cross_generate(batch, ["nope"])
    for m in NAMES:  # a modality the model only conditions on cannot be generated
        if m not in gen:
            with pytest.raises(ValueError, match=f"'{m}'"):
                model.cross_generate(batch, [m])
            with pytest.raises(ValueError, match=f"'{m}'"):
                model.generate(2, [m])


@pytest.mark.parametrize("name,cfg", CASES)
def test_cross_generate_ignores_unobserved_modalities(name, cfg):
    model = _model(name, cfg)
    batch = _batch(partial=False).restrict(["vec"])
    other = _data(seed=1)
    changed = MultimodalBatch({"img": other["img"], "vec": batch.data["vec"], "cat": other["cat"]},
                              batch.obs_mask)
    targets = [t for t in ("img", "cat") if t in _gen(model)]
    assert targets
    # private latents of unobserved modalities are drawn from their prior: same seed, same draw
    torch.manual_seed(5)
    out = model.cross_generate(batch, targets)
    torch.manual_seed(5)
    out2 = model.cross_generate(changed, targets)
    for t in targets:
        assert torch.equal(out[t], out2[t]), t
    torch.testing.assert_close(model.encode(changed).mean, model.encode(batch).mean, rtol=0, atol=0)
    # what is observed does matter: to the latent, or (an input of a conditional model, whose
    # latent may be a priori independent of it) to the generations
    moved = MultimodalBatch({**batch.data, "vec": batch.data["vec"] + 3.0}, batch.obs_mask)
    if "vec" in _gen(model):
        assert not torch.equal(model.encode(moved).mean, model.encode(batch).mean)
    else:
        torch.manual_seed(5)
        out3 = model.cross_generate(moved, targets)
        assert any(not torch.equal(out3[t], out[t]) for t in targets)


@pytest.mark.parametrize("name,cfg", CASES)
def test_likelihood_proposal_never_sees_what_it_scores(name, cfg):
    """``iw_guide`` on a batch restricted to ``vec`` (a conditional likelihood's proposal) draws
    and scores the same values whatever the data of the other modalities (private latents of
    unobserved modalities come from their prior, never from ``q(w_m | x_m)``)."""
    from pyro import poutine

    model = _model(name, cfg)
    batch = _batch(partial=False).restrict(["vec"])
    other = _data(seed=1)
    changed = MultimodalBatch({"img": other["img"], "vec": batch.data["vec"], "cat": other["cat"]},
                              batch.obs_mask)
    traces = []
    for b in (batch, changed):
        torch.manual_seed(7)
        tr = poutine.trace(model.iw_guide).get_trace(b)
        tr.compute_log_prob()
        traces.append({k: (v["value"], v["log_prob"]) for k, v in tr.nodes.items() if v["type"] == "sample"})
    assert traces[0].keys() == traces[1].keys() and "z" in traces[0]
    for site, (value, log_prob) in traces[0].items():
        assert torch.equal(value, traces[1][site][0]), site
        assert torch.equal(log_prob, traces[1][site][1]), site


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
    # the conditioning set: a modality the model generates (a conditional model's latent may be
    # a priori independent of its inputs, so rows observing only inputs may encode to p(z) too)
    source = "cat" if "cat" in _gen(model) else _gen(model)[0]
    batch = _batch(partial=True).restrict([source])
    nothing = ~batch.row_mask(source)
    assert nothing.any() and not nothing.all()
    got, expected = model.encode(batch).log_prob(z), prior.log_prob(z).expand(7, B)
    torch.testing.assert_close(got[:, nothing], expected[:, nothing])
    assert not torch.allclose(got[:, ~nothing], expected[:, ~nothing])
    if not _has_private(model):  # every such row decodes the same prior mean
        targets = [t for t in ("img", "vec") if t in _gen(model)] or _gen(model)
        out = model.cross_generate(batch, targets)
        rows = nothing.nonzero().flatten()
        for t in targets:
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
        for t in _gen(model):
            assert torch.equal(a[t], b[t]), (method, t)
    torch.manual_seed(2)
    a = model.generate(3)
    torch.manual_seed(2)
    b = loaded.generate(3)
    assert a.keys() == b.keys() == set(_gen(model))
    assert all(torch.equal(a[t], b[t]) for t in _gen(model))
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


# ---------------------------------------------------------------------- metrics and samplers
DEFAULTS = [pytest.param(name, {}, id=name) for name in registered_models()]


def _labelled(partial: bool) -> MultimodalBatch:
    batch = _batch(partial)
    return MultimodalBatch(batch.data, batch.obs_mask, torch.arange(B) % 2)


@pytest.mark.parametrize("name,cfg", DEFAULTS)
def test_log_likelihood_joint_and_conditional(name, cfg):
    """Joint ``log p(X_O)`` scores every row that observes something, conditional
    ``log p(x_img | x_vec)`` the rows observing both; estimates are finite, seeded runs repeat,
    and a row's joint estimate does not depend on the data of the modalities it misses."""
    from pyromv.metrics import log_likelihood

    model = _model(name, cfg)
    batch = _batch(partial=True)
    if not getattr(model, "has_likelihood", True):  # deterministic autoencoders (DCCAE, mAAE, mWAE)
        with pytest.raises(ValueError, match="has no likelihood"):
            log_likelihood(model, batch, K=8, khat=False, seed=0)
        return
    joint = log_likelihood(model, batch, K=8, khat=False, seed=0)
    # every row observing a modality the model generates (a conditional model: its output)
    scored = torch.stack([batch.row_mask(m) for m in _gen(model)]).any(0).nonzero().flatten()
    assert torch.equal(joint.rows, scored) and torch.isfinite(joint.values).all()
    again = log_likelihood(model, batch, K=8, khat=False, seed=0)
    assert torch.equal(joint.values, again.values)  # seeded
    target = "img" if "img" in _gen(model) else _gen(model)[0]
    cond = log_likelihood(model, batch, K=8, given=["vec"], targets=[target], khat=False, seed=0)
    both = (batch.row_mask("vec") & batch.row_mask(target)).nonzero().flatten()
    assert torch.equal(cond.rows, both) and torch.isfinite(cond.values).all()
    # a row's joint estimate depends only on what it observes
    other = _data(seed=4)
    hidden = {m: torch.where(batch.row_mask(m).view(-1, *[1] * (v.dim() - 1)), batch.data[m], other[m])
              for m, v in batch.data.items()}
    changed = log_likelihood(model, MultimodalBatch(hidden, batch.obs_mask), K=8, khat=False, seed=0)
    torch.testing.assert_close(changed.values, joint.values)


@pytest.mark.parametrize("name,cfg", DEFAULTS)
def test_coherence(name, cfg):
    """Cross-modal and joint coherence run on every model with per-modality classifiers;
    classifiers that are always right (always wrong) give coherence 1 (0) whatever is generated."""
    from pyromv.metrics import cross_coherence, joint_coherence

    model = _model(name, cfg)
    batch = _labelled(partial=True)
    first_pixel = {
        "img": lambda x: torch.stack([x.flatten(1)[:, 0], 1 - x.flatten(1)[:, 0]], -1),
        "vec": lambda x: x[:, :2],
        "cat": lambda x: torch.nn.functional.one_hot(x[:, 0].clamp(max=1), 2).float(),
    }
    result = cross_coherence(model, batch, first_pixel)
    assert result.by_size and all(0.0 <= v <= 1.0 for v in result.by_size.values())
    assert all(set(v) <= set(_gen(model)) for v in result.by_pair.values())
    if len(_gen(model)) > 1:
        assert 0.0 <= joint_coherence(model, first_pixel, n=16) <= 1.0
    else:  # one generated modality: nothing to agree with
        with pytest.raises(ValueError, match="two generated modalities"):
            joint_coherence(model, first_pixel, n=16)
    # every row of class 0: a classifier always answering 0 is always right, one answering 1 never
    zeros = MultimodalBatch(batch.data, batch.obs_mask, torch.zeros(B, dtype=torch.long))
    for answer, expected in ((0, 1.0), (1, 0.0)):
        constant = {m: (lambda x, a=answer: torch.nn.functional.one_hot(
            torch.full((x.shape[0],), a), 2).float()) for m in NAMES}
        result = cross_coherence(model, zeros, constant)
        assert result.by_size and all(v == expected for v in result.by_size.values())


@pytest.mark.parametrize("sampler", ["prior", "gmm"])
@pytest.mark.parametrize("name,cfg", DEFAULTS)
def test_samplers_generate_data(name, cfg, sampler):
    """Latent samplers fit every model and decode synthetic rows; the prior sampler's density is
    the model's own prior (Normal or Laplace)."""
    from pyromv.samplers import build_sampler

    model = _model(name, cfg)
    data = mcar(MultimodalDataset(MODS, _data(n=24, seed=3)), 0.3, seed=1)
    fitted = build_sampler(sampler, **({"n_components": 2} if sampler == "gmm" else {})).fit(model, data)
    synthetic = fitted.generate(5)
    assert len(synthetic) == 5
    _check_outputs(synthetic.batch().data, 5, _gen(model))
    if sampler == "prior":
        z = 2.0 * torch.randn(7, D)
        torch.testing.assert_close(fitted.log_density(z), model.prior().log_prob(z))
