"""The likelihood estimators side by side: a Markdown table for docs/likelihood.md.

``python benchmarks/likelihood_table.py [--quick] [--run-dir DIR] [--fashion-run-dir DIR] [--out FILE]``

For the default PolyDigits MVAE (trained here exactly as ``pyromv-train`` trains it with its
defaults, or loaded from ``--run-dir``, a ``pyromv-train`` run directory) and a PolyFashion MoPoE
(``model=mopoe data=polyfashion``, or ``--fashion-run-dir``), on the same test rows, each
estimator of ``log p(X)``:

* IWAE with the guide, K = 100, 1000, 10000;
* IWAE with the defensive proposal (K = 1000) and adaptive K (100 -> at most 12800);
* AIS with T = 100, 500, 2000 (16 chains);

each in a fresh interpreter (loading the model, one warm-up call on 2 rows, then the measured
call), with the mean over rows ± its standard error, the share of rows failing their diagnostic
(importance sampling: k-hat > 0.7; adaptive K: still above 0.7 at the budget; AIS: its halves
disagree or its s.e. is above 0.1 nats), seconds, and the peak memory: the growth of the
process's resident set during the call, after one warm-up call (Linux: the peak ``VmHWM`` is
reset through ``/proc/self/clear_refs`` before each call and read after it; elsewhere the growth
of ``ru_maxrss``, which only sees new peaks). Then the BDMC gap (forward AIS lower bound vs reverse
AIS upper bound, on data simulated from each model) at each T.

``--quick`` is a smoke test (a couple of training epochs, 16 rows, K up to 1000, T = 10 and 30,
4 chains): minutes on a CPU, not numbers to publish. The full run is for the lead.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------ settings
def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "rows": 16, "iwae": [100, 1000], "defensive": 1000, "adaptive": (100, 800),
            "ais": [10, 30], "chains": 4, "ais_options": {"warmup": 5, "leapfrog_steps": 2},
            "bdmc_rows": 8, "train": ["trainer.epochs=2"],
            "fashion_train": ["trainer.epochs=1", "data.train_images=300", "data.test_images=100"],
        }
    return {
        "rows": 200, "iwae": [100, 1000, 10000], "defensive": 1000, "adaptive": (100, 12800),
        "ais": [100, 500, 2000], "chains": 16, "ais_options": {}, "bdmc_rows": 50,
        "train": [], "fashion_train": [],
    }


# ------------------------------------------------------------------------------ memory
def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Growth of the resident set during the block, in MiB (see the module docstring)."""

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        self.linux = False
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.linux = _status_kib("VmHWM:") is not None
        except OSError:
            pass
        self.before = _status_kib("VmRSS:") if self.linux else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        after = _status_kib("VmHWM:") if self.linux else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mib = max(0, after - self.before) / 1024

    @property
    def method(self) -> str:
        return "VmHWM reset" if self.linux else "ru_maxrss growth"


# ------------------------------------------------------------------------------ models
def train_run(model: str, data: str, overrides: list[str], out: Path) -> Path:
    """``pyromv-train model=<model> data=<data> <overrides> evaluate=false`` into ``out``."""
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    from pyromv.cli.train import run

    with initialize(version_base=None):
        cfg = compose("train", overrides=[f"model={model}", f"data={data}", "evaluate=false", *overrides])
    run(cfg, model, data, out)
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # what pyromv-eval reads (with metrics.json)
    return out


def load_run(run_dir: Path):
    from pyromv.cli.eval import load_source
    from pyromv.models import load_model

    model = load_model(run_dir / "model")
    source, _ = load_source(run_dir)
    return model, source.load("test")


# ------------------------------------------------------------------------------ one table
def _row(label: str, result, seconds: float, mib: float) -> dict[str, Any]:
    passed = result.passed
    if passed is None:
        failing = float((result.khat > 0.7).double().mean())
    else:
        failing = 1.0 - float(passed.double().mean())
    return {"estimator": label, "mean": result.mean, "stderr": result.stderr, "failing": failing,
            "seconds": seconds, "peak_mib": mib,
            "khat_above": float((result.khat > 0.7).double().mean()) if not bool(result.khat.isnan().all())
            else None}


