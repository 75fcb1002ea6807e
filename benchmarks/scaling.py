"""Scale-out benchmark: memory of training from a prepared (memory-mapped) data set as rows grow,
and throughput of one versus two data-parallel processes.

1. Writes prepared PolyFashion data sets of ``--rows`` and of 10,000 rows (uint8, streamed in
   chunks: the big one is never in memory). Rows beyond Fashion-MNIST's come by repetition with
   augmentation: each repeat of the base rows is shifted by a seeded whole-pixel translation
   (``np.roll``) per modality.
2. Peak memory: a child process opens each data set, holds out 10% for validation as the trainer
   does, and trains MVAE for ``--steps`` shuffled batches through the trainer's batch path; its
   resident-set high-water mark (``VmHWM``, see :func:`_peak_rss_mb`; it counts the mapped file
   pages it touched too) is compared: the big one must stay within 1.5x of the small one.
3. Throughput: ``Trainer.fit`` for two epochs on ``--throughput-rows`` rows, in one process and in
   two (``torchrun --standalone --nproc_per_node=2``); rows per second of the second epoch.

Run ``python benchmarks/scaling.py --quick`` (1,000,000 rows of one modality, 0.8 GB on disk) or
``python benchmarks/scaling.py`` (1,000,000 rows of five modalities, 3.9 GB; check ``df -h``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SMALL_ROWS = 10_000
CHUNK = 50_000


def _base(modalities: int):
    from pyromv.data import PolyFashion

    source = PolyFashion(num_modalities=modalities, train_images=5000, hidden_dim=64)
    return source, source.load("train")


def write(path: Path, rows: int, modalities: int) -> None:
    """Prepared PolyFashion of ``rows`` rows (uint8), streamed in chunks."""
    from pyromv.data.prepared import write_prepared
    from pyromv.data.stored import StoredDataset, quantize

    source, base = _base(modalities)
    mods = source.modalities()
    images = {m: quantize(base.data[m].numpy()) for m in base.names}
    labels = base.labels.numpy()
    n = len(base)

    def chunks():
        rng = np.random.default_rng(0)
        done = 0
        while done < rows:
            size = min(CHUNK, rows - done)
            pos = (np.arange(done, done + size)) % n
            out = {}
            for m in base.names:
                x = images[m][pos]
                shift = rng.integers(-2, 3, size=2) if done >= n else (0, 0)  # repeats: shifted copies
                out[m] = torch.from_numpy(np.roll(x, tuple(int(s) for s in shift), axis=(-2, -1)))
            yield StoredDataset(mods, out, scales={m: 255.0 for m in base.names}, labels=torch.from_numpy(labels[pos]),
                                check=False)
            done += size

    write_prepared(path, {"train": (rows, chunks())}, source={"name": "polyfashion-augmented", "rows": rows},
                   overwrite=True, progress=True)


def _peak_rss_mb() -> float:
    """This process's resident-set high-water mark: ``VmHWM`` of ``/proc/self/status`` on Linux.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used for the comparison: Linux carries the
    *parent's* high-water mark into a child across ``fork``/``exec`` (``signal->maxrss`` takes the
    old address space's peak at ``exec``), so every child of a parent that once held the data reads
    the same number. ``VmHWM`` belongs to the child's own address space. (Other systems: ru_maxrss.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child_memory(path: str, steps: int, batch_size: int, access: str) -> None:
    """Train ``steps`` batches from the prepared set at ``path``; print the peak RSS (JSON)."""
    from pyromv.data.prepared import Prepared
    from pyromv.models import get_model_class
    from pyromv.training import Trainer, TrainerConfig

    torch.set_num_threads(1)
    source = Prepared(path, access=access)
    data = source.load("train")
    train, _ = data.holdout(0.1, seed=0)
    torch.manual_seed(0)
    model = get_model_class("mvae")(source.modalities(), get_model_class("mvae").config_class(latent_dim=16))
    trainer = Trainer(model, config=TrainerConfig(batch_size=batch_size, progress=False))
    trainer.generator.manual_seed(0)
    loss = trainer.loss
    start = time.perf_counter()
    for batch in itertools.islice(trainer._epoch_batches(train), steps):
        value = loss.differentiable_loss(trainer.stage.model, trainer.stage.guide, batch)
        trainer.optimizer.zero_grad(set_to_none=True)
        value.backward()
        trainer.optimizer.step()
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": len(data), "access": access, "peak_rss_mb": _peak_rss_mb(),
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "steps": steps, "steps_per_s": steps / seconds}))


