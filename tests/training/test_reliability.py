"""Checkpoints that survive corruption and divergence detection (issue 16, items 3 and 4).

Corruption: a truncated or altered file of ``last/`` is found by the checksums recorded at write
time (or the safetensors header), resuming falls back to ``last.previous`` with a warning naming
the files and still matches an uninterrupted run, and a clear error names every file when
nothing intact is left. ``best/`` is never replaced by a worse model. Divergence: a learning
rate raised mid-run makes the loss jump; training stops with a clear error before ``last/`` is
overwritten, and the NaN error does not call a diverged ``last/`` the last good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from pyro import poutine

from pyromv.infer import ELBO
from pyromv.models import MVAE, MVAEConfig
from pyromv.models.io import load_weights
from pyromv.training import (
    CheckpointWarning,
    CorruptCheckpointError,
    DivergenceError,
    NonFiniteLossError,
    Stage,
    Trainer,
    TrainerConfig,
    load_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from pyromv.training.checkpoint import MANIFEST_NAME, STATE_NAME, check_safetensors, previous_checkpoint, read_state
from pyromv.training.trainer import divergence_ceiling
from tests.training.test_trainer import (
    BS,
    MODS,
    D,
    _assert_same_state,
    _config,
    _dataset,
    _Injected,
    _losses,
    _model,
    _perturb,
)

WEIGHTS = "model.safetensors"
STEPS_PER_EPOCH = math.ceil(18 / BS)  # 24 rows, a quarter held out for validation


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the tensor data: same length, a valid header, another value
    path.write_bytes(bytes(data))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


class _Warnings:
    """Record every warning of the block (pytest.warns would re-raise the ones it does not match)."""

    def __enter__(self) -> list[warnings.WarningMessage]:
        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self.caught

    def __exit__(self, *exc) -> None:
        self._cm.__exit__(*exc)


def _messages(caught, category=CheckpointWarning) -> list[str]:
    assert all(issubclass(w.category, category) for w in caught), [str(w.message) for w in caught]
    return [str(w.message) for w in caught]


# ====================================================================== corrupt last/: fallback


CORRUPTIONS = {
    "truncated-weights": (WEIGHTS, _truncate, "truncated"),
    "truncated-optimiser-state": (STATE_NAME, _truncate, "truncated"),
    "altered-weights": (WEIGHTS, _flip_last_byte, "SHA-256"),
    "missing-weights": (WEIGHTS, Path.unlink, "missing"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_last_falls_back_to_the_previous_checkpoint_and_resumes_exactly(tmp_path, corruption):
    name, corrupt, reason = CORRUPTIONS[corruption]
    ds = _dataset()
    whole = _model(seed=0)
    expected = Trainer(whole, config=_config(epochs=4), checkpoint_dir=tmp_path / "whole").fit(ds)

    ck = tmp_path / "run"
    Trainer(_model(seed=0), config=_config(epochs=3), checkpoint_dir=ck).fit(ds)
    assert read_state(previous_checkpoint(ck / "last"))["epoch"] == 2  # one previous checkpoint is kept
    corrupt(ck / "last" / name)

    again = _model(seed=7)  # a new process builds the model anew
    with _Warnings() as caught:
        history = Trainer(again, config=_config(epochs=4), checkpoint_dir=ck).fit(ds)
    messages = _messages(caught)
    assert len(messages) == 2, messages
    # resuming says which file failed, why, and which checkpoint it uses instead
    assert str(ck / "last" / name) in messages[0] and reason in messages[0]
    assert f"{ck / 'last.previous'} (epoch 2)" in messages[0]
    # the first write afterwards discards the corrupt folder rather than keeping it as the previous one
    assert "discarding the corrupt checkpoint" in messages[1] and str(ck / "last") in messages[1]

    # epoch 3 was trained again from epoch 2's state: the same run as an uninterrupted one
    assert _losses(history) == _losses(expected)
    _assert_same_state(whole.state_dict(), again.state_dict())
    _assert_same_state(load_weights(tmp_path / "whole" / "last"), load_weights(ck / "last"))
    verify_checkpoint(ck / "last", require_state=True)
    verify_checkpoint(ck / "last.previous", require_state=True)
    assert read_state(ck / "last.previous")["epoch"] == 3


@pytest.mark.parametrize("name", [WEIGHTS, STATE_NAME])
def test_a_truncated_last_never_surfaces_a_raw_error(tmp_path, name):
    """The issue's report: a truncated file of last/ made fit(resume=True) fail inside
    safetensors or torch.load with a message that named no file."""
    ck = tmp_path / "ck"
    Trainer(_model(), config=_config(epochs=2), checkpoint_dir=ck).fit(_dataset())
    _truncate(ck / "last" / name)
    with _Warnings() as caught:
        Trainer(_model(), config=_config(epochs=3), checkpoint_dir=ck).fit(_dataset())
    assert str(ck / "last" / name) in _messages(caught)[0]


def test_after_a_fallback_errors_name_the_checkpoint_actually_used(tmp_path):
    ck = tmp_path / "ck"
    Trainer(_model(), config=_config(epochs=3), checkpoint_dir=ck).fit(_dataset())
    _truncate(ck / "last" / WEIGHTS)
    trainer = Trainer(_model(), loss=_Injected(after=0), config=_config(epochs=5), checkpoint_dir=ck)
    with _Warnings() as caught, pytest.raises(NonFiniteLossError) as info:
        trainer.fit(_dataset())  # NaN at the first step after resuming from last.previous
    assert f"the last good checkpoint is {ck / 'last.previous'} (epoch 2)" in str(info.value)
    assert sum(issubclass(w.category, CheckpointWarning) for w in caught) == 1


def test_a_corrupt_checkpoint_without_a_previous_one_is_a_clear_error(tmp_path):
    ck = tmp_path / "ck"
    Trainer(_model(), config=_config(epochs=2), checkpoint_dir=ck).fit(_dataset())
    _truncate(ck / "last" / WEIGHTS)
    _truncate(ck / "last.previous" / STATE_NAME, keep=0.9)
    with pytest.raises(CorruptCheckpointError) as info:
        Trainer(_model(), config=_config(epochs=3), checkpoint_dir=ck).fit(_dataset())
    msg = str(info.value)
    assert str(ck / "last" / WEIGHTS) in msg and str(ck / "last.previous" / STATE_NAME) in msg
    assert "truncated" in msg and "no intact checkpoint" in msg and "resume=False" in msg
    assert [p for p, _ in info.value.problems] == [ck / "last" / WEIGHTS, ck / "last.previous" / STATE_NAME]
    # starting over is possible
    history = Trainer(_model(), config=_config(epochs=1), checkpoint_dir=ck)
    with _Warnings() as caught:
        assert len(history.fit(_dataset(), resume=False)) == 1
    assert any("discarding the corrupt checkpoint" in m for m in _messages(caught))


def test_checkpoints_written_before_checksums_are_checked_by_their_header(tmp_path):
    """A checkpoint without checksums.json (older pyromv): the safetensors header still catches truncation."""
    ck = tmp_path / "ck"
    Trainer(_model(), config=_config(epochs=2), checkpoint_dir=ck).fit(_dataset())
    for folder in (ck / "last", ck / "last.previous"):
        (folder / MANIFEST_NAME).unlink()
    assert load_checkpoint(ck / "last").state["epoch"] == 2  # intact: read as before
    _truncate(ck / "last" / WEIGHTS, keep=0.99)
    with _Warnings() as caught:
        found = load_checkpoint(ck / "last")
    assert found.path == ck / "last.previous" and found.state["epoch"] == 1
    (message,) = _messages(caught)
    assert str(ck / "last" / WEIGHTS) in message and "truncated" in message


def test_an_unreadable_state_without_checksums_names_the_file(tmp_path):
    folder = tmp_path / "last"
    write_checkpoint(folder, _model(), {"epoch": 1})
    (folder / MANIFEST_NAME).unlink()
    (folder / STATE_NAME).write_bytes(b"not a torch file")
    with pytest.raises(CorruptCheckpointError, match=f"{folder / STATE_NAME}.*cannot be read as a training state"):
        load_checkpoint(folder)


def test_the_checksums_catch_what_the_header_cannot(tmp_path):
    folder = tmp_path / "best"
    write_checkpoint(folder, _model())
    verify_checkpoint(folder)
    _flip_last_byte(folder / WEIGHTS)
    check_safetensors(folder / WEIGHTS)  # still a well-formed file ...
    with pytest.raises(CorruptCheckpointError, match=f"{folder / WEIGHTS}: its SHA-256 differs"):
        verify_checkpoint(folder)  # ... with other numbers than were written
    (folder / MANIFEST_NAME).write_text("{")
    with pytest.raises(CorruptCheckpointError, match="checksum list is unreadable"):
        verify_checkpoint(folder)


def test_the_manifest_records_every_file(tmp_path):
    folder = write_checkpoint(tmp_path / "last", _model(), {"epoch": 3}, info={"epoch": 3})
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == ["config.json", WEIGHTS, STATE_NAME]
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["info"] == {"epoch": 3}


# ---------------------------------------------------------------------- the safetensors header


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_check_safetensors_against_hand_written_files(tmp_path):
    path = tmp_path / "w.safetensors"
    good = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b": {"dtype": "I64", "shape": [1], "data_offsets": [24, 32]}, "__metadata__": {"k": "v"}}
    path.write_bytes(_safetensors_bytes(good, bytes(32)))
    check_safetensors(path)
    assert set(safetensors.torch.load_file(str(path))) == {"w", "b"}  # the library agrees it is valid
    cases = {
        "truncated: the header describes 32 bytes of tensor data, the file holds 31": (good, bytes(31)),
        "longer than its header says": (good, bytes(33)),
        "entry of 'w' is inconsistent": (
            {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}}, bytes(24)),
        "lacks a shape or byte range": ({"w": {"dtype": "F32", "shape": [1]}}, bytes(4)),
    }
    for reason, (header, data) in cases.items():
        path.write_bytes(_safetensors_bytes(header, data))
        with pytest.raises(CorruptCheckpointError, match=reason.replace("(", r"\(")):
            check_safetensors(path)
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CorruptCheckpointError, match="truncated: the safetensors header claims 1000 bytes"):
        check_safetensors(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CorruptCheckpointError, match="shorter than the 8-byte"):
        check_safetensors(path)
    path.write_bytes(struct.pack("<Q", 2) + b"{x")
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        check_safetensors(path)


# ---------------------------------------------------------------------- keeping one previous checkpoint


def _write(folder, model, epoch):
    return write_checkpoint(folder, model, {"epoch": epoch}, keep_previous=True, info={"epoch": epoch})


def test_exactly_one_previous_checkpoint_is_kept(tmp_path):
    model = _model()
    for epoch in (1, 2, 3):
        _write(tmp_path / "last", model, epoch)
        _perturb(model)
    assert sorted(os.listdir(tmp_path)) == ["last", "last.previous"]
    assert read_state(tmp_path / "last")["epoch"] == 3
    assert read_state(tmp_path / "last.previous")["epoch"] == 2


def test_a_corrupt_checkpoint_is_not_kept_as_the_previous_one(tmp_path):
    model = _model()
    _write(tmp_path / "last", model, 1)
    _write(tmp_path / "last", model, 2)
    _truncate(tmp_path / "last" / WEIGHTS)
    with _Warnings() as caught:
        _write(tmp_path / "last", model, 3)
    (message,) = _messages(caught)
    assert f"discarding the corrupt checkpoint {tmp_path / 'last'}" in message and WEIGHTS in message
    assert read_state(tmp_path / "last.previous")["epoch"] == 1  # the intact one stays
    verify_checkpoint(tmp_path / "last.previous", require_state=True)


def test_a_swap_interrupted_between_the_renames_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    _write(tmp_path / "last", model, 1)
    _write(tmp_path / "last", model, 2)
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".last.tmp-"):
            raise OSError("killed during the swap")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="swap"):
        _write(tmp_path / "last", model, 3)
    monkeypatch.undo()
    assert not (tmp_path / "last").exists()
    with _Warnings() as caught:  # nothing is corrupt: no warning
        found = load_checkpoint(tmp_path / "last")
    assert not caught
    assert found.path == tmp_path / "last.previous" and found.state["epoch"] == 2


# ====================================================================== best/


def _scripted_validation(trainer, values):
    """Make the trainer's validation losses the given sequence (epoch by epoch)."""
    it = iter(values)
    trainer._validate = lambda dataset: next(it)


