"""Staged training: frozen parameters stay put, stages follow their epochs and early stopping,
the next stage starts from the best weights, and a run killed mid-stage or at a switch resumes
to the same weights as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from pyromv.infer import ELBO
from pyromv.models import MVAE, MVAEConfig
from pyromv.models.io import load_weights
from pyromv.training import Stage, Trainer, frozen_except
from tests.training.test_trainer import MODS, D, _assert_same_state, _config, _dataset, _losses


class TwoStageMVAE(MVAE):
    """MVAE whose stage 1 trains everything and stage 2 only the encoders (on another ELBO)."""

    first_epochs: int | float = 2
    second_trainable = ("encoders.",)

    def stages(self):
        return [
            Stage("joint", self.default_loss(), self.model, self.guide, epochs=self.first_epochs),
            Stage("encoders", ELBO(num_particles=2), self.model, self.guide, trainable=self.second_trainable),
        ]


def _model(seed=0, first_epochs=2) -> TwoStageMVAE:
    torch.manual_seed(seed)
    model = TwoStageMVAE(MODS, MVAEConfig(latent_dim=D))
    model.first_epochs = first_epochs
    return model


class _Killed(RuntimeError):
    pass


def _kill_after(epoch: int):
    def callback(trainer, record):
        if record["epoch"] == epoch:
            raise _Killed

    return callback


def test_stages_run_in_order_and_freeze_what_they_do_not_train(tmp_path):
    model = _model()
    snapshots = {}

    def keep(trainer, record):
        snapshots[record["epoch"]] = {k: v.detach().clone() for k, v in model.named_parameters()}

    history = Trainer(model, config=_config(epochs=5), checkpoint_dir=tmp_path, callbacks=[keep]).fit(_dataset())
    assert [r["stage"] for r in history] == ["joint"] * 2 + ["encoders"] * 3
    for epoch in (4, 5):  # in stage 2 only the encoders move
        for name, value in snapshots[epoch].items():
            moved = not torch.equal(value, snapshots[epoch - 1][name])
            assert moved == name.startswith("encoders."), (epoch, name)
    assert all(p.requires_grad for p in model.parameters())  # flags restored after training


def test_a_fractional_stage_takes_its_share_of_the_epochs():
    history = Trainer(_model(first_epochs=0.25), config=_config(epochs=8)).fit(_dataset())
    assert [r["stage"] for r in history] == ["joint"] * 2 + ["encoders"] * 6


def test_early_stopping_ends_a_stage_and_the_next_starts_from_its_best_weights(tmp_path):
    model = _model(first_epochs=6)
    starts = {}

    def keep(trainer, record):
        if record["stage"] == "joint":
            starts["best"] = {k: v.clone() for k, v in load_weights(tmp_path / "best").items()}

    # patience 1 with a huge min_delta: stage 1 stops after its second epoch; best = epoch 1
    cfg = _config(epochs=4, patience=1, min_delta=1e9)
    trainer = Trainer(model, config=cfg, checkpoint_dir=tmp_path, callbacks=[keep])
    first_epoch = {}

    class Spy(ELBO):
        def differentiable_loss(self, m, g, *args, **kwargs):
            if not first_epoch:
                first_epoch.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            return super().differentiable_loss(m, g, *args, **kwargs)

    trainer.stages[1].loss = Spy(num_particles=2)
    history = trainer.fit(_dataset())
    assert [r["stage"] for r in history] == ["joint", "joint", "encoders", "encoders"]
    assert [r["improved"] for r in history] == [True, False, True, False]
    _assert_same_state(first_epoch, starts["best"])  # stage 2 began from stage 1's best


@pytest.mark.parametrize("killed_at", [1, 2, 3], ids=["mid-stage-1", "at-the-switch", "mid-stage-2"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, killed_at):
    ds = _dataset()
    whole = _model(seed=0)
    expected = Trainer(whole, config=_config(epochs=5), checkpoint_dir=tmp_path / "whole").fit(ds)

    first = _model(seed=0)
    with pytest.raises(_Killed):
        Trainer(first, config=_config(epochs=5), checkpoint_dir=tmp_path / "run",
                callbacks=[_kill_after(killed_at)]).fit(ds)
    again = _model(seed=99)  # a new process builds the model anew
    resumed = Trainer(again, config=_config(epochs=5), checkpoint_dir=tmp_path / "run")
    history = resumed.fit(ds)
    assert _losses(history) == _losses(expected)
    assert [r["stage"] for r in history] == [r["stage"] for r in expected]
    _assert_same_state(whole.state_dict(), again.state_dict())
    _assert_same_state(load_weights(tmp_path / "whole" / "last"), load_weights(tmp_path / "run" / "last"))


def test_staged_models_refuse_a_loss_or_optimizer_and_empty_stages():
    model = _model()
    with pytest.raises(ValueError, match="stages"):
        Trainer(model, loss=ELBO())
    with pytest.raises(ValueError, match="stages"):
        Trainer(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    model.second_trainable = ("nothing.",)
    with pytest.raises(ValueError, match="trains no parameter"):
        Trainer(model)
    model.second_trainable = ("encoders.",)
    model.first_epochs = 0
    with pytest.raises(ValueError, match="epochs"):
        Trainer(model)


def test_frozen_except_freezes_for_the_block_only():
    model = _model()
    stage = model.stages()[1]
    with frozen_except(model, stage):
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(flag == name.startswith("encoders.") for name, flag in flags.items())
    assert all(p.requires_grad for p in model.parameters())
