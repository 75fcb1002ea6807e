"""Data-parallel training: two gloo processes update as one process on the concatenated batch.

The two-process runs go through ``torchrun --standalone`` (a free rendezvous port chosen by
torch, so parallel test runs do not collide) with a timeout: a hung collective fails the test
instead of hanging CI. See ``ddp_worker.py`` for the row-keyed noise that makes the draws of a row
the same in every process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyromv.data import PolyDigits, mcar
from pyromv.data.prepared import write_prepared
from pyromv.models import get_model_class
from pyromv.training import Trainer, TrainerConfig
from pyromv.training import distributed as ddp

WORKER = Path(__file__).with_name("ddp_worker.py")
TIMEOUT = 240


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{args} did not finish in {TIMEOUT} s (a hung collective?)\n{err.stdout}\n{err.stderr}")
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def _torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *args]


@pytest.fixture(scope="module")
def one_and_two_processes(tmp_path_factory):
    """MVAE and MMVAE trained by one process and by two (torchrun): 33 rows in batches of 16
    (the last batch has 1 row: rank 1's shard is empty), 2 epochs of SGD (the update is
    -lr * gradient, so any error in the gradient shows, where Adam's first step is about
    lr * sign(gradient)), on rows that miss modalities (encoders unused in a shard)."""
    tmp = tmp_path_factory.mktemp("ddp")
    common = ["--model", "mvae,mmvae", "--rows", "33", "--batch-size", "16", "--epochs", "2"]
    _run([sys.executable, str(WORKER), "--out", str(tmp / "one"), *common], tmp)
    _run(_torchrun(2, str(WORKER), "--out", str(tmp / "two"), *common), tmp)
    return tmp


@pytest.mark.parametrize("model", ["mvae", "mmvae"])
def test_two_processes_give_the_one_process_update(model, one_and_two_processes):
    tmp = one_and_two_processes
    one, two = torch.load(tmp / f"one.{model}.pt"), torch.load(tmp / f"two.{model}.pt")
    info_one = json.loads((tmp / f"one.{model}.json").read_text())
    info_two = json.loads((tmp / f"two.{model}.json").read_text())
    assert info_one["world"] is None and info_two["world"] == 2
    # the reference run must have moved the weights well beyond the tolerance
    torch.manual_seed(0)
    fresh = get_model_class(model)(PolyDigits(hidden_dim=8).modalities(),
                                   get_model_class(model).config_class(latent_dim=3)).state_dict()
    moved = max(float((one[k] - fresh[k]).abs().max()) for k in one)
    assert moved > 1e-3
    for k in one:  # float32 sums in another order: a few ulps
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    for a, b in zip(info_one["history"], info_two["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)  # validation sharded, then summed


def test_shards_cover_each_global_batch_once():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    order = ddp.epoch_order(37, 8, g1)
    assert torch.equal(torch.cat(order), torch.randperm(37, generator=g2))  # the draw of batches()
    for world in (1, 2, 3, 5, 9):
        for idx in order:
            parts = [ddp.shard(idx, r, world) for r in range(world)]
            assert torch.equal(torch.cat(parts), idx)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert ddp.epoch_seed(0, 1, 0) != ddp.epoch_seed(0, 1, 1) != ddp.epoch_seed(0, 2, 1)
    assert ddp.epoch_seed(0, 1, 1) == ddp.epoch_seed(0, 1, 1)


def test_distributed_auto_detection(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not ddp.requested(None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ddp.requested(None) and not ddp.requested(False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not ddp.requested(None) and ddp.requested(True)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        ddp.init()


def test_dataloader_workers_give_the_same_batches(tmp_path):
    """num_workers=2 (batches decoded in worker processes, here from a memory-mapped uint8
    prepared set) yields the batches of num_workers=0, in order, and trains to the same weights."""
    source = PolyDigits(hidden_dim=8)
    data = write_prepared(tmp_path / "p", {"train": mcar(source.load("train"), 0.3)}, dtype="uint8",
                          progress=False)
    from pyromv.data.prepared import open_prepared

    train = open_prepared(data).subset(torch.arange(90))
    weights, batches = {}, {}
    for workers in (0, 2):
        torch.manual_seed(0)
        model = get_model_class("mvae")(source.modalities(), get_model_class("mvae").config_class(latent_dim=3))
        trainer = Trainer(model, config=TrainerConfig(epochs=2, batch_size=16, val_fraction=0, progress=False,
                                                      num_workers=workers))
        trainer.generator.manual_seed(7)
        batches[workers] = list(trainer._epoch_batches(train))
        trainer.fit(train, resume=False)
        weights[workers] = model.state_dict()
    assert len(batches[0]) == len(batches[2]) == 6
    for a, b in zip(batches[0], batches[2]):
        for m in a.names:
            assert torch.equal(a.data[m], b.data[m]) and torch.equal(a.obs_mask[m], b.obs_mask[m])
        assert torch.equal(a.labels, b.labels)
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[2][k]), k


@pytest.mark.slow
def test_torchrun_cli_checkpoint_resumes_in_one_process(tmp_path):
    """``torchrun --nproc_per_node=2 -m pyromv.cli.train`` on a prepared set: rank 0 writes one
    run folder with a checkpoint; a single process resumes it for a second epoch."""
    source = PolyDigits(hidden_dim=8)
    data = write_prepared(tmp_path / "digits", {"train": source.load("train").subset(torch.arange(120)),
                                                "test": source.load("test").subset(torch.arange(30))},
                          dtype="uint8", progress=False)
    run_dir = tmp_path / "run"
    options = ["data=prepared", f"data.path={data}", "missing_rate=0.2", "model.latent_dim=3", "evaluate=false",
               "trainer.batch_size=32", "trainer.progress=false", "plot_rows=2", f"hydra.run.dir={run_dir}"]
    done = _run(_torchrun(2, "-m", "pyromv.cli.train", "trainer.epochs=1", *options), tmp_path)
    assert done.stdout.count("test ELBO") == 1  # rank 0 reports, once
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["train_rows"] == 120
    state = torch.load(run_dir / "checkpoint" / "last" / "training_state.pt", weights_only=True)
    assert state["epoch"] == 1 and "world_size" not in json.dumps(state["trainer_config"])
    _run([sys.executable, "-m", "pyromv.cli.train", "trainer.epochs=2", *options], tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]  # epoch 1 from the two-process run
