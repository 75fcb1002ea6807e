"""TELBO (Vedantam et al. 2018): each stage's loss and gradients equal a hand-written torch
reference; stage 2 trains only the unimodal encoders, with a fresh optimiser from the switch on;
a killed run resumes across the switch; identities on the linear-Gaussian oracle (the stage-2
objective at the exact unimodal posteriors is -sum_m log p(x_m), and Adam on it finds them);
inference from any subset; masking a modality equals removing it; clear errors."""

from __future__ import annotations

import functools
import math

import pyro
import pytest
import torch

from pyromv.data import MultimodalBatch, make_batch
from pyromv.infer import importance_log_weights
from pyromv.models import TELBO, TELBOConfig
from pyromv.models.io import load_weights
from pyromv.testing import assert_matches_reference, assert_same_loss_and_grads
from pyromv.testing.reference.telbo import telbo_reference_loss, telbo_unimodal_reference_loss
from pyromv.training import Trainer, frozen_except
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    mixed_row_masks,
    modalities,
    set_decoders,
    set_unimodal_posterior_encoders,
)
from tests.training import test_trainer as tt

CONFIGS = {
    "default": {},
    "weights-k3-beta2-dims": {"num_particles": 3, "beta": 2.0, "likelihood_rescaling": "dims",
                              "lambda_weights": {"tag": 5.0, "img": 0.5}, "gamma_weights": {"vec": 3.0, "tag": 0.2}},
    "mc-kl-prior2": {"analytic_kl": False, "num_particles": 2, "prior_scale": 2.0, "gamma_weights": {"img": 2.0}},
}


def _batch(missing: float, n: int = 16):
    return shared.batch(missing, n)


def _telbo(mods=MODS, seed: int = 0, **cfg) -> TELBO:
    torch.manual_seed(seed)
    cfg.setdefault("joint_hidden_dims", [16])
    return TELBO(mods, TELBOConfig(latent_dim=4, **cfg))


def _names(model, prefix: str, inside: bool = True) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix) == inside}


def _stage2_loss(model, batch, loss=None):
    loss = loss or model.unimodal_loss()
    return loss.differentiable_loss(model.unimodal_model, model.unimodal_guide, batch)


# ---------------------------------------------------------------------- reference equality
@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_stage1_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _telbo(**cfg)
    batch = _batch(missing)
    assert missing == 0 or not batch.obs_mask["img"].all()
    # complete rows use the joint encoder only: the unimodal encoders get no gradient from them
    unreached = _names(model, "encoders.") if missing == 0 else set()
    grads = assert_matches_reference(model, telbo_reference_loss, batch, unreached=unreached)
    if missing:
        assert all(grads[n] is not None and grads[n].abs().any() for n in _names(model, "encoders."))


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_stage2_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _telbo(**cfg)
    batch = _batch(missing)
    grads = assert_same_loss_and_grads(
        model, lambda: _stage2_loss(model, batch), lambda: telbo_unimodal_reference_loss(model, batch),
        unreached=_names(model, "joint_encoder."))
    assert all(grads[n] is None for n in _names(model, "joint_encoder."))  # stage 2 never runs it


def test_the_reference_checks_can_fail():
    """Positive controls: another gamma, and MultiVae's KL with the joint log-variance in place
    of q_m's own, both differ from the stage-2 loss; another lambda from the stage-1 loss."""
    model = _telbo(gamma_weights={"vec": 2.0}, lambda_weights={"tag": 3.0})
    batch = _batch(0.4)

    def with_config(reference, **change):
        def run(m, b):
            old = {k: getattr(m.config, k) for k in change}
            for k, v in change.items():
                setattr(m.config, k, v)
            try:
                return reference(m, b)
            finally:
                for k, v in old.items():
                    setattr(m.config, k, v)
        return run

    with pytest.raises(AssertionError, match="are not close"):
        assert_matches_reference(model, with_config(telbo_reference_loss, lambda_weights={"tag": 1.0}), batch)
    with pytest.raises(AssertionError, match="are not close"):
        assert_same_loss_and_grads(model, lambda: _stage2_loss(model, batch),
                                   lambda: with_config(telbo_unimodal_reference_loss, gamma_weights={})(model, batch))

    def joint_variance_kl(m, b):  # MultiVae's stage-2 KL: q_m's mean with the joint encoder's variance
        loc, scale, mask = (t.detach() for t in m.experts(b))
        j_scale = m.joint_params(b)[1]
        own = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)
        bug = 0.5 * (scale**2 + loc**2 - 1 - 2 * j_scale.unsqueeze(-2).log()).sum(-1)
        return telbo_unimodal_reference_loss(m, b) + torch.where(mask, bug - own, 0.0).sum()

    with pytest.raises(AssertionError, match="are not close"):
        assert_same_loss_and_grads(model, lambda: _stage2_loss(model, batch), lambda: joint_variance_kl(model, batch))


