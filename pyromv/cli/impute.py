"""``pyromv-impute``: fill the missing entries of a data set with a model trained by ``pyromv-train``.

``pyromv-impute run_dir=outputs/... data=test holdout=0.2`` loads ``run_dir/model``, takes the
test split of the run's data source (``data=train`` the training split, or ``data=path.npz`` a
file of one array per modality named as the modalities, NaN where missing, and optionally a
boolean ``<name>__mask`` array per modality, True where observed), hides a fraction ``holdout``
of the observed entries (each independently, seeded by ``holdout_seed``; every row keeps one
entry) and imputes every missing entry by self-normalised importance sampling
(:func:`pyromv.metrics.imputation.impute`). It writes to ``out`` (default ``run_dir/impute``):

* ``<modality>.npz``: ``imputed`` (the filled array), ``std`` (predictive std, 0 where
  observed), ``missing`` (the entries imputed) and, with ``num_imputations > 0``, ``imputations``;
* ``rows.npz``: ``ess`` and ``khat`` of each row's importance weights;
* ``summary.json`` and ``errors.md``: with ``holdout > 0``, the error on the hidden entries,
  whose true values are known: RMSE and MAE of continuous entries, accuracy of categorical
  ones, next to the same errors of filling each column with its observed mean (or mode).

A user error ends in one line on stderr and exit status 2 (see :mod:`pyromv.cli.errors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from ..data.dataset import MultimodalDataset
from ..data.missingness import feature_mcar
from ..data.validation import likelihood_head
from ..metrics.imputation import Imputation, imputation_error, impute
from ..models import load_model
from .errors import UsageError, job_errors, run_cli
from .eval import check_run_dir, load_source

#: the resolver of ``pyromv-impute``'s ``hydra.run.dir`` (checks ``run_dir`` first)
OUTPUT_DIR_RESOLVER = "pyromv_impute_output_dir"


@dataclass
class ImputeJob:
    """``pyromv-impute``'s options.

    Attributes
    ----------
    run_dir : str
        A directory written by ``pyromv-train``.
    data : str
        ``"test"`` or ``"train"`` (a split of the run's data source) or a ``.npz`` file.
    out : str
        Output folder (default ``run_dir/impute``).
    holdout : float
        Fraction of the observed entries hidden before imputing and scored after (0: none).
    holdout_seed : int
        Seed of the hidden entries.
    num_samples, num_imputations, sample, batch_size, particle_chunk, seed, progress
        Options of :func:`~pyromv.metrics.imputation.impute`.
    max_rows : int
        Impute the first ``max_rows`` rows only (0: all).
    """

    run_dir: str = MISSING
    data: str = "test"
    out: str = ""
    holdout: float = 0.0
    holdout_seed: int = 0
    num_samples: int = 1000
    num_imputations: int = 0
    sample: bool = True
    batch_size: int = 64
    particle_chunk: int = 100
    seed: int = 0
    max_rows: int = 0
    progress: bool = True
    hydra: Any = field(default_factory=lambda: {"run": {"dir": f"${{{OUTPUT_DIR_RESOLVER}:}}"}})


def _output_dir(*, _root_: DictConfig) -> str:
    if OmegaConf.is_missing(_root_, "run_dir"):
        raise UsageError("run_dir is required: pyromv-impute run_dir=<a directory written by pyromv-train>")
    try:
        run_dir = check_run_dir(_root_.run_dir)
    except FileNotFoundError as err:
        raise UsageError(str(err).replace("pyromv-eval", "pyromv-impute")) from err
    return str(_root_.out or run_dir / "impute")


OmegaConf.register_new_resolver(OUTPUT_DIR_RESOLVER, _output_dir, replace=True)
ConfigStore.instance().store(name="impute", node=ImputeJob)


def check_job(job: ImputeJob) -> None:
    """Refuse bad option values (``UsageError`` naming the option) before anything is loaded."""
    if not 0.0 <= job.holdout < 1.0:
        raise UsageError(f"holdout must be in [0, 1) (the fraction of observed entries hidden), got {job.holdout}")
    for name in ("num_samples", "batch_size", "particle_chunk"):
        if getattr(job, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(job, name)}")
    for name in ("num_imputations", "max_rows"):
        if getattr(job, name) < 0:
            raise UsageError(f"{name} must be >= 0, got {getattr(job, name)}")


def load_data(spec: str, run_dir: Path, modalities: list) -> MultimodalDataset:
    """The data set ``spec`` names: a split of the run's source or a ``.npz`` file."""
    if spec in ("train", "test"):
        source, _ = load_source(run_dir)
        return source.load(spec)
    path = Path(spec)
    if path.suffix != ".npz":
        raise UsageError(f"data={spec}: expected 'train', 'test' or a .npz file")
    if not path.is_file():
        raise FileNotFoundError(f"data={spec}: no such file")
    with np.load(path) as f:
        arrays = dict(f)
    names = [m.name for m in modalities]
    unknown = sorted(k for k in arrays if k.removesuffix("__mask") not in names)
    if unknown:
        raise UsageError(f"data={spec}: unknown arrays {unknown}; the model's modalities are {names} "
                         "(and <name>__mask for masks)")
    absent = [m for m in names if m not in arrays]
    if absent:
        raise UsageError(f"data={spec} holds no array for modality {absent}: the model has {names} "
                         "(an all-NaN array marks a modality missing in every row)")
    masks = {m: arrays[f"{m}__mask"].astype(bool) for m in names if f"{m}__mask" in arrays}
    data = {m: arrays[m] for m in names}
    for m in names:
        x = np.asarray(data[m])
        if m not in masks and np.issubdtype(x.dtype, np.floating):
            masks[m] = ~np.isnan(x)
        if likelihood_head(next(s for s in modalities if s.name == m)).integer_codes:
            data[m] = np.nan_to_num(x, nan=0).astype(np.int64)
    return MultimodalDataset(modalities, data, masks or None)


def _categorical_entries(spec, shape: tuple[int, ...]) -> torch.Tensor:
    """``(*shape)`` bool: the entries of a modality holding category codes."""
    if spec.likelihood == "categorical":
        return torch.ones(shape, dtype=torch.bool)
    if spec.likelihood == "tabular":
        return torch.tensor([int(k) > 0 for k in spec.likelihood_kwargs["cardinalities"]])
    return torch.zeros(shape, dtype=torch.bool)


def score(result: Imputation, truth: MultimodalDataset, hidden: dict[str, torch.Tensor],
          observed: MultimodalDataset) -> dict[str, Any]:
    """Errors on the ``hidden`` entries: the imputation's and those of column means (modes)."""
    table = {}
    for spec in truth.modalities:
        m = spec.name
        if m not in hidden or not bool(hidden[m].any()):
            continue
        x = truth.data[m]
        cat = _categorical_entries(spec, tuple(x.shape[1:])).expand(x.shape)
        seen = observed.obs_mask[m]
        seen = seen.reshape(seen.shape + (1,) * (x.dim() - seen.dim())).expand(x.shape)
        # the baseline: each entry's column mean (mode for codes) over the rows observing it
        w = seen.double()
        col_mean = (x.double() * w).sum(0) / w.sum(0).clamp_min(1)
        xi = torch.where(cat, x.double().round(), 0.0).long()
        counts = torch.stack([((xi == c) & seen).sum(0) for c in range(int(xi.max()) + 1)]) if bool(cat.any()) else None
        baseline = torch.where(cat, counts.argmax(0).double() if counts is not None else col_mean, col_mean)
        baseline = baseline.expand(x.shape)
        row: dict[str, Any] = {}
        cont = hidden[m] & ~cat
        if bool(cont.any()):
            row["continuous"] = {"pyromv": imputation_error(result.data[m].double(), x.double(), cont),
                                 "column_mean": imputation_error(baseline, x.double(), cont)}
        codes = hidden[m] & cat
        if bool(codes.any()):
            row["categorical"] = {
                "entries": int(codes.sum()),
                "pyromv_accuracy": float((result.data[m].double() == x.double())[codes].double().mean()),
                "column_mode_accuracy": float((baseline == x.double())[codes].double().mean()),
            }
        table[m] = row
    return table


def _markdown(table: dict[str, Any], job: ImputeJob) -> str:
    lines = [f"# Imputation of {job.holdout:.0%} held-out entries (K = {job.num_samples})", "",
             "| modality | entries | RMSE | MAE | column-mean RMSE | accuracy | column-mode accuracy |",
             "|---|---|---|---|---|---|---|"]
    for m, row in table.items():
        c, k = row.get("continuous"), row.get("categorical")
        n = (c["pyromv"]["entries"] if c else 0) + (k["entries"] if k else 0)
        lines.append(
            f"| {m} | {n} | {c['pyromv']['rmse']:.4f} | {c['pyromv']['mae']:.4f} | {c['column_mean']['rmse']:.4f} | "
            if c else f"| {m} | {n} | - | - | - | "
        )
        lines[-1] += f"{k['pyromv_accuracy']:.3f} | {k['column_mode_accuracy']:.3f} |" if k else "- | - |"
    return "\n".join(lines) + "\n"


def run(job: ImputeJob, out: str | Path) -> dict[str, Any]:
    """Impute as configured; write the arrays and the error table to ``out``; return the summary."""
    check_job(job)
    out = Path(out)
    run_dir = check_run_dir(job.run_dir)
    model = load_model(run_dir / "model")
    truth = load_data(job.data, run_dir, model.modalities)
    if set(truth.names) != set(model.names):
        raise ValueError(f"data={job.data} has modalities {truth.names}; the model expects {model.names}")
    if job.max_rows and job.max_rows < len(truth):
        truth = truth.subset(torch.arange(job.max_rows))
    data = feature_mcar(truth, job.holdout, seed=job.holdout_seed) if job.holdout > 0 else truth
    result = impute(model, data, job.num_samples, num_imputations=job.num_imputations, sample=job.sample,
                    batch_size=job.batch_size, particle_chunk=job.particle_chunk, seed=job.seed,
                    progress=job.progress)
    out.mkdir(parents=True, exist_ok=True)
    for m in result.missing:
        arrays = {"imputed": result.data[m].numpy(), "std": result.std[m].numpy(),
                  "missing": result.missing[m].numpy()}
        if result.imputations is not None:
            arrays["imputations"] = result.imputations[m].numpy()
        np.savez_compressed(out / f"{m}.npz", **arrays)
    np.savez_compressed(out / "rows.npz", ess=result.ess.numpy(), khat=result.khat.numpy())
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "model": model.name, "data": job.data, "rows": len(data),
        "num_samples": job.num_samples, "holdout": job.holdout,
        "imputed_entries": {m: int(v.sum()) for m, v in result.missing.items()},
        "ess_median": float(result.ess.median()),
    }
    finite = result.khat[torch.isfinite(result.khat)]
    summary["khat_max"] = float(finite.max()) if finite.numel() else None
    if job.holdout > 0:
        hidden = {}
        for m in result.missing:
            before = truth.obs_mask[m]
            before = before.reshape(before.shape + (1,) * (truth.data[m].dim() - before.dim()))
            hidden[m] = before.expand(truth.data[m].shape) & result.missing[m]
        summary["errors"] = score(result, truth, hidden, data)
        (out / "errors.md").write_text(_markdown(summary["errors"], job))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@hydra.main(version_base=None, config_name="impute")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra task of ``pyromv-impute``."""
    with job_errors():
        out = Path(HydraConfig.get().runtime.output_dir)
        job = OmegaConf.to_object(cfg)
        summary = run(job, out)
        print(f"imputed {sum(summary['imputed_entries'].values())} entries of {summary['rows']} rows "
              f"(K = {summary['num_samples']}, median ESS {summary['ess_median']:.1f})")
        if "errors" in summary:
            print((out / "errors.md").read_text())
        print(f"outputs: {out}")


def main() -> None:
    """``pyromv-impute``: a user error ends in one line and exit status 2."""
    run_cli("pyromv-impute", hydra_main)


if __name__ == "__main__":
    main()