def test_best_is_not_replaced_by_a_worse_model_after_falling_back(tmp_path):
    """last/ (epoch 3) is lost, so epoch 3 is trained again from epoch 2's state, whose best
    validation loss is epoch 2's. When the new epoch 3 is worse than the one best/ holds (a
    nondeterministic kernel, other data), best/ must stay."""
    ck = tmp_path / "ck"
    first = Trainer(_model(), config=_config(epochs=3), checkpoint_dir=ck)
    _scripted_validation(first, [3.0, 2.0, 1.0])
    first.fit(_dataset())
    kept, weights = _digest(ck / "best"), load_weights(ck / "best")
    _truncate(ck / "last" / STATE_NAME)

    seen = {}

    def watch(trainer, record):
        seen[record["epoch"]] = _digest(ck / "best")

    again = Trainer(_model(), config=_config(epochs=6), checkpoint_dir=ck, callbacks=[watch])
    _scripted_validation(again, [1.5, 1.2, 0.5, 0.7])  # epochs 3..6
    with _Warnings() as caught:
        history = again.fit(_dataset())
    assert len(_messages(caught)) == 2  # the fallback and the discarded folder
    # the bookkeeping of the run is unchanged: epochs 3 and 4 improve on the state's 2.0 ...
    assert [r["improved"] for r in history] == [True, True, True, True, True, False]
    # ... but not on best/'s 1.0, so best/ stays until epoch 5 beats it
    assert seen[3] == kept and seen[4] == kept and seen[5] != kept and seen[6] == seen[5]
    assert json.loads((ck / "best" / MANIFEST_NAME).read_text())["info"] == {"epoch": 5, "stage": 0, "val_loss": 0.5}
    _assert_same_state(again.model.state_dict(), load_weights(ck / "best"))
    assert any(not torch.equal(v, weights[k]) for k, v in again.model.state_dict().items())