# ---------------------------------------------------------------------- the stages
def _tt_telbo(seed: int = 0, **cfg) -> TELBO:
    torch.manual_seed(seed)
    return TELBO(tt.MODS, TELBOConfig(latent_dim=tt.D, joint_hidden_dims=[8], **cfg))


def test_stages_map_the_config_and_follow_the_paper():
    model = _tt_telbo(joint_epochs=3)
    joint, unimodal = model.stages()
    assert (joint.name, joint.epochs, tuple(joint.trainable)) == ("joint", 3, ())
    assert (unimodal.name, unimodal.epochs, tuple(unimodal.trainable)) == ("unimodal", None, ("encoders.",))
    assert joint.loss.max_plate_nesting == 1 and unimodal.loss.max_plate_nesting == 2
    assert unimodal.validation[0].beta == 1.0
    assert not _names(model, "encoders.") & _names(model, "joint_encoder.")
    history = Trainer(_tt_telbo(joint_epochs=0.25), config=tt._config(epochs=8)).fit(tt._dataset())
    assert [r["stage"] for r in history] == ["joint"] * 2 + ["unimodal"] * 6


def test_stage2_trains_only_the_unimodal_encoders_with_a_fresh_optimiser(tmp_path):
    """Stage 2 leaves the joint encoder, decoders and likelihood heads bitwise unchanged while
    every unimodal encoder moves; its optimiser holds only the encoders and has taken exactly
    stage 2's steps (reset at the switch, not an epoch early)."""
    model = _tt_telbo(joint_epochs=2)
    snaps, steps = {}, {}

    def keep(trainer, record):
        snaps[record["epoch"]] = {k: v.detach().clone() for k, v in model.named_parameters()}
        steps[record["epoch"]] = trainer.step

    trainer = Trainer(model, config=tt._config(epochs=4), checkpoint_dir=tmp_path, callbacks=[keep])
    history = trainer.fit(tt._dataset())
    assert [r["stage"] for r in history] == ["joint"] * 2 + ["unimodal"] * 2
    for epoch in (3, 4):
        for name, value in snaps[epoch].items():
            moved = not torch.equal(value, snaps[epoch - 1][name])
            assert moved == name.startswith("encoders."), (epoch, name)
    # in stage 1 the joint encoder and the decoders move
    assert any(not torch.equal(snaps[2][n], snaps[1][n]) for n in _names(model, "joint_encoder."))
    assert any(not torch.equal(snaps[2][n], snaps[1][n]) for n in _names(model, "decoders."))
    params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert params == {id(p) for n, p in model.named_parameters() if n.startswith("encoders.")}
    stage2_steps = steps[4] - steps[2]
    assert stage2_steps > 0
    for state in trainer.optimizer.state.values():
        assert int(state["step"]) == stage2_steps
    assert all(p.requires_grad for p in model.parameters())


