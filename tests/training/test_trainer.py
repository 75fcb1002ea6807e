"""Trainer: history, exact resume, early stopping, NaN detection, clipping, atomic checkpoints,
RNG state, KL warm-up and evaluation."""

import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import pyromv.training.checkpoint as checkpoint_module
from pyromv.data import Modality, MultimodalDataset, mcar
from pyromv.infer import ELBO
from pyromv.models import MVAE, MVAEConfig, load_model, save_model
from pyromv.models.io import load_weights
from pyromv.training import (
    NonFiniteLossError,
    Trainer,
    TrainerConfig,
    find_checkpoint,
    write_checkpoint,
)
from pyromv.training.checkpoint import STATE_NAME, read_state, rng_state, set_rng_state

N, D, BS = 24, 2, 8
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality("a", (3,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
    Modality("b", (4,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
    Modality("c", (2,), "categorical", {"num_categories": 3}, encoder=MLP, decoder=MLP),
]


def _dataset(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    data = {
        "a": z @ torch.randn(2, 3, generator=g) + 0.1 * torch.randn(n, 3, generator=g),
        "b": z @ torch.randn(2, 4, generator=g) + 0.1 * torch.randn(n, 4, generator=g),
        "c": (z[:, :1] > 0).long().expand(n, 2) + (z[:, 1:] > 1).long(),
    }
    return mcar(MultimodalDataset(MODS, data), 0.3, seed=seed)


def _model(seed=0, **cfg):
    torch.manual_seed(seed)
    return MVAE(MODS, MVAEConfig(latent_dim=D, **cfg))


def _config(**kw):
    base = {"epochs": 2, "batch_size": BS, "val_fraction": 0.25, "progress": False, "lr": 1e-2}
    base.update(kw)
    return TrainerConfig(**base)


def _losses(history):
    return [(r["epoch"], r["train_loss"], r.get("val_loss"), r["improved"]) for r in history]


def _assert_same_state(sd1, sd2):
    assert set(sd1) == set(sd2)  # safetensors returns its keys sorted
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k


# ====================================================================== fit and history


def test_fit_returns_history(tmp_path):
    model = _model()
    trainer = Trainer(model, config=_config(epochs=3), checkpoint_dir=tmp_path / "ck")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = trainer.fit(_dataset())
    assert history is trainer.history
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for r in history:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
        assert isinstance(r["improved"], bool)
    assert trainer.epoch == 3 and trainer.step == 3 * math.ceil(18 / BS)
    assert not trainer.stopped_early
    # the model ends with the best weights
    _assert_same_state(model.state_dict(), load_weights(tmp_path / "ck" / "best"))
    assert (tmp_path / "ck" / "last" / STATE_NAME).is_file()


def test_fit_without_validation_or_checkpoints():
    trainer = Trainer(_model(), config=_config(epochs=2, val_fraction=0.0))
    history = trainer.fit(_dataset())
    assert len(history) == 2
    assert all("val_loss" not in r for r in history)
    assert all(math.isfinite(r["train_loss"]) for r in history)


def test_train_loss_is_a_per_row_mean():
    model = _model(objective="elbo")
    train = _dataset()
    trainer = Trainer(
        model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        config=_config(epochs=1, val_fraction=0.0),
    )
    reported = trainer.fit(train)[0]["train_loss"]
    # with lr = 0 the epoch's loss is the per-row negative ELBO of the training set
    values = torch.tensor([trainer.evaluate(train) for _ in range(20)])
    # statistical check: one pass's sd is 0.22 nats (measured over 200 passes) and the tolerance 1.4 nats
    # is over 6 of them: false-alarm rate < 2e-9 (normal approx.)
    assert abs(reported - values.mean().item()) < 0.1 * abs(values.mean().item())


# ====================================================================== exact resume


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    ds = _dataset()
    one = _model(seed=0)
    hist_one = Trainer(one, config=_config(epochs=4), checkpoint_dir=tmp_path / "one").fit(ds)

    first = _model(seed=0)
    Trainer(first, config=_config(epochs=2), checkpoint_dir=tmp_path / "two").fit(ds)
    # a fresh process would build the model anew, even with other initial weights
    second = _model(seed=123)
    trainer = Trainer(second, config=_config(epochs=4), checkpoint_dir=tmp_path / "two")
    hist_two = trainer.fit(ds)

    assert _losses(hist_one) == _losses(hist_two)
    assert len(hist_two) == 4
    _assert_same_state(one.state_dict(), second.state_dict())
    _assert_same_state(
        load_weights(tmp_path / "one" / "last"), load_weights(tmp_path / "two" / "last")
    )
    s1, s2 = read_state(tmp_path / "one" / "last"), read_state(tmp_path / "two" / "last")
    assert s1["step"] == s2["step"] and s1["epoch"] == s2["epoch"] == 4
    for k, v in s1["optimizer"]["state"].items():
        for name, t in v.items():
            other = s2["optimizer"]["state"][k][name]
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(other))


def test_resume_false_starts_over(tmp_path):
    ds = _dataset()
    Trainer(_model(), config=_config(epochs=2), checkpoint_dir=tmp_path / "ck").fit(ds)
    trainer = Trainer(_model(), config=_config(epochs=1), checkpoint_dir=tmp_path / "ck")
    history = trainer.fit(ds, resume=False)
    assert [r["epoch"] for r in history] == [1]


def test_resume_refuses_another_model(tmp_path):
    ds = _dataset()
    Trainer(_model(), config=_config(epochs=1), checkpoint_dir=tmp_path / "ck").fit(ds)
    other = MVAE(MODS, MVAEConfig(latent_dim=D + 1))
    with pytest.raises(ValueError, match="different model"):
        Trainer(other, config=_config(epochs=2), checkpoint_dir=tmp_path / "ck").fit(ds)
    other_mods = [MODS[0], MODS[1], Modality("c", (2,), "categorical", {"num_categories": 4},
                                             encoder=MLP, decoder=MLP)]
    with pytest.raises(ValueError, match="different model"):
        Trainer(MVAE(other_mods, MVAEConfig(latent_dim=D)), config=_config(epochs=2),
                checkpoint_dir=tmp_path / "ck").fit(ds)


def test_resume_from_interrupted_swap(tmp_path):
    ds = _dataset()
    ck = tmp_path / "ck"
    h = Trainer(_model(), config=_config(epochs=2), checkpoint_dir=ck).fit(ds)
    saved = load_weights(ck / "last")
    os.replace(ck / "last", ck / ".last.old")  # the crash hit between the two renames
    assert find_checkpoint(ck / "last") == ck / ".last.old"
    trainer = Trainer(_model(seed=5), config=_config(epochs=2), checkpoint_dir=ck)
    assert trainer._resume()
    _assert_same_state(trainer.model.state_dict(), saved)
    trainer = Trainer(_model(seed=5), config=_config(epochs=3), checkpoint_dir=ck)
    h2 = trainer.fit(ds)
    assert _losses(h2)[:2] == _losses(h)
    assert len(h2) == 3
    assert find_checkpoint(ck / "last") == ck / "last"


# ====================================================================== early stopping


def test_early_stopping(tmp_path):
    model = _model()
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg = _config(epochs=10, patience=1, min_delta=1e9)  # nothing after epoch 1 counts as better
    trainer = Trainer(model, optimizer=frozen, config=cfg, checkpoint_dir=tmp_path / "ck")
    history = trainer.fit(_dataset())
    assert trainer.stopped_early
    assert len(history) == 2
    assert [r["improved"] for r in history] == [True, False]
    # a resumed trainer knows it stopped
    again = Trainer(_model(), config=_config(epochs=10, patience=1), checkpoint_dir=tmp_path / "ck")
    assert len(again.fit(_dataset())) == 2
    assert again.stopped_early


def test_patience_counts_stale_epochs():
    model = _model()
    cfg = _config(epochs=10, patience=3, min_delta=1e9)
    trainer = Trainer(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), config=cfg)
    assert len(trainer.fit(_dataset())) == 4
    assert trainer.stopped_early


def test_patience_zero_never_stops():
    model = _model()
    cfg = _config(epochs=3, patience=0, min_delta=1e9)
    trainer = Trainer(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), config=cfg)
    assert len(trainer.fit(_dataset())) == 3
    assert not trainer.stopped_early


# ====================================================================== non-finite losses


class _Injected:
    """An objective that behaves like ``base`` and then turns bad after ``after`` calls."""

    def __init__(self, after, how="nan_loss"):
        self.base = ELBO(max_plate_nesting=1)
        self.after = after
        self.how = how
        self.calls = 0

    def differentiable_loss(self, model, guide, batch):
        self.calls += 1
        loss = self.base.differentiable_loss(model, guide, batch)
        if self.calls <= self.after:
            return loss
        if self.how == "nan_loss":
            return loss * float("nan")
        # finite loss, NaN gradient on a parameter: the branch torch.where does not select
        # still back-propagates (0 * NaN)
        p = next(model.__self__.parameters())
        bad = torch.sqrt(p.sum() - p.sum().detach() - 1.0)
        return loss + torch.where(torch.tensor(False), bad, torch.zeros(()))


def _snapshots():
    snaps = []

    def callback(trainer, record):
        snaps.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    return snaps, callback


_FLOAT_OF_GRAD_TENSOR = "ignore:Converting a tensor with requires_grad=True to a scalar"


def _nan_loss_run(tmp_path):
    ck = tmp_path / "ck"
    snaps, callback = _snapshots()
    steps_per_epoch = math.ceil(18 / BS)
    trainer = Trainer(_model(), loss=_Injected(after=2 * steps_per_epoch), config=_config(epochs=5),
                      checkpoint_dir=ck, callbacks=[callback])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(_dataset())
    return ck, snaps, steps_per_epoch, str(info.value)


def test_nan_loss_raises_without_stray_warning(tmp_path):
    _nan_loss_run(tmp_path)


@pytest.mark.filterwarnings(_FLOAT_OF_GRAD_TENSOR)
def test_nan_loss_raises_and_keeps_last_checkpoint(tmp_path):
    ck, snaps, steps_per_epoch, msg = _nan_loss_run(tmp_path)
    assert f"step {2 * steps_per_epoch}" in msg
    assert "epoch 3" in msg
    assert str(ck / "last") in msg
    assert len(snaps) == 2
    assert find_checkpoint(ck / "last") == ck / "last"
    loaded = load_model(ck / "last")
    _assert_same_state(loaded.state_dict(), snaps[-1])
    assert read_state(ck / "last")["epoch"] == 2


@pytest.mark.filterwarnings(_FLOAT_OF_GRAD_TENSOR)
def test_nan_loss_without_checkpoint_dir():
    trainer = Trainer(_model(), loss=_Injected(after=1), config=_config())
    with pytest.raises(NonFiniteLossError, match="step 1") as info:
        trainer.fit(_dataset())
    assert "checkpoint" not in str(info.value)


def test_nan_gradient_is_caught_with_grad_clip(tmp_path):
    trainer = Trainer(_model(), loss=_Injected(after=1, how="nan_grad"),
                      config=_config(grad_clip=1.0), checkpoint_dir=tmp_path / "ck")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # the first step is fine; the error comes before the second step updates the weights
    with pytest.raises(NonFiniteLossError, match="gradient norm.*step 1"):
        trainer.fit(_dataset())
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(v, before[k]) for k, v in after.items())


