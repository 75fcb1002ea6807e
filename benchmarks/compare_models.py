"""Produce the model comparison table ``docs/results.md`` (and ``docs/results/results.json``).

Every registered model (or those of ``--models``) is trained and evaluated by the command line's
own job, :func:`pyromv.cli.train.run`, on each setting of ``--data``:

* ``polydigits``: PolyDigits with its default settings (3 modalities), 30% of the training
  set's modalities missing at random (the CLI's default ``missing_rate``);
* ``polyfashion``: PolyFashion with ``data.num_modalities=5``, 30% missing.

Each run is a fresh interpreter (``python -m benchmarks.compare_models --worker RUN_DIR``) with
one torch thread, writing into ``<out>/<data>/<model>[-<variant>]/seed<k>/``: a crash, a NaN
loss or a timeout in one run becomes an error in its table row and the others go on. A run
whose ``metrics.json`` was finished with the same overrides is reused unless ``--force``; an
interrupted run resumes from its training checkpoint. The table reports the test ELBO, the
importance-sampled log-likelihood with its standard error and the share of rows whose PSIS
k-hat exceeds 0.7, the cross-modal coherence by number of given modalities, the joint
coherence and the seconds per training epoch; with several seeds each cell is the mean ± s.d.
over the seeds. The cross-generation pictures are copied to ``docs/results/<data>/<row>.png``.

Budget. Measured per-epoch times (training + validation pass, one torch thread, on two CPU
cores shared with other jobs, ``trainer.epochs=2``, defaults otherwise):

============  ==========  ===========
model         PolyDigits  PolyFashion
============  ==========  ===========
mvae          0.12 s      0.38 s
jmvae         0.19 s      0.33 s
mopoe         0.11 s      0.33 s
mmvae         0.43 s      5.5-7.7 s
============  ==========  ===========

The quick evaluation at the end of a run took 3.2 s (PolyDigits) and 12.5 s (PolyFashion)
for mvae. The default budget is therefore the CLI's own trainer default, 100 epochs with
early stopping after 15 epochs without improvement, on both data sets: about 25 to 50
core-minutes for ~11 models, most of it mixture-of-experts models on PolyFashion (about 10
minutes each), so 30 to 60 minutes wall time with ``--jobs 2`` on two free cores.

Run (the full table)::

    python -m benchmarks.compare_models --jobs 2

Other examples::

    python -m benchmarks.compare_models --models mvae,mopoe --data polydigits --epochs 20
    python -m benchmarks.compare_models --seeds 3 --variant mvae-warmup:trainer.kl_warmup_epochs=5
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: settings of the table: data-set name -> (description, overrides of ``pyromv-train``)
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "polydigits": (
        "PolyDigits, default settings (3 modalities), 30% of the training set's modalities missing at random",
        ["missing_rate=0.3"],
    ),
    "polyfashion": (
        "PolyFashion, 5 modalities, 30% of the training set's modalities missing at random",
        ["data.num_modalities=5", "missing_rate=0.3"],
    ),
}
#: training epochs per data set when ``--epochs`` is not given (the CLI's trainer default)
DEFAULT_EPOCHS: dict[str, int] = {"polydigits": 100, "polyfashion": 100}
#: overrides of every run: one torch thread, no progress bars in the logs
BASE_OVERRIDES: list[str] = ["num_threads=1", "trainer.progress=false"]
TITLES: dict[str, str] = {"polydigits": "PolyDigits", "polyfashion": "PolyFashion"}
OK_STATUSES = ("ok", "reused")


@dataclass
class Job:
    """One training run: a model (or variant) on one data set with one seed.

    Attributes
    ----------
    data : str
        Data-source name (a key of ``pyromv.cli.config.DATA_SOURCES``).
    model : str
        Registered model name.
    label : str
        Row name in the table: ``model`` or ``model-variant``.
    seed : int
        ``trainer.seed`` (initialisation and batch order; data and missingness stay fixed).
    overrides : list of str
        Every Hydra override of the run, in order.
    run_dir : str
        Output folder of the run.
    """

    data: str
    model: str
    label: str
    seed: int
    overrides: list[str]
    run_dir: str


@dataclass
class Record:
    """The outcome of a :class:`Job`: ``status`` is ``ok``, ``reused`` or ``error``."""

    job: Job
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    wall_seconds: float = 0.0


# ------------------------------------------------------------------------------ planning
def parse_variant(spec: str, models: Sequence[str]) -> tuple[str, str, list[str]]:
    """Split ``NAME:override,override`` into (row label, model, overrides).

    The model is ``model=...`` among the overrides if given, else the longest registered
    name that ``NAME`` equals or starts with followed by ``-`` (``mvae-warmup`` -> ``mvae``).
    """
    if ":" not in spec:
        raise ValueError(f"--variant {spec!r}: expected NAME:override[,override...]")
    label, _, rest = spec.partition(":")
    overrides = [o.strip() for o in rest.split(",") if o.strip()]
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("model=")]
    overrides = [o for o in overrides if not o.startswith("model=")]
    if chosen:
        model = chosen[-1]
    else:
        prefixes = [m for m in models if label == m or label.startswith(m + "-")]
        if not prefixes:
            raise ValueError(f"--variant {spec!r}: {label!r} names no registered model "
                             f"(start it with one of {sorted(models)} or add model=NAME)")
        model = max(prefixes, key=len)
    if model not in models:
        raise ValueError(f"--variant {spec!r}: unknown model {model!r}; registered: {sorted(models)}")
    return label, model, overrides


def parse_epochs(text: str | None, data: Sequence[str]) -> dict[str, int]:
    """``"30"`` (every data set) or ``"polydigits=100,polyfashion=50"``; None: the defaults."""
    epochs = {d: DEFAULT_EPOCHS.get(d, 100) for d in data}
    if not text:
        return epochs
    if "=" not in text:
        return dict.fromkeys(data, int(text))
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in epochs:
            raise ValueError(f"--epochs: {name.strip()!r} is not among --data {list(data)}")
        epochs[name.strip()] = int(value)
    return epochs


def plan(
    models: Sequence[str],
    data: Sequence[str],
    epochs: Mapping[str, int],
    seeds: int,
    out: Path,
    variants: Sequence[tuple[str, str, list[str]]] = (),
    extra: Sequence[str] = (),
) -> list[Job]:
    """Every run of the table, by data set, then row (models, then variants), then seed."""
    rows = [(m, m, []) for m in models] + [tuple(v) for v in variants]
    jobs = []
    for d in data:
        setting = SETTINGS.get(d, ("", []))[1]
        for label, model, own in rows:
            for seed in range(seeds):
                overrides = [
                    f"model={model}", f"data={d}", *BASE_OVERRIDES, *setting,
                    f"trainer.epochs={epochs[d]}", f"trainer.seed={seed}", *own, *extra,
                ]
                run_dir = out / d / label / f"seed{seed}"
                jobs.append(Job(d, model, label, seed, overrides, str(run_dir)))
    return jobs


# ------------------------------------------------------------------------------ running
def _finished(job: Job) -> dict[str, Any] | None:
    """The metrics of a finished run of exactly this job, else None."""
    path = Path(job.run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("compare", {}).get("overrides") != job.overrides:
        return None
    return metrics


def _error_text(log: Path, returncode: int | None) -> str:
    """The last line of the run's log that looks like an exception (else its last line)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if "Error" in ln.split(":", 1)[0] or "Exception" in ln.split(":", 1)[0]]
    text = errors[-1] if errors else (lines[-1] if lines else "")
    code = "timeout" if returncode is None else f"exit code {returncode}"
    return f"{code}: {text}" if text else code