def test_best_survives_a_worse_rerun_and_is_the_trained_model(tmp_path):
    ck = tmp_path / "ck"
    first = Trainer(_model(), config=_config(epochs=3), checkpoint_dir=ck)
    _scripted_validation(first, [3.0, 2.0, 1.0])
    first.fit(_dataset())
    kept, weights = _digest(ck / "best"), load_weights(ck / "best")
    _truncate(ck / "last" / WEIGHTS)
    again = Trainer(_model(), config=_config(epochs=4), checkpoint_dir=ck)
    _scripted_validation(again, [1.5, 1.2])
    with _Warnings():
        again.fit(_dataset())
    assert _digest(ck / "best") == kept
    _assert_same_state(again.model.state_dict(), weights)  # the trained model is best/'s


def test_a_corrupt_best_is_reported_and_the_model_keeps_its_weights(tmp_path):
    ck = tmp_path / "ck"
    Trainer(_model(), config=_config(epochs=2), checkpoint_dir=ck).fit(_dataset())
    _truncate(ck / "best" / WEIGHTS)
    trainer = Trainer(_model(seed=3), config=_config(epochs=2), checkpoint_dir=ck)
    with _Warnings() as caught:
        trainer.fit(_dataset())  # nothing left to train: it resumes and loads best/
    (message,) = _messages(caught)
    assert str(ck / "best" / WEIGHTS) in message and "keeps the current weights" in message
    _assert_same_state(trainer.model.state_dict(), load_weights(ck / "last"))