@pytest.mark.filterwarnings(_FLOAT_OF_GRAD_TENSOR)
@pytest.mark.filterwarnings("ignore:Encountered NaN")  # pyro's warning on the NaN-weight losses
def test_nan_gradient_without_clipping_never_reaches_a_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    steps_per_epoch = math.ceil(18 / BS)
    # the last step of epoch 2 has a NaN gradient (finite loss): epoch 1's checkpoint stays
    trainer = Trainer(_model(), loss=_Injected(after=2 * steps_per_epoch - 1, how="nan_grad"),
                      config=_config(epochs=3), checkpoint_dir=ck)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        trainer.fit(_dataset())
    found = find_checkpoint(ck / "last")
    assert found is not None and read_state(found)["epoch"] == 1
    weights = load_weights(found)
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    assert not bad, f"non-finite weights in {found}: {bad}"


# ====================================================================== gradient clipping


def _grad_norms(model, clip):
    norms = []
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def hook(optimizer, args, kwargs):
        grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).norm().item())

    opt.register_step_pre_hook(hook)
    Trainer(model, optimizer=opt, config=_config(epochs=2, grad_clip=clip)).fit(_dataset())
    return norms


def test_grad_clip_caps_the_norm():
    clip = 1.0
    unclipped = _grad_norms(_model(), 0.0)
    assert max(unclipped) > 2 * clip  # the cap binds on this problem
    clipped = _grad_norms(_model(), clip)
    assert len(clipped) == len(unclipped)
    assert all(n <= clip * (1 + 1e-5) for n in clipped)
    assert any(n > 0.99 * clip for n in clipped)