def execute(job: Job, force: bool = False, timeout: float = 0) -> Record:
    """Run ``job`` in a fresh interpreter (or reuse its finished metrics); never raises."""
    run_dir = Path(job.run_dir)
    if not force:
        metrics = _finished(job)
        if metrics is not None:
            return Record(job, "reused", summarize(metrics))
    spec = run_dir / "job.json"
    same = False
    if spec.is_file() and not force:
        try:
            same = json.loads(spec.read_text()).get("overrides") == job.overrides
        except ValueError:
            same = False
    if run_dir.exists() and not same:  # another configuration or --force: start afresh
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps(asdict(job), indent=2))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.compare_models", "--worker", str(run_dir.resolve())]
    start = time.perf_counter()
    log = run_dir / "log.txt"
    with log.open("w") as handle:
        try:
            proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                  timeout=timeout or None, check=False)
            returncode: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    wall = time.perf_counter() - start
    metrics = _finished(job) if returncode == 0 else None
    if metrics is None:
        return Record(job, "error", error=_error_text(log, returncode), wall_seconds=wall)
    return Record(job, "ok", summarize(metrics), wall_seconds=wall)


def work(run_dir: Path) -> None:
    """The worker: train and evaluate the job in ``run_dir/job.json`` with the CLI's ``run``."""
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    from pyromv.cli.train import run

    job = json.loads((run_dir / "job.json").read_text())
    with initialize(version_base=None):
        cfg = compose(config_name="train", overrides=job["overrides"])
    # what pyromv-eval reads to re-evaluate the run later
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    metrics = run(cfg, job["model"], job["data"], run_dir)
    metrics["compare"] = {"label": job["label"], "seed": job["seed"], "overrides": job["overrides"],
                          "trainer": OmegaConf.to_container(cfg.trainer)}
    # ``run`` wrote metrics.json before evaluating; this one has the evaluation and marks the run done
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=str))
    tmp.replace(run_dir / "metrics.json")