# ====================================================================== divergence


def _raise_lr_after(epoch, lr, snaps=None):
    def callback(trainer, record):
        if snaps is not None:
            snaps[record["epoch"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            snaps[f"best-{record['epoch']}"] = _digest(trainer.checkpoint_dir / "best")
        if record["epoch"] == epoch:
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr

    return callback


def test_divergence_stops_training_before_last_is_overwritten(tmp_path):
    ck = tmp_path / "ck"
    snaps = {}
    trainer = Trainer(_model(), config=_config(epochs=8), checkpoint_dir=ck,
                      callbacks=[_raise_lr_after(4, 10.0, snaps)])
    with pytest.raises(DivergenceError) as info:
        trainer.fit(_dataset())
    msg = str(info.value)
    assert "diverged at epoch 5" in msg and "validation loss" in msg
    assert f"{ck / 'last'} was not overwritten; the last good checkpoint is {ck / 'last'} (epoch 4)" in msg
    assert "gradient clipping is off" in msg and "grad_clip" in msg
    assert "divergence_threshold=0" in msg
    assert len(trainer.history) == 4
    assert read_state(ck / "last")["epoch"] == 4
    _assert_same_state(load_weights(ck / "last"), snaps[4])
    assert read_state(ck / "last.previous")["epoch"] == 3
    assert _digest(ck / "best") == snaps["best-4"]  # best/ is not touched either


def test_divergence_with_clipping_on_says_so():
    trainer = Trainer(_model(), config=_config(epochs=8, grad_clip=1.0), callbacks=[_raise_lr_after(4, 10.0)])
    with pytest.raises(DivergenceError, match=r"diverged at epoch 5.*clipping is on \(grad_clip=1\)") as info:
        trainer.fit(_dataset())
    assert "not overwritten" not in str(info.value)  # no checkpoint_dir, no checkpoint to speak of


def test_divergence_of_the_training_loss_without_validation():
    trainer = Trainer(_model(), config=_config(epochs=8, val_fraction=0.0), callbacks=[_raise_lr_after(4, 10.0)])
    with pytest.raises(DivergenceError, match="diverged at epoch 5.*the train loss"):
        trainer.fit(_dataset())


def test_divergence_detection_can_be_turned_off():
    trainer = Trainer(_model(), config=_config(epochs=7, divergence_threshold=0.0),
                      callbacks=[_raise_lr_after(4, 10.0)])
    history = trainer.fit(_dataset())
    assert len(history) == 7
    assert history[4]["val_loss"] > 100 * history[3]["val_loss"]  # it did diverge


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")
def test_a_nan_after_an_undetected_divergence_does_not_call_last_good(tmp_path):
    """Detection off: epoch 5 diverges (finite) and is written to last/; epoch 6 turns NaN."""
    ck = tmp_path / "ck"
    trainer = Trainer(_model(), loss=_Injected(after=5 * STEPS_PER_EPOCH),
                      config=_config(epochs=8, divergence_threshold=0), checkpoint_dir=ck,
                      callbacks=[_raise_lr_after(4, 10.0)])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(_dataset())
    msg = str(info.value)
    assert "epoch 6" in msg
    assert "last good checkpoint" not in msg
    assert f"the last checkpoint {ck / 'last'} (epoch 5) is not a good one, it may already be diverged" in msg
    assert f"{ck / 'best'} holds the best validation loss" in msg
    assert read_state(ck / "last")["epoch"] == 5


def test_a_nan_after_good_epochs_still_names_the_last_good_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    trainer = Trainer(_model(), loss=_Injected(after=5 * STEPS_PER_EPOCH), config=_config(epochs=8),
                      checkpoint_dir=ck)
    with pytest.raises(NonFiniteLossError, match=f"the last good checkpoint is {ck / 'last'} \\(epoch 5\\)"):
        trainer.fit(_dataset())


@pytest.mark.parametrize("warmup", [0, 5])
def test_the_training_loss_is_not_tested_while_the_kl_weight_rises(warmup):
    # without validation the training loss is tested: here it triples at epoch 4 (median 10.5,
    # MAD 0.5: ceiling 10.5 + 20 * 0.74 = 25.3), which is divergence, unless the KL weight is still rising
    trainer = Trainer(_model(), config=_config(epochs=6, val_fraction=0.0, kl_warmup_epochs=warmup))
    losses = iter([10.0, 10.5, 11.0, 30.0, 60.0, 61.0])
    trainer._train_epoch = lambda train, kl_warmup: next(losses)
    if warmup:
        assert len(trainer.fit(_dataset())) == 6
    else:
        with pytest.raises(DivergenceError, match="diverged at epoch 4, .*the train loss 30 is far above"):
            trainer.fit(_dataset())


class _TwoStage(MVAE):
    """Stage 2 validates on a loss 1000 times larger: a new stage starts a new history."""

    def stages(self):
        def scaled(fn):
            return poutine.scale(fn, scale=1000.0)

        return [
            Stage("joint", self.default_loss(), self.model, self.guide, epochs=3),
            Stage("encoders", ELBO(), self.model, self.guide, trainable=("encoders.",),
                  validation=(ELBO(), scaled(self.evaluation_model()), scaled(self.evaluation_guide()))),
        ]


def test_a_new_stage_starts_a_new_history():
    torch.manual_seed(0)
    model = _TwoStage(MODS, MVAEConfig(latent_dim=D))
    history = Trainer(model, config=_config(epochs=7)).fit(_dataset())
    assert [r["stage"] for r in history] == ["joint"] * 3 + ["encoders"] * 4
    assert history[3]["val_loss"] > 100 * history[2]["val_loss"]


def test_divergence_ceiling_by_hand():
    # median 12, absolute deviations [2, 1, 0, 1, 88]: MAD 1; spread max(1.4826, 0.6, 0.1)
    median, ceiling = divergence_ceiling([10, 11, 12, 13, 100], 10.0)
    assert median == 12 and ceiling == pytest.approx(12 + 14.826)
    # a flat history: the spread is 5% of the median
    assert divergence_ceiling([5.0, 5.0, 5.0], 10.0) == pytest.approx((5.0, 7.5))
    # near zero: at least 0.1 nat
    assert divergence_ceiling([0.0, 0.0, 0.0], 10.0) == pytest.approx((0.0, 1.0))
    # negative losses (densities above 1): the magnitude of the median
    assert divergence_ceiling([-200.0, -200.0, -200.0], 2.0) == pytest.approx((-200.0, -180.0))
    # too short a history, non-finite values dropped, only the last 10 values
    assert divergence_ceiling([1.0, 2.0], 10.0) is None
    assert divergence_ceiling([1.0, float("nan"), 2.0, float("inf")], 10.0) is None
    assert divergence_ceiling([1000.0] * 5 + [1.0] * 10, 10.0) == pytest.approx((1.0, 2.0))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "10", True])
def test_bad_divergence_threshold(bad):
    with pytest.raises(ValueError, match="divergence_threshold"):
        Trainer(_model(), config=TrainerConfig(divergence_threshold=bad))