# ====================================================================== atomic checkpoints


def _write(folder, model, epoch):
    return write_checkpoint(folder, model, {"epoch": epoch, "rng": rng_state()})


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def test_write_checkpoint_replaces_atomically(tmp_path):
    model = _model()
    _write(tmp_path / "last", model, 1)
    _perturb(model)
    _write(tmp_path / "last", model, 2)
    assert sorted(os.listdir(tmp_path)) == ["last"]
    assert sorted(os.listdir(tmp_path / "last")) == ["checksums.json", "config.json", "model.safetensors", STATE_NAME]
    assert read_state(tmp_path / "last")["epoch"] == 2
    _assert_same_state(load_weights(tmp_path / "last"), model.state_dict())


@pytest.mark.parametrize("where", ["torch_save", "save_model"])
def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    model = _model()
    _write(tmp_path / "last", model, 1)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    _perturb(model)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    if where == "torch_save":
        monkeypatch.setattr(torch, "save", crash)
    else:
        real = checkpoint_module.save_model

        def half_then_crash(m, folder):
            real(m, folder)
            (Path(folder) / "config.json").write_text("{")  # half-written
            raise OSError("disk full")

        monkeypatch.setattr(checkpoint_module, "save_model", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path / "last", model, 2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last"]  # no temporary folder left behind
    assert find_checkpoint(tmp_path / "last") == tmp_path / "last"
    _assert_same_state(load_model(tmp_path / "last").state_dict(), good)
    assert read_state(tmp_path / "last")["epoch"] == 1


def _fail_swap(monkeypatch, name="last"):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(f".{name}.tmp-"):
            raise OSError("killed during the swap")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_find_checkpoint_falls_back_to_old_after_interrupted_swap(tmp_path, monkeypatch):
    model = _model()
    _write(tmp_path / "last", model, 1)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    _perturb(model)
    _fail_swap(monkeypatch)
    with pytest.raises(OSError, match="swap"):
        _write(tmp_path / "last", model, 2)
    monkeypatch.undo()
    assert not (tmp_path / "last").exists()
    found = find_checkpoint(tmp_path / "last")
    assert found == tmp_path / ".last.old"
    _assert_same_state(load_model(found).state_dict(), good)
    assert read_state(found)["epoch"] == 1
    # the next successful write puts a complete checkpoint back in place
    _write(tmp_path / "last", model, 3)
    assert find_checkpoint(tmp_path / "last") == tmp_path / "last"
    assert read_state(tmp_path / "last")["epoch"] == 3
    assert not (tmp_path / ".last.old").exists()


def test_second_interrupted_swap_still_leaves_a_checkpoint(tmp_path, monkeypatch):
    model = _model()
    _write(tmp_path / "last", model, 1)
    _fail_swap(monkeypatch)
    with pytest.raises(OSError):
        _write(tmp_path / "last", model, 2)
    with pytest.raises(OSError):
        _write(tmp_path / "last", model, 3)
    monkeypatch.undo()
    assert find_checkpoint(tmp_path / "last") is not None


def test_find_checkpoint_none(tmp_path):
    assert find_checkpoint(tmp_path / "last") is None
    save_model(_model(), tmp_path / "last")  # a model folder without a training state
    assert find_checkpoint(tmp_path / "last") is None


# ====================================================================== RNG state


def _draws(generator=None):
    return (
        torch.rand(5),
        np.random.rand(5),  # noqa: NPY002  (the legacy global RNG is what rng_state saves)
        np.random.standard_normal(),  # noqa: NPY002
        [random.random() for _ in range(3)],
        None if generator is None else torch.rand(3, generator=generator),
    )


def _same(a, b):
    assert torch.equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert a[3] == b[3]
    assert (a[4] is None and b[4] is None) or torch.equal(a[4], b[4])


def test_rng_state_round_trip(tmp_path):
    g = torch.Generator().manual_seed(7)
    np.random.standard_normal()  # noqa: NPY002  (leave a cached Gaussian in numpy's state)
    state = rng_state(g)
    first = _draws(g)
    set_rng_state(state, g)
    _same(first, _draws(g))
    # and through a weights-only file
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    _draws(g)
    set_rng_state(loaded, g)
    _same(first, _draws(g))


def test_training_state_loads_weights_only(tmp_path):
    ck = tmp_path / "ck"
    Trainer(_model(), config=_config(epochs=2), checkpoint_dir=ck).fit(_dataset())
    state = torch.load(ck / "last" / STATE_NAME, weights_only=True)
    assert state["epoch"] == 2
    assert state["step"] == 2 * math.ceil(18 / BS)
    assert len(state["history"]) == 2
    assert {"torch", "numpy", "python", "generator"} <= set(state["rng"])
    assert "state" in state["optimizer"] and "param_groups" in state["optimizer"]
    assert state["trainer_config"]["batch_size"] == BS


# ====================================================================== KL warm-up


class _Recording(ELBO):
    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        self.seen = seen

    def differentiable_loss(self, model, guide, *args, **kwargs):
        self.seen.append(self.kl_anneal)
        return super().differentiable_loss(model, guide, *args, **kwargs)


def test_kl_warmup_rises_from_zero_to_one():
    seen = []
    steps_per_epoch = math.ceil(18 / BS)
    loss = _Recording(seen, max_plate_nesting=1)
    trainer = Trainer(_model(), loss=loss, config=_config(epochs=3, kl_warmup_epochs=2))
    trainer.fit(_dataset())
    warm = 2 * steps_per_epoch
    assert len(seen) == 3 * steps_per_epoch
    assert seen == pytest.approx([min(1.0, s / warm) for s in range(len(seen))])
    assert seen[0] == 0.0 and seen[-1] == 1.0


def test_kl_warmup_reaches_the_subsampled_base():
    model = _model(beta=2.0)
    trainer = Trainer(model, config=_config(epochs=1, kl_warmup_epochs=10))
    trainer.fit(_dataset())
    assert 0.0 < trainer.loss.base.kl_anneal < 1.0
    assert trainer.loss.base.beta == 2.0


# ====================================================================== evaluation


def test_evaluate_is_the_mean_negative_elbo_per_row():
    model = _model(beta=3.0)  # evaluation uses beta = 1 whatever the model's beta
    ds = _dataset()
    trainer = Trainer(model, config=_config())
    torch.manual_seed(21)
    value = trainer.evaluate(ds, batch_size=len(ds))
    torch.manual_seed(21)
    total = ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, ds.batch())
    assert value == pytest.approx(total.item() / len(ds), rel=1e-5)
    assert model.training  # the training mode is restored

    # in smaller batches it is still the mean per row (not per batch): same value in expectation
    R = 30
    small = torch.tensor([trainer.evaluate(ds, batch_size=5) for _ in range(R)])
    whole = torch.tensor([
        ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, ds.batch()).item()
        / len(ds)
        for _ in range(R)
    ])
    se = math.hypot(small.std().item(), whole.std().item()) / math.sqrt(R)
    # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 (normal approx.)
    assert abs(small.mean().item() - whole.mean().item()) < 5 * se + 1e-4