def test_a_plain_svi_script_runs_stage2_under_frozen_except():
    model = _telbo()
    batch = _batch(0.4)
    stage = model.stages()[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with frozen_except(model, stage):
        svi = pyro.infer.SVI(stage.model, stage.guide, pyro.optim.Adam({"lr": 1e-2}), stage.loss)
        for _ in range(2):
            assert math.isfinite(svi.step(batch))
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == {k for k in before if k.startswith("encoders.")}
    assert len(pyro.get_param_store()) == 0


@pytest.mark.parametrize("killed_at", [1, 2, 3], ids=["mid-stage-1", "at-the-switch", "mid-stage-2"])
def test_a_killed_run_resumes_across_the_switch_to_the_same_weights(tmp_path, killed_at):
    class Killed(RuntimeError):
        pass

    def kill(trainer, record):
        if record["epoch"] == killed_at:
            raise Killed

    ds = tt._dataset()
    whole = _tt_telbo(seed=0, joint_epochs=2)
    expected = Trainer(whole, config=tt._config(epochs=4), checkpoint_dir=tmp_path / "whole").fit(ds)
    with pytest.raises(Killed):
        Trainer(_tt_telbo(seed=0, joint_epochs=2), config=tt._config(epochs=4), checkpoint_dir=tmp_path / "run",
                callbacks=[kill]).fit(ds)
    again = _tt_telbo(seed=99, joint_epochs=2)  # a new process builds the model anew
    history = Trainer(again, config=tt._config(epochs=4), checkpoint_dir=tmp_path / "run").fit(ds)
    assert tt._losses(history) == tt._losses(expected)
    assert [r["stage"] for r in history] == [r["stage"] for r in expected] == ["joint"] * 2 + ["unimodal"] * 2
    tt._assert_same_state(whole.state_dict(), again.state_dict())
    tt._assert_same_state(load_weights(tmp_path / "whole" / "last"), load_weights(tmp_path / "run" / "last"))


# ---------------------------------------------------------------------- inference
def test_posterior_is_the_joint_encoder_on_complete_rows_and_the_product_of_experts_elsewhere():
    model = _telbo()
    batch = _batch(0.0, n=8)
    masks = {"img": torch.tensor([1, 1, 0, 0, 1, 0, 0, 1], dtype=torch.bool),
             "vec": torch.tensor([1, 0, 1, 0, 1, 0, 1, 1], dtype=torch.bool),
             "tag": torch.tensor([1, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)}
    partial = MultimodalBatch(batch.data, masks)
    with torch.no_grad():
        q = model.encode(partial)
        j_loc, j_scale = model.joint_params(batch)
        loc, scale, _ = model.experts(batch)
    for row in (0, 7):  # complete
        torch.testing.assert_close(q.mean[row], j_loc[row])
        torch.testing.assert_close(q.stddev[row], j_scale[row])
    torch.testing.assert_close(q.mean[1], loc[1, 0])  # img alone: q_img exactly
    torch.testing.assert_close(q.stddev[5], scale[5, 2])  # tag alone
    torch.testing.assert_close(q.mean[3], model.prior_loc)  # nothing: the prior
    torch.testing.assert_close(q.stddev[3], model.prior_scale)
    for row, (a, b) in ((4, (0, 1)), (6, (1, 2))):  # two of three: product without a prior expert
        prec = scale[row, a] ** -2 + scale[row, b] ** -2
        torch.testing.assert_close(q.stddev[row], prec.rsqrt())
        torch.testing.assert_close(q.mean[row], (loc[row, a] * scale[row, a] ** -2 + loc[row, b] * scale[row, b] ** -2)
                                   / prec)
    # on a complete batch the same rows encode to the joint encoder
    torch.testing.assert_close(model.encode(batch).mean, j_loc)


def test_masking_a_modality_equals_removing_it():
    """A model without ``tag`` (same unimodal encoders and decoders): the stage-2 loss of a batch
    missing ``tag`` is the same (its z draws for img, vec coincide), and so is the stage-1 loss
    of rows that observe one modality (the joint encoder is not used there)."""
    full = _telbo(gamma_weights={"vec": 2.0, "tag": 3.0}, lambda_weights={"img": 0.7})
    small = _telbo(MODS[:2], gamma_weights={"vec": 2.0}, lambda_weights={"img": 0.7})
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("joint_encoder.") and ".tag" not in k}
    small.load_state_dict(state, strict=False)
    batch = _batch(0.0, n=8)
    one = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    masks = {"img": one, "vec": ~one, "tag": torch.zeros(8, dtype=torch.bool)}
    b_full = make_batch(MODS, batch.data, masks)
    b_small = make_batch(MODS[:2], {m: batch.data[m] for m in ("img", "vec")}, {m: masks[m] for m in ("img", "vec")})
    for stage in (0, 1):
        values = []
        for model, b in ((full, b_full), (small, b_small)):
            s = model.stages()[stage]
            torch.manual_seed(4)
            values.append(s.loss.differentiable_loss(s.model, s.guide, b))
        torch.testing.assert_close(values[0], values[1])


# ---------------------------------------------------------------------- the linear-Gaussian oracle
DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT, N = 2, 70  # 10 rows of each of the 7 observation patterns
F64 = pytest.mark.usefixtures("float64")


@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


def _oracle_model(perturb: bool = False, **cfg) -> TELBO:
    lg = _lg()
    torch.manual_seed(0)
    model = TELBO(modalities(lg), TELBOConfig(latent_dim=LATENT, joint_hidden_dims=[8], **cfg))
    set_decoders(model, lg)
    set_unimodal_posterior_encoders(model, lg)  # q_m(z | x_m) = p(z | x_m)
    if perturb:
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            for m in model.names:
                enc = model.encoders[m]
                enc.linear.weight.add_(0.5 * torch.randn(enc.linear.weight.shape, generator=g))
                enc.linear.bias.add_(0.5 * torch.randn(enc.linear.bias.shape, generator=g))
                enc.log_scale.add_(0.7)
    return model


def _unimodal_log_p(lg, data, masks) -> torch.Tensor:
    """``sum_{m in O} log p(x_m)`` of each row (closed form)."""
    none = torch.zeros(N, dtype=torch.bool)
    return sum(torch.where(masks[m], lg.log_marginal(data, {n: masks[m] if n == m else none for n in lg.names}), 0.0)
               for m in lg.names)


@F64
def test_stage2_objective_at_the_exact_unimodal_posteriors_is_minus_sum_of_log_p():
    """gamma = 1, exact decoders, q_m = p(z | x_m): every draw of the Monte Carlo stage-2 loss
    is ``-sum_b sum_{m in O_b} log p(x_{b,m})`` (zero variance); perturbed encoders are below."""
    lg = _lg()
    data = lg.sample(N, seed=2)
    masks = mixed_row_masks(lg.names, N, seed=3)
    exact = _unimodal_log_p(lg, data, masks)
    model = _oracle_model(analytic_kl=False, num_particles=3)
    batch = make_batch(model.modalities, data, masks)
    for _ in range(2):
        torch.testing.assert_close(_stage2_loss(model, batch), -exact.sum(), rtol=1e-10, atol=1e-8)
    log_w = importance_log_weights(model.unimodal_model, model.unimodal_guide, batch, num_particles=5,
                                   max_plate_nesting=2)
    torch.testing.assert_close(log_w, exact.expand(5, N), rtol=1e-10, atol=1e-8)
    # the closed-form ELBOs of perturbed encoders: the estimate matches them, below sum log p
    model = _oracle_model(perturb=True)
    reps = 200
    with torch.no_grad():
        est = torch.stack([-_stage2_loss(model, batch) for _ in range(reps)])
        closed = 0.0
        none = torch.zeros(N, dtype=torch.bool)
        for m in lg.names:
            loc, scale = model.encoders[m](data[m])
            elbo = lg.elbo(data, loc, scale, {n: masks[m] if n == m else none for n in lg.names})
            closed = closed + torch.where(masks[m], elbo, 0.0).sum()
    se = est.std() / math.sqrt(reps)
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(est.mean() - closed) < 4 * se
    # statistical check: detection at 10 SE: an absent effect would pass with probability 7.6e-24
    assert closed < exact.sum() - 10 * se


@F64
def test_adam_on_stage2_finds_the_exact_unimodal_posteriors():
    """With exact decoders frozen, minimising stage 2 over linear-Gaussian q_m recovers
    ``p(z | x_m)`` (mean map and variance): q_m's own variance is trained, not the joint one."""
    lg = _lg()
    target = _oracle_model()
    model = _oracle_model(perturb=True, num_particles=8)
    data = lg.sample(200, seed=5)
    batch = make_batch(model.modalities, data)
    stage = model.stages()[1]
    loss = stage.loss
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoders.")}
    with frozen_except(model, stage):
        opt = torch.optim.Adam(stage.parameters(model), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.3)
        for _ in range(300):
            opt.zero_grad()
            (_stage2_loss(model, batch, loss) / 200).backward()
            opt.step()
            sched.step()
    for k, v in frozen.items():
        assert torch.equal(model.state_dict()[k], v), k
    with torch.no_grad():
        for m in model.names:  # q_m(z | x_m) of each row against the exact p(z | x_m)
            (loc, scale), (want_loc, want_scale) = model.encoders[m](data[m]), target.encoders[m](data[m])
            start = _oracle_model(perturb=True).encoders[m](data[m])
            assert (start[0] - want_loc).abs().max() > 0.3 and (start[1] / want_scale - 1).abs().max() > 0.5
            # a seeded optimisation (deterministic outcome, no false-alarm rate): the tolerances are
            # those of convergence, against a start more than 6x (loc) and 25x (scale) further away
            torch.testing.assert_close(loc, want_loc, rtol=0, atol=0.05, msg=m)
            torch.testing.assert_close(scale, want_scale, rtol=0.02, atol=0, msg=m)


@F64
def test_stage1_elbo_is_a_bound_and_tight_on_one_modality_rows():
    """The evaluation ELBO (lambda = 1) of each row is below the closed-form log p(X_O) (mean of
    single-draw log-weights and its standard error); a row observing one modality uses q_m,
    here the exact p(z | x_m), so its weight is log p(x_m) for every draw. The lambda-weighted
    stage-1 loss is not what the trainer reports."""
    lg = _lg()
    data = lg.sample(N, seed=2)
    masks = mixed_row_masks(lg.names, N, seed=3)
    log_p = lg.log_marginal(data, masks)
    model = _oracle_model(lambda_weights={"a": 3.0})
    batch = make_batch(model.modalities, data, masks)
    reps = 400
    with torch.no_grad():
        log_w = importance_log_weights(model.evaluation_model(), model.evaluation_guide(), batch,
                                       num_particles=reps, max_plate_nesting=1)
    mean, se = log_w.mean(0), log_w.std(0) / math.sqrt(reps)
    # statistical check: 4 SE one-sided: false-alarm rate 3.2e-5 per entry, summed over entries (normal approx.)
    assert (mean <= log_p + 4 * se + 1e-9).all()
    one = sum(masks[m].long() for m in lg.names) == 1
    torch.testing.assert_close(log_w[:, one], log_p[one].expand(reps, -1), rtol=1e-10, atol=1e-8)
    assert (se[~one] > 0).all()
    weighted = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    plain = model.evaluation_loss().differentiable_loss(model.evaluation_model(), model.evaluation_guide(), batch)
    assert not torch.allclose(weighted, plain)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [
    {"joint_epochs": 0}, {"joint_epochs": -1}, {"joint_epochs": 1.5}, {"joint_epochs": True},
    {"lambda_weights": {"img": -1.0}}, {"gamma_weights": {"vec": float("nan")}},
    {"gamma_weights": {"vec": "2"}},
])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError, match="TELBO"):
        TELBO(MODS, TELBOConfig(latent_dim=4, **bad))


def test_weights_of_unknown_modalities_and_non_dicts_are_refused():
    with pytest.raises(ValueError, match="'nope'"):
        TELBO(MODS, TELBOConfig(latent_dim=4, gamma_weights={"nope": 2.0}))
    with pytest.raises(TypeError, match="lambda_weights"):
        TELBO(MODS, TELBOConfig(latent_dim=4, lambda_weights=[1.0, 2.0]))


def test_the_trainer_refuses_a_single_loss_for_the_staged_model():
    with pytest.raises(ValueError, match="stages"):
        Trainer(_telbo(), loss=_telbo().default_loss())