def estimator_runs(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    runs: list[tuple[str, dict[str, Any]]] = [(f"IWAE, K={K}", {"K": K}) for K in cfg["iwae"]]
    runs.append((f"defensive IS, K={cfg['defensive']}", {"K": cfg["defensive"], "proposal": "defensive"}))
    k0, kmax = cfg["adaptive"]
    runs.append((f"adaptive K, {k0}..{kmax}", {"K": k0, "adaptive": True, "max_particles": kmax}))
    for T in cfg["ais"]:
        runs.append((f"AIS, T={T}, {cfg['chains']} chains",
                     {"method": "ais", "num_steps": T, "num_chains": cfg["chains"],
                      "ais_options": cfg["ais_options"] or None}))
    return runs


def measure_one(run_dir: Path, rows: int, kw: dict[str, Any], seed: int, threads: int) -> dict[str, Any]:
    """One estimator in this (fresh) process: load, warm up on 2 rows, reset the peak, run."""
    from pyromv.metrics import log_likelihood

    torch.set_num_threads(threads)
    model, data = load_run(run_dir)
    data = data.subset(torch.arange(min(rows, len(data))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat warnings are what the table reports
        log_likelihood(model, data.subset(torch.arange(2)), K=30, seed=seed)  # imports, first kernels
        start = time.perf_counter()
        with PeakMemory() as mem:
            result = log_likelihood(model, data, seed=seed, **kw)
        seconds = time.perf_counter() - start
    row = _row("", result, seconds, mem.mib)
    row["memory_method"] = mem.method
    return row


def estimator_table(run_dir: Path, cfg: dict[str, Any], seed: int = 0, threads: int = 1) -> list[dict]:
    """Every estimator, each in a fresh interpreter (clean peak memory, no shared allocator state)."""
    import subprocess

    out = []
    for label, kw in estimator_runs(cfg):
        job = json.dumps({"run_dir": str(run_dir), "rows": cfg["rows"], "kw": kw, "seed": seed, "threads": threads})
        proc = subprocess.run([sys.executable, __file__, "--worker", job], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{label} failed:\n{proc.stderr}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["estimator"] = label
        out.append(row)
        print(f"  {label}: {row['mean']:.2f} ± {row['stderr']:.2f}, failing {row['failing']:.0%}, "
              f"{row['seconds']:.1f} s, {row['peak_mib']:.0f} MiB ({row['memory_method']})", flush=True)
    return out


def bdmc_table(model, cfg: dict[str, Any], seed: int = 0) -> list[dict]:
    from pyromv.metrics.ais import bdmc

    out = []
    for T in cfg["ais"]:
        start = time.perf_counter()
        res = bdmc(model, cfg["bdmc_rows"], num_steps=T, num_chains=cfg["chains"], seed=seed, **cfg["ais_options"])
        out.append({"T": T, "lower": res.lower.mean, "upper": float(res.upper.mean()), "gap": res.mean_gap,
                    "seconds": time.perf_counter() - start})
        print(f"  BDMC T={T}: lower {out[-1]['lower']:.2f}, upper {out[-1]['upper']:.2f}, "
              f"gap {out[-1]['gap']:.3f}", flush=True)
    return out


def markdown(name: str, rows: list[dict], bdmc_rows: list[dict], memory: str) -> str:
    lines = [f"### {name}", "",
             "| estimator | log p̂ (nats, mean ± s.e.) | rows failing diagnostic | k-hat > 0.7 | seconds "
             f"| peak memory (MiB, {memory}) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        khat = "n/a" if r["khat_above"] is None else f"{r['khat_above']:.0%}"
        lines.append(f"| {r['estimator']} | {r['mean']:.2f} ± {r['stderr']:.2f} | {r['failing']:.0%} | {khat} "
                     f"| {r['seconds']:.1f} | {r['peak_mib']:.0f} |")
    if bdmc_rows:
        lines += ["", "BDMC on data simulated from the model (forward AIS lower bound, reverse AIS upper bound):",
                  "", "| T | lower | upper | gap | seconds |", "|---|---|---|---|---|"]
        for b in bdmc_rows:
            lines.append(f"| {b['T']} | {b['lower']:.2f} | {b['upper']:.2f} | {b['gap']:.3f} | {b['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test settings (minutes)")
    parser.add_argument("--run-dir", type=Path, help="a pyromv-train run of the PolyDigits MVAE")
    parser.add_argument("--fashion-run-dir", type=Path, help="a pyromv-train run of the PolyFashion MoPoE")
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--out", type=Path, help="write the Markdown (and a .json beside it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1, as docs/performance.md)")
    parser.add_argument("--rows", type=int, help="test rows to score (default: 16 with --quick, else 200)")
    parser.add_argument("--ais-steps", type=int, nargs="+", help="AIS steps T (default: 100 500 2000)")
    parser.add_argument("--chains", type=int, help="AIS chains per row (default: 16)")
    parser.add_argument("--leapfrog", type=int, help="HMC leapfrog steps per AIS transition (default: AIS's)")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one estimator, in a fresh process
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(measure_one(Path(job["run_dir"]), job["rows"], job["kw"], job["seed"], job["threads"])))
        return 0
    torch.set_num_threads(args.threads)
    cfg = settings(args.quick)
    if args.rows:
        cfg["rows"] = args.rows
    if args.ais_steps:
        cfg["ais"] = list(args.ais_steps)
    if args.chains:
        cfg["chains"] = args.chains
    if args.leapfrog:
        cfg["ais_options"] = {**cfg["ais_options"], "leapfrog_steps": args.leapfrog}
    work = Path(tempfile.mkdtemp(prefix="likelihood_table_"))
    try:
        import pyromv.metrics.ais  # noqa: F401
    except ImportError:
        print("pyromv.metrics.ais is missing: the AIS rows and BDMC are left out", file=sys.stderr)
        cfg["ais"] = []
    cases = [] if args.skip_digits else [
        ("PolyDigits, MVAE (pyromv-train defaults)", "mvae", "polydigits", args.run_dir, cfg["train"])]
    if not args.skip_fashion:
        cases.append(("PolyFashion, MoPoE", "mopoe", "polyfashion", args.fashion_run_dir, cfg["fashion_train"]))
    parts, raw = [], {}
    memory = PeakMemory()
    with memory:
        pass
    for name, model_name, data_name, run_dir, overrides in cases:
        print(f"{name}:", flush=True)
        try:
            if run_dir is None:
                run_dir = train_run(model_name, data_name, ["trainer.progress=false", *overrides],
                                    work / f"{model_name}_{data_name}")
            model, test = load_run(run_dir)
        except FileNotFoundError as err:
            print(f"  skipped: {err}", file=sys.stderr)
            continue
        rows = estimator_table(run_dir, cfg, threads=args.threads)
        bd = bdmc_table(model, cfg) if cfg["ais"] else []
        raw[name] = {"run_dir": str(run_dir), "estimators": rows, "bdmc": bd}
        parts.append(markdown(f"{name} ({min(cfg['rows'], len(test))} test rows{', QUICK' if args.quick else ''})",
                              rows, bd, memory.method))
    text = "\n".join(parts)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