# ---------------------------------------------------------------------- optimiser and gradient norm
def test_default_optimizer_is_adam_with_the_fused_kernel_where_torch_has_one():
    from pyromv.training import default_optimizer

    model = _model()
    opt = Trainer(model, config=_config()).optimizer
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-2
    cpu_kernel = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)
    assert bool(opt.param_groups[0].get("fused")) == cpu_kernel  # torch >= 2.4 has a CPU kernel
    # the same update as the loop implementation (to float rounding)
    ref_model = _model()
    ref = torch.optim.Adam(ref_model.parameters(), lr=1e-2, foreach=False)
    fused = default_optimizer(model.parameters(), 1e-2)
    for _ in range(3):
        for m, o in ((model, fused), (ref_model, ref)):
            o.zero_grad()
            torch.manual_seed(0)
            ELBO().differentiable_loss(m.model, m.guide, _dataset().batch()).backward()
            o.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_default_optimizer_falls_back_without_a_fused_kernel(monkeypatch):
    from pyromv.training import default_optimizer

    real = torch.optim.Adam

    def no_fused(params, lr, fused=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt = default_optimizer(_model().parameters(), 1e-3)
    assert isinstance(opt, real) and not opt.param_groups[0].get("fused")


def test_gradient_norm_is_the_global_two_norm():
    from pyromv.training.trainer import _grad_norm

    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(3,), (2, 2), (1,)]]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([[0.0, 4.0], [0.0, 12.0]])
    assert float(_grad_norm(params)) == pytest.approx(13.0)
    assert float(_grad_norm([torch.nn.Parameter(torch.zeros(1))])) == 0.0
