"""Imputation benchmark: pyromv's MIWAE-style imputation against scikit-learn's imputers.

Same rows, same masks, several seeds, one run. Methods:

* ``pyromv``: :class:`~pyromv.models.MVAE` on one tabular modality (``normal`` likelihood with a
  learned std per column, MLP encoder/decoder), trained with the MIWAE bound (``objective="iwae"``,
  K = 20, i.e. IWAE over the observed entries) on the masked data itself, then
  :func:`pyromv.metrics.impute` (SNIS single imputation, K = 1000). The encoder is whatever the
  MLP registry builds for data with feature masks (mask-aware when that lands).
* ``pyromv_mnar`` (on request): the same model with a self-masking missingness model of every
  column (``Modality(missingness="self_masking")``, its sign learnt: not-MIWAE, Ipsen et al. 2021),
  trained with the not-MIWAE bound and imputing by its importance weights.
* ``mean``: ``SimpleImputer(strategy="mean")``; ``knn``: ``KNNImputer()`` (5 neighbours);
  ``mice``: ``IterativeImputer(BayesianRidge)``; ``missforest``: ``IterativeImputer`` with a
  ``RandomForestRegressor`` (missForest-like).

Data: scikit-learn's breast cancer (569 x 30), wine (178 x 13) and diabetes (442 x 10) tables,
each column standardised over all rows; masks: 20% and 50% MCAR entries, and MNAR
self-masking (an entry above its column's 75th percentile goes missing with probability 0.8,
about 20% of the entries); every row keeps at least one entry. PolyFashion: 5 modalities,
50% of the pixels of ``m0`` missing (MCAR), the others complete; pyromv trains a 5-modality
MVAE (MIWAE bound) and imputes ``m0``'s pixels from the rest of ``m0`` and the other four
images; scikit-learn sees the same rows as one flattened 3920-column table (the imputers'
``n_nearest_features=100`` for MICE, skipped with ``--quick``, where one fit took over
4 minutes; missForest is skipped there: 784 random forests per sweep are out of a CPU
budget). Score: RMSE on the masked entries only (standardised units for the tables, pixel
values in [0, 1] for PolyFashion), mean ± s.d. over seeds, and seconds per fit (pyromv: training + imputation).

Run::

    python -m benchmarks.imputation --out docs/results/imputation.md           # full (the lead)
    python -m benchmarks.imputation --quick --out /tmp/imputation_quick.md     # minutes
    python -m benchmarks.imputation --no-polyfashion --patterns mnar mcar50 \\
        --methods pyromv pyromv_mnar mice --out docs/results/imputation_mnar.md   # not-MIWAE
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

TABLES = ("breast_cancer", "wine", "diabetes")
PATTERNS = ("mcar20", "mcar50", "mnar")
METHODS = ("pyromv", "mean", "knn", "mice", "missforest")
#: more methods, on request (``--methods ... pyromv_mnar``)
EXTRA_METHODS = ("pyromv_mnar",)


# ---------------------------------------------------------------------------- data and masks
def load_table(name: str) -> np.ndarray:
    from sklearn import datasets

    x = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
         "diabetes": datasets.load_diabetes}[name]().data.astype(np.float64)
    return (x - x.mean(0)) / x.std(0)


def make_mask(x: np.ndarray, pattern: str, seed: int) -> np.ndarray:
    """Observed entries (True) of ``x`` under ``pattern``; every row keeps one entry."""
    rng = np.random.default_rng(seed)
    if pattern.startswith("mcar"):
        miss = rng.random(x.shape) < int(pattern[4:]) / 100
    elif pattern == "mnar":  # self-masking: large values go missing
        miss = (x > np.quantile(x, 0.75, axis=0)) & (rng.random(x.shape) < 0.8)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    observed = ~miss
    empty = ~observed.any(1)
    observed[empty, rng.integers(0, x.shape[1], int(empty.sum()))] = True
    return observed


# ---------------------------------------------------------------------------- methods
def sklearn_imputer(name: str, quick: bool, n_features: int, seed: int):
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

    nearest = 100 if n_features > 100 else None
    if name == "mean":
        return SimpleImputer(strategy="mean")
    if name == "knn":
        return KNNImputer()
    if name == "mice":
        return IterativeImputer(max_iter=5 if quick else 10, random_state=seed, n_nearest_features=nearest)
    if name == "missforest":
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(n_estimators=20 if quick else 100, random_state=seed, n_jobs=1)
        return IterativeImputer(estimator=forest, max_iter=3 if quick else 10, random_state=seed)
    raise ValueError(name)


def run_sklearn(name: str, x: np.ndarray, observed: np.ndarray, quick: bool, seed: int) -> np.ndarray:
    xm = np.where(observed, x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IterativeImputer's early-stopping ConvergenceWarning
        out = sklearn_imputer(name, quick, x.shape[1], seed).fit_transform(xm)
    return out


def pyromv_settings(quick: bool, n: int, p: int) -> dict:
    steps = 400 if quick else 4000
    batch = 64
    epochs = max(1, math.ceil(steps / math.ceil(n / batch)))
    return {"latent_dim": max(2, min(10, p - 1)), "hidden": 64 if quick else 128, "epochs": epochs,
            "batch_size": batch, "lr": 1e-3, "K_train": 20, "K_impute": 200 if quick else 1000}


def run_pyromv(x: np.ndarray, observed: np.ndarray, quick: bool, seed: int,
               missingness: str = "ignorable") -> np.ndarray:
    from pyromv.data import Modality, MultimodalDataset
    from pyromv.models import MVAE, MVAEConfig
    from pyromv.training import Trainer, TrainerConfig

    n, p = x.shape
    s = pyromv_settings(quick, n, p)
    net = {"name": "mlp", "kwargs": {"hidden_dims": [s["hidden"], s["hidden"]]}}
    mod = Modality("x", (p,), "normal", {"scale": 1.0, "learn_scale": True, "scale_per_feature": True},
                   encoder=net, decoder=net, missingness=missingness)
    ds = MultimodalDataset([mod], {"x": torch.tensor(np.where(observed, x, 0.0), dtype=torch.float32)},
                           {"x": torch.tensor(observed)})
    torch.manual_seed(seed)
    # ds.modalities: the data set switched the encoder to mask-aware (the data have missing entries)
    model = MVAE(ds.modalities, MVAEConfig(latent_dim=s["latent_dim"], objective="iwae", num_particles=s["K_train"]))
    # gradient clipping for the learned per-column scales; no divergence stop: on tables of a few
    # hundred rows an epoch's loss is a handful of batches, and its spikes are noise, not divergence
    cfg = TrainerConfig(epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], val_fraction=0.0,
                        progress=False, seed=seed, grad_clip=10.0, divergence_threshold=0.0)
    Trainer(model, config=cfg).fit(ds)
    out = model.impute(ds, num_samples=s["K_impute"], seed=seed, batch_size=128)
    return out.data["x"].double().numpy()


def rmse(imputed: np.ndarray, x: np.ndarray, observed: np.ndarray) -> float:
    miss = ~observed
    return float(np.sqrt(((imputed - x)[miss] ** 2).mean()))


# ---------------------------------------------------------------------------- PolyFashion
def run_polyfashion(quick: bool, seeds: list[int], methods: list[str]) -> dict[str, list[tuple[float, float]]]:
    from pyromv.data import PolyFashion
    from pyromv.models import MVAE, MVAEConfig
    from pyromv.training import Trainer, TrainerConfig

    rows = 200 if quick else 1000
    source = PolyFashion(train_images=rows, test_images=10, hidden_dim=128 if quick else 256)
    full = source.load("train")
    names = full.names
    x0 = full.data["m0"].double().numpy().reshape(len(full), -1)
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        observed0 = rng.random(x0.shape) >= 0.5
        mask = {m: torch.ones(len(full), dtype=torch.bool) for m in names}
        mask["m0"] = torch.tensor(observed0.reshape(full.data["m0"].shape))
        ds = full.with_obs_mask(mask)
        for method in methods:
            start = time.perf_counter()
            if method == "pyromv":
                torch.manual_seed(seed)
                model = MVAE(ds.modalities, MVAEConfig(latent_dim=20, objective="iwae", num_particles=5))
                epochs = 5 if quick else 50
                Trainer(model, config=TrainerConfig(epochs=epochs, val_fraction=0.0, progress=False,
                                                    seed=seed)).fit(ds)
                imp = model.impute(ds, num_samples=50 if quick else 500, seed=seed, targets=["m0"])
                out0 = imp.data["m0"].double().numpy().reshape(len(full), -1)
            elif method == "missforest" or (method == "mice" and quick) or method == "pyromv_mnar":
                continue  # too slow on 3920 columns (MICE: > 4 minutes per fit even in quick mode); MCAR here
            else:
                flat = np.concatenate([full.data[m].double().numpy().reshape(len(full), -1) for m in names], 1)
                obs = np.concatenate([observed0] + [np.ones_like(observed0)] * (len(names) - 1), 1)
                out0 = run_sklearn(method, flat, obs, quick, seed)[:, : x0.shape[1]]
            results[method].append((rmse(out0, x0, observed0), time.perf_counter() - start))
            print(f"polyfashion seed {seed} {method}: {results[method][-1][0]:.4f} "
                  f"({results[method][-1][1]:.1f} s)", flush=True)
    return results


# ---------------------------------------------------------------------------- the table
def _cell(values: list[tuple[float, float]]) -> tuple[str, float]:
    errs = np.array([v[0] for v in values])
    secs = np.mean([v[1] for v in values])
    sd = errs.std(ddof=1) if len(errs) > 1 else 0.0
    return f"{errs.mean():.3f} ± {sd:.3f} ({secs:.1f} s)", float(errs.mean())


def table(results: dict, methods: list[str], seeds: list[int], quick: bool) -> str:
    lines = [f"# Imputation RMSE on the masked entries ({'quick' if quick else 'full'} settings, "
             f"seeds {seeds})", "",
             "Mean ± s.d. over seeds (mean seconds per fit). Tables standardised per column; "
             "PolyFashion in pixel units. Lowest mean in bold.", "",
             "| data | pattern | " + " | ".join(methods) + " | best |",
             "|---" * (len(methods) + 3) + "|"]
    for (data, pattern), per_method in results.items():
        cells = {m: _cell(per_method[m]) for m in methods if per_method.get(m)}
        best = min(cells, key=lambda m: cells[m][1])
        row = [f"**{cells[m][0]}**" if m == best else cells[m][0] if m in cells else "-" for m in methods]
        lines.append(f"| {data} | {pattern} | " + " | ".join(row) + f" | {best} |")
    lines.append("")
    mcar50 = [(d, pm) for (d, p), pm in results.items() if p == "mcar50" and d in TABLES]
    if mcar50 and all(pm.get("pyromv") and pm.get("mice") for _, pm in mcar50):
        wins = [d for d, pm in mcar50 if _cell(pm["pyromv"])[1] < _cell(pm["mice"])[1]]
        lines.append(f"pyromv beats IterativeImputer (MICE) at 50% MCAR on {len(wins)} of {len(mcar50)} "
                     f"tables ({', '.join(wins) or 'none'}).")
    mnar = [(d, pm) for (d, p), pm in results.items() if p == "mnar"]
    if mnar and all(pm.get("pyromv") and pm.get("pyromv_mnar") for _, pm in mnar):
        wins = [d for d, pm in mnar if _cell(pm["pyromv_mnar"])[1] < _cell(pm["pyromv"])[1]]
        lines.append(f"Under MNAR self-masking, the missingness model (pyromv_mnar) beats the ignorable pyromv "
                     f"on {len(wins)} of {len(mnar)} tables ({', '.join(wins) or 'none'}).")
    settings = {t: pyromv_settings(quick, len(load_table(t)), load_table(t).shape[1]) for t in TABLES}
    lines.append("")
    lines.append(f"pyromv settings per table: {settings}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small settings: minutes on one core")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 2)")
    parser.add_argument("--tables", nargs="*", default=list(TABLES))
    parser.add_argument("--patterns", nargs="*", default=list(PATTERNS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--polyfashion", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    results: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    runners: dict[str, Callable] = {
        "pyromv": lambda x, o, s: run_pyromv(x, o, args.quick, s),
        "pyromv_mnar": lambda x, o, s: run_pyromv(x, o, args.quick, s, missingness="self_masking"),
    }
    unknown = set(args.methods) - set(METHODS) - set(EXTRA_METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS + EXTRA_METHODS)}")
    for data in args.tables:
        x = load_table(data)
        for pattern in args.patterns:
            per = results.setdefault((data, pattern), {m: [] for m in args.methods})
            for seed in seeds:
                observed = make_mask(x, pattern, seed)
                for method in args.methods:
                    start = time.perf_counter()
                    fn = runners.get(method) or (lambda x, o, s, m=method: run_sklearn(m, x, o, args.quick, s))
                    out = fn(x, observed, seed)
                    per[method].append((rmse(out, x, observed), time.perf_counter() - start))
                    print(f"{data} {pattern} seed {seed} {method}: {per[method][-1][0]:.4f} "
                          f"({per[method][-1][1]:.1f} s)", flush=True)
    if args.polyfashion:
        results[("polyfashion", "m0 pixels 50% MCAR")] = run_polyfashion(args.quick, seeds, args.methods)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(results, args.methods, seeds, args.quick))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
