"""Training throughput and likelihood cost of pyromv and MultiVae, side by side, in one run.

The setting (the speed issue's): PolyFashion with 5 modalities of 1x28x28 (10,000 training rows,
every modality observed), MLP encoders 784-512-512 to a 16-d latent, decoders 16-512-784, a Normal
likelihood of scale 1, Adam with learning rate 1e-3, batches of 128, 2 torch threads; MMVAE with
K = 1 particle, MVAE without random subsets, JMVAE's joint encoder an MLP 3920-512-512 in both.
Each library trains with its own trainer; each (library, model) runs in a fresh process, one after
the other, so they never share the cores. Likelihoods: K = 100 and 1000 importance samples on 500
test rows, each library's valid estimator (pyromv's ``log_likelihood`` with PSIS k-hat; MultiVae's
``LikelihoodsEvaluator`` with ``unified_implementation=False``), seconds and peak resident memory
growth.

MultiVae lives in its own virtualenv::

    python -m venv ~/multivae-venv && ~/multivae-venv/bin/pip install multivae==1.0.3
    python -m benchmarks.side_by_side --multivae-python ~/multivae-venv/bin/python

Without ``--multivae-python`` only pyromv's side runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MODELS = ["mvae", "mmvae", "mopoe", "jmvae"]
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def prepare_data(path: Path, rows: int, test_rows: int, modalities: int, seed: int) -> None:
    """PolyFashion's arrays, written once so both libraries read the same tensors."""
    from pyromv.data import PolyFashion

    source = PolyFashion(num_modalities=modalities, train_images=rows, test_images=test_rows, seed=seed,
                         likelihood="normal", likelihood_scale=1.0)
    train, test = source.load("train"), source.load("test")
    torch.save({"train": dict(train.data), "test": dict(test.data),
                "train_labels": train.labels, "test_labels": test.labels}, path)


def run_worker(python: str, module_or_script: list[str], setting: Path, model: str, out: Path) -> dict:
    cmd = [python, *module_or_script, str(setting), model, str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def table(results: list[dict], Ks: list[int]) -> str:
    by = {(r["library"].split()[0], r["model"]): r for r in results}
    models = list(dict.fromkeys(r["model"] for r in results))
    lines = ["| model | MultiVae samples/s | pyromv samples/s | ratio |"
             + "".join(f" MultiVae K={K} s (MiB) | pyromv K={K} s (MiB) | speed-up |" for K in Ks)
             + f" log p per row (MultiVae / pyromv, K={Ks[-1]}) |",
             "|---|---|---|---|" + "---|---|---|" * len(Ks) + "---|"]
    for m in models:
        ours, theirs = by.get(("pyromv", m)), by.get(("multivae", m))
        cells = [m]
        cells.append(f"{theirs['samples_per_second']:.0f}" if theirs else "—")
        cells.append(f"{ours['samples_per_second']:.0f}" if ours else "—")
        cells.append(f"{ours['samples_per_second'] / theirs['samples_per_second']:.2f}" if ours and theirs else "—")
        for K in Ks:
            a = theirs["likelihood"].get(str(K)) if theirs else None
            b = ours["likelihood"].get(str(K)) if ours else None
            cells.append(f"{a['seconds']:.1f} ({a['peak_mib']:.0f})" if a else "—")
            cells.append(f"{b['seconds']:.1f} ({b['peak_mib']:.0f})" if b else "—")
            cells.append(f"{a['seconds'] / b['seconds']:.2f}" if a and b else "—")
        a = theirs["likelihood"].get(str(Ks[-1])) if theirs else None
        b = ours["likelihood"].get(str(Ks[-1])) if ours else None
        cells.append(" / ".join(f"{x['log_likelihood']:.0f}" if x else "—" for x in (a, b)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multivae-python", default=os.environ.get("PYROMV_MULTIVAE_PYTHON"),
                        help="python of a virtualenv with multivae==1.0.3 (default: $PYROMV_MULTIVAE_PYTHON)")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--libraries", nargs="+", default=["multivae", "pyromv"], choices=["multivae", "pyromv"])
    parser.add_argument("--rows", type=int, default=10_000, help="training rows")
    parser.add_argument("--nll-rows", type=int, default=500, help="test rows of the likelihood estimates")
    parser.add_argument("--modalities", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (throughput: the median epoch)")
    parser.add_argument("--K", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    if "multivae" in args.libraries and not args.multivae_python:
        print("no --multivae-python given: running pyromv's side only", file=sys.stderr)
        args.libraries = [lib for lib in args.libraries if lib != "multivae"]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_data(tmp / "data.pt", args.rows, args.nll_rows, args.modalities, args.seed)
        setting = {
            "data": str(tmp / "data.pt"), "shape": [1, 28, 28], "latent_dim": 16,
            "encoder_hidden": [512, 512], "decoder_hidden": [512], "joint_hidden": [512, 512],
            "likelihood_scale": 1.0, "lr": 1e-3, "batch_size": 128, "threads": args.threads,
            "epochs": args.epochs, "seed": args.seed, "K": args.K, "nll_rows": args.nll_rows,
            "mmvae_K": 1, "jmvae_alpha": 0.1,
        }
        (tmp / "setting.json").write_text(json.dumps(setting))
        results = []
        for model in args.models:
            for library in args.libraries:
                out = tmp / f"{library}-{model}.json"
                if library == "multivae":
                    r = run_worker(args.multivae_python, [str(HERE / "multivae_worker.py")], tmp / "setting.json",
                                   model, out)
                else:
                    r = run_worker(sys.executable, ["-m", "benchmarks.side_by_side.pyromv_worker"],
                                   tmp / "setting.json", model, out)
                cells = [f"K={K}: {v['seconds']:.1f} s, {v['peak_mib']:.0f} MiB, log p {v['log_likelihood']:.1f}"
                         for K, v in r["likelihood"].items()]
                print(f"{library:8s} {model:6s} {r['samples_per_second']:7.0f} samples/s  " + "  ".join(cells),
                      flush=True)
                results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print()
    print(table(results, args.K))


if __name__ == "__main__":
    main()