def child_throughput(path: str, rows: int, batch_size: int, out: str) -> None:
    """Two epochs of ``Trainer.fit`` on the first ``rows`` rows (distributed under torchrun); the
    second epoch's time."""
    from pyromv.data.prepared import Prepared
    from pyromv.models import get_model_class
    from pyromv.training import Trainer, TrainerConfig

    torch.set_num_threads(1)
    source = Prepared(path)
    train = source.load("train").subset(torch.arange(rows))
    torch.manual_seed(0)
    model = get_model_class("mvae")(source.modalities(), get_model_class("mvae").config_class(latent_dim=16))
    trainer = Trainer(model, config=TrainerConfig(epochs=2, batch_size=batch_size, val_fraction=0, progress=False,
                                                  divergence_threshold=0))
    history = trainer.fit(train, resume=False)
    seconds = history[-1]["seconds"]  # the second epoch: start-up (process group, first touches) left out
    if trainer.is_main_process:
        world = 1 if trainer._dist is None else trainer._dist[1]
        Path(out).write_text(json.dumps({"processes": world, "rows": rows, "seconds": seconds,
                                         "rows_per_s": rows / seconds}))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _child(*args: str, torchrun: int = 0) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    head = [sys.executable] if not torchrun else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={torchrun}"]
    done = subprocess.run([*head, __file__, *args], env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one modality (0.8 GB for 1M rows)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--modalities", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps for the memory test")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--throughput-rows", type=int, default=None)
    parser.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    parser.add_argument("--access", default="read,mmap", help="prepared-data access modes to measure")
    parser.add_argument("--child", choices=["memory", "throughput"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "memory":
        return child_memory(args.path, args.steps, args.batch_size, args.access)
    if args.child == "throughput":
        return child_throughput(args.path, args.throughput_rows, args.batch_size, args.out)

    modalities = args.modalities or (1 if args.quick else 5)
    steps = args.steps or (50 if args.quick else 200)
    tp_rows = args.throughput_rows or (4096 if args.quick else 20_000)
    need = args.rows * modalities * 784 * 1.05 + SMALL_ROWS * modalities * 784
    folder = Path(args.dir or tempfile.mkdtemp(prefix="pyromv-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > 0.8 * free:
        raise SystemExit(f"{need / 1e9:.1f} GB needed in {folder}, {free / 1e9:.1f} GB free: use --quick, "
                         "fewer --rows or --modalities, or another --dir")
    results: dict = {"modalities": modalities, "batch_size": args.batch_size, "steps": steps}
    try:
        sizes = {"small": SMALL_ROWS, "big": args.rows}
        for name, rows in sizes.items():
            start = time.perf_counter()
            write(folder / name, rows, modalities)
            results[f"write_{name}_s"] = time.perf_counter() - start
            results[f"disk_{name}_mb"] = sum(f.stat().st_size for f in (folder / name).rglob("*")) / 2**20
        accesses = args.access.split(",")
        for access in accesses:
            for name in sizes:
                out = _child("--child", "memory", "--path", str(folder / name), "--steps", str(steps),
                             "--batch-size", str(args.batch_size), "--access", access)
                results[f"memory_{name}_{access}"] = json.loads(out.strip().splitlines()[-1])
            results[f"peak_rss_ratio_{access}"] = (results[f"memory_big_{access}"]["peak_rss_mb"]
                                                   / results[f"memory_small_{access}"]["peak_rss_mb"])
        for procs in (1, 2):
            target = folder / f"throughput{procs}.json"
            _child("--child", "throughput", "--path", str(folder / "big"), "--throughput-rows", str(tp_rows),
                   "--batch-size", str(args.batch_size), "--out", str(target), torchrun=procs if procs > 1 else 0)
            results[f"throughput_{procs}"] = json.loads(target.read_text())
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results, indent=2))
    print("\n| rows | modalities | disk | access | peak RSS | steps/s |\n|---|---|---|---|---|---|")
    for access in accesses:
        for name in ("small", "big"):
            m = results[f"memory_{name}_{access}"]
            print(f"| {m['rows']:,} | {modalities} | {results[f'disk_{name}_mb']:.0f} MiB | {access} "
                  f"| {m['peak_rss_mb']:.0f} MiB | {m['steps_per_s']:.1f} |")
    for access in accesses:
        ratio = results[f"peak_rss_ratio_{access}"]
        print(f"peak RSS ratio ({access}) {ratio:.2f} (target <= 1.5): {'ok' if ratio <= 1.5 else 'ABOVE TARGET'}")
    t1, t2 = results["throughput_1"], results["throughput_2"]
    print(f"throughput on {tp_rows:,} rows: 1 process {t1['rows_per_s']:.0f} rows/s, 2 processes "
          f"{t2['rows_per_s']:.0f} rows/s ({t2['rows_per_s'] / t1['rows_per_s']:.2f}x)")


if __name__ == "__main__":
    main()