def run_all(jobs: Sequence[Job], n_jobs: int = 1, force: bool = False, timeout: float = 0) -> list[Record]:
    """Execute the jobs, ``n_jobs`` at a time, printing one line per finished run."""
    lock = threading.Lock()
    done = [0]

    def one(job: Job) -> Record:
        record = execute(job, force, timeout)
        with lock:
            done[0] += 1
            note = record.error if record.status == "error" else f"{record.wall_seconds:.0f} s"
            print(f"[{done[0]}/{len(jobs)}] {job.data} {job.label} seed{job.seed}: {record.status} ({note})",
                  flush=True)
        return record

    with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        return list(pool.map(one, jobs))


# ------------------------------------------------------------------------------ numbers
def summarize(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The table's numbers of one run's metrics (as returned by :func:`pyromv.cli.train.run`)."""
    evaluation = metrics.get("evaluation") or {}
    ll = evaluation.get("log_likelihood") or {}
    coherence = (evaluation.get("coherence") or {}).get("by_size") or {}
    seconds = [float(r["seconds"]) for r in metrics.get("history") or [] if "seconds" in r]
    trainer = (metrics.get("compare") or {}).get("trainer") or {}
    return {
        "test_elbo": metrics.get("test_elbo"),
        "log_likelihood": ll.get("mean"),
        "log_likelihood_stderr": ll.get("stderr"),
        "khat_fraction_above_threshold": ll.get("khat_fraction_above_threshold"),
        "khat_threshold": ll.get("khat_threshold"),
        "num_particles": ll.get("num_particles"),
        "log_likelihood_rows": ll.get("rows"),
        "coherence_by_size": {int(k): v for k, v in coherence.items()},
        "joint_coherence": evaluation.get("joint_coherence"),
        "seconds_per_epoch": statistics.fmean(seconds) if seconds else None,
        "epochs": metrics.get("epochs"),
        "stopped_early": metrics.get("stopped_early"),
        "train_rows": metrics.get("train_rows"),
        "test_rows": metrics.get("test_rows"),
        "train_seconds": metrics.get("seconds"),
        "eval_seconds": evaluation.get("seconds"),
        "max_epochs": trainer.get("epochs"),
        "patience": trainer.get("patience"),
    }


def _values(summaries: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(s[key]) for s in summaries if s.get(key) is not None]


def _num(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def _mean_sd(values: Sequence[float], digits: int) -> str:
    """One value as is; several as ``mean ± s.d.``; none as a dash."""
    if not values:
        return "—"
    if len(values) == 1:
        return _num(values[0], digits)
    return f"{_num(statistics.fmean(values), digits)} ± {_num(statistics.stdev(values), digits)}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def _likelihood_cell(summaries: Sequence[Mapping[str, Any]]) -> str:
    """One seed: mean ± s.e. over test rows; several: mean ± s.d. over seeds; k-hat share."""
    means = _values(summaries, "log_likelihood")
    if not means:
        return "—"
    khat = _values(summaries, "khat_fraction_above_threshold")
    share = _pct(statistics.fmean(khat)) if khat else "n/a"
    if len(means) == 1:
        se = _values(summaries, "log_likelihood_stderr")
        cell = _num(means[0], 2) + (f" ± {_num(se[0], 2)}" if se else "")
    else:
        cell = _mean_sd(means, 2)
    return f"{cell} ({share})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(records: Sequence[Record], data: str) -> tuple[list[str], list[str]]:
    """The markdown table of one data set (lines) and its notes (errors, missing seeds)."""
    rows: dict[str, list[Record]] = {}
    for r in records:
        if r.job.data == data:
            rows.setdefault(r.job.label, []).append(r)
    sizes = sorted({k for r in records if r.job.data == data and r.status in OK_STATUSES
                    for k in r.summary.get("coherence_by_size", {})})
    header = ["model", "test ELBO", "log-likelihood ± s.e. (k-hat > 0.7)",
              *(f"coherence given {k}" for k in sizes), "joint coherence", "s/epoch", "epochs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for label, recs in rows.items():
        ok = [r.summary for r in recs if r.status in OK_STATUSES]
        failed = [r for r in recs if r.status == "error"]
        for r in failed:
            notes.append(f"{label} seed {r.job.seed} failed: {r.error}")
        name = label if not failed or not ok else f"{label} ({len(ok)}/{len(recs)} seeds)"
        if not ok:
            cells = [label, "error: " + failed[0].error[:160], *["—"] * (len(header) - 2)]
        else:
            coherence = [
                _mean_sd([s["coherence_by_size"][k] for s in ok if s["coherence_by_size"].get(k) is not None], 3)
                for k in sizes
            ]
            epochs = _values(ok, "epochs")
            # deterministic baselines (DCCAE, mAAE, mWAE) report their objective, not an ELBO
            from pyromv.models import get_model_class

            bound = getattr(get_model_class(recs[0].job.model), "has_likelihood", True)
            cells = [
                name,
                _mean_sd(_values(ok, "test_elbo"), 2) if bound else "—",
                _likelihood_cell(ok),
                *coherence,
                _mean_sd(_values(ok, "joint_coherence"), 3),
                _num(statistics.fmean(_values(ok, "seconds_per_epoch")), 2)
                if _values(ok, "seconds_per_epoch") else "—",
                "/".join(str(int(e)) for e in epochs) if len(set(epochs)) > 1 else
                (str(int(epochs[0])) if epochs else "—"),
            ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines, notes


def machine() -> dict[str, Any]:
    """Facts about this machine and the software versions."""
    import pyro
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "usable_cpus": usable,
        "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
        "platform": platform.platform(),
    }


def _budget(records: Iterable[Record], data: str) -> str:
    """The likelihood estimator's budget as the runs report it (K particles, test rows)."""
    pairs = sorted({(r.summary.get("num_particles"), r.summary.get("log_likelihood_rows"))
                    for r in records if r.job.data == data and r.status in OK_STATUSES
                    and r.summary.get("num_particles") is not None})
    return ", ".join(f"K = {k} particles on {n} test rows" for k, n in pairs) or "—"


def _overrides(records: Sequence[Record], data: str) -> tuple[list[str], dict[str, list[str]]]:
    """The overrides shared by every run of ``data`` (less model and seed) and each row's own."""
    jobs = [r.job for r in records if r.job.data == data]
    if not jobs:
        return [], {}
    varying = ("model=", "trainer.seed=")
    common = [o for o in jobs[0].overrides if all(o in j.overrides for j in jobs) and not o.startswith(varying)]
    own = {}
    for j in jobs:
        own.setdefault(j.label, [o for o in j.overrides if o not in common and not o.startswith(varying)])
    return common, own


def _training(records: Sequence[Record], data: str) -> str:
    """Maximum epochs and early-stopping patience as the finished runs report them."""
    pairs = sorted({(r.summary.get("max_epochs"), r.summary.get("patience"))
                    for r in records if r.job.data == data and r.status in OK_STATUSES
                    and r.summary.get("max_epochs") is not None}, key=str)
    return ", ".join(f"at most {e} epochs, patience {p}" for e, p in pairs) or "—"


def markdown(
    records: Sequence[Record],
    data: Sequence[str],
    command: str,
    facts: Mapping[str, Any],
    date: str,
    pictures: Mapping[tuple[str, str], str],
    n_jobs: int = 1,
) -> str:
    """The whole ``results.md``; ``pictures`` maps (data, row) to a path relative to it."""
    out = [
        "# Model comparison",
        "",
        f"Produced by `{command}` on {date} (the script is `benchmarks/compare_models.py`; "
        "rerun it to refresh this page).",
        f"Machine: {facts['cpu']}, {facts['cpu_count']} CPUs ({facts['usable_cpus']} usable), "
        f"{facts['platform']}; Python {facts['python']}, torch {facts['torch']}, pyro {facts['pyro']}. "
        f"Each run is `pyromv-train` (`pyromv.cli.train.run`) in its own process with one torch thread, "
        f"{n_jobs} at a time.",
        "",
        "Columns: *test ELBO* is each model's reported ELBO on the whole test set in nats per row "
        "(`model.evaluation_loss()`: beta = 1, no training-only terms, a bound on log p(X_O) for the "
        "model's own guide; mixtures report the stratified ELBO, which is looser than their likelihood); "
        "the deterministic baselines (dccae, maae, mwae) define no likelihood and have neither column; "
        "*log-likelihood* is the importance-weighted "
        "estimate of log p(X) on test rows (nats per row) ± its standard error over rows, with the share "
        "of rows whose PSIS k-hat exceeds 0.7 (whose estimates are unreliable: the true value is likely "
        "higher); *coherence given k* is the accuracy of pretrained per-modality classifiers on the "
        "modalities generated from subsets of k given modalities, averaged over subsets and targets; "
        "*joint coherence* is the share of prior samples whose generated modalities all get the same "
        "class; *s/epoch* is the mean wall time of a training epoch (training and validation pass); "
        "*epochs* is the number trained (training stops early after `patience` epochs without improvement "
        "of the validation loss; the best validation checkpoint is evaluated). With several seeds a cell is the "
        "mean ± s.d. over seeds (the log-likelihood then shows the s.d. over seeds and the mean k-hat "
        "share). Seeds vary the initialisation and batch order; the data and the missingness are fixed.",
    ]
    for d in data:
        title = TITLES.get(d, d)
        description, setting = SETTINGS.get(d, (f"{title}, default settings", []))
        lines, notes = table(records, d)
        common, own = _overrides(records, d)
        out += [
            "", f"## {title}", "",
            f"{description}. Overrides of every run: `{' '.join(common)}`. "
            f"Training: {_training(records, d)}. Log-likelihood: {_budget(records, d)}.",
        ]
        out += [f"Row {label}: `{' '.join(extra)}`." for label, extra in own.items() if extra]
        out += ["", *lines]
        if notes:
            out += ["", "Errors:", "", *(f"- {_cell(n)}" for n in notes)]
        labels = list(dict.fromkeys(r.job.label for r in records if r.job.data == d))
        out += ["", "Cross-generation pictures (seed 0 or the first seed that finished; one panel per given "
                "modality: its inputs on top, then the posterior mean decoded into every modality, the "
                "given one's being its reconstruction):", ""]
        for label in labels:
            path = pictures.get((d, label))
            out.append(f"- {label}: [{path}]({path})" if path else f"- {label}: no picture")
    return "\n".join(out) + "\n"


def _save_small(source: Path, target: Path, width: int = 400) -> None:
    from PIL import Image  # matplotlib's own dependency

    with Image.open(source) as image:
        small = image.convert("L")
        if small.width > width:
            small = small.resize((width, round(small.height * width / small.width)), Image.LANCZOS)
        small.save(target, optimize=True)


def copy_pictures(records: Sequence[Record], results_dir: Path, relative_to: Path) -> dict[tuple[str, str], str]:
    """Copy each row's ``cross_generation.png`` (first successful seed) to ``results_dir/<data>/<row>.png``,
    in grey levels and at most 400 pixels wide (the pictures are grey-scale; this keeps the
    repository's copies at about a fifth of the run's file)."""
    pictures: dict[tuple[str, str], str] = {}
    for r in records:
        key = (r.job.data, r.job.label)
        source = Path(r.job.run_dir) / "cross_generation.png"
        if key in pictures or r.status not in OK_STATUSES or not source.is_file():
            continue
        target = results_dir / r.job.data / f"{r.job.label}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        _save_small(source, target)
        pictures[key] = os.path.relpath(target, relative_to)
    return pictures


def write_outputs(
    records: Sequence[Record], data: Sequence[str], output: Path, command: str, n_jobs: int,
) -> None:
    """Write ``output`` (markdown), the pictures and ``<output stem>/results.json`` beside it."""
    results_dir = output.parent / output.stem
    results_dir.mkdir(parents=True, exist_ok=True)
    facts = machine()
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    pictures = copy_pictures(records, results_dir, output.parent)
    output.write_text(markdown(records, data, command, facts, date, pictures, n_jobs))
    raw = {
        "command": command, "date": date, "machine": facts, "jobs": n_jobs,
        "runs": [
            {**asdict(r.job), "status": r.status, "error": r.error, "wall_seconds": r.wall_seconds,
             "summary": r.summary}
            for r in records
        ],
    }
    (results_dir / "results.json").write_text(json.dumps(raw, indent=2))


# ------------------------------------------------------------------------------ command line
def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_models", description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--models", help="comma-separated models (default: every registered model)")
    parser.add_argument("--data", default="polydigits,polyfashion", help="comma-separated data sets")
    parser.add_argument("--epochs", help=f"N, or data=N,... (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--seeds", type=int, default=1, help="trainer seeds 0..N-1 per row")
    parser.add_argument("--variant", action="append", default=[],
                        help="extra row NAME:override,override (e.g. mvae-warmup:trainer.kl_warmup_epochs=5)")
    parser.add_argument("--extra", action="append", default=[], help="override applied to every run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per run before it is killed (0: none)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("--out", default="outputs/compare", help="folder of the runs")
    parser.add_argument("--output", default="docs/results.md",
                        help="the markdown file; pictures and results.json go to <its stem>/ beside it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work(Path(args.worker))
        return

    from pyromv.cli.config import DATA_SOURCES
    from pyromv.models import registered_models

    registered = registered_models()
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else registered
    unknown = [m for m in models if m not in registered]
    if unknown:
        parser.error(f"unknown models {unknown}; registered: {registered}")
    data = [d.strip() for d in args.data.split(",") if d.strip()]
    unknown = [d for d in data if d not in DATA_SOURCES]
    if unknown:
        parser.error(f"unknown data sets {unknown}; available: {sorted(DATA_SOURCES)}")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    try:
        variants = [parse_variant(v, registered) for v in args.variant]
        epochs = parse_epochs(args.epochs, data)
    except ValueError as e:
        parser.error(str(e))
    labels = models + [v[0] for v in variants]
    if len(set(labels)) < len(labels):
        parser.error(f"row names must be unique, got {labels}")
    jobs = plan(models, data, epochs, args.seeds, Path(args.out), variants, args.extra)
    print(f"{len(jobs)} runs: {', '.join(labels)} on {', '.join(data)}, "
          f"epochs {epochs}, {args.seeds} seed(s), {args.jobs} at a time; runs in {args.out}", flush=True)
    records = run_all(jobs, args.jobs, args.force, args.timeout)
    command = "python -m benchmarks.compare_models" + ("" if not argv else " " + shlex.join(argv))
    write_outputs(records, data, Path(args.output), command, args.jobs)
    failed = sum(r.status == "error" for r in records)
    print(f"wrote {args.output} ({len(records) - failed} runs ok, {failed} failed)")


if __name__ == "__main__":
    main()
