"""Missing not at random in a multimodal model: does modelling the mask (not-MIWAE) help?

The default ``pyromv-train`` job (MVAE on PolyDigits, 30% of the rows missing a modality) with
``--rate`` of the entries of every modality dropped by self-masking
(:func:`pyromv.data.feature_mnar`: the brighter a pixel, the likelier it goes missing) in the
training and test sets, trained once with ``missingness=ignorable`` and once with each missingness
model of ``--missingness`` (default ``self_masking``, each pixel's sign learnt, and
``self_masking_high``, the direction known). Each model then
imputes the test set's missing pixels (:func:`pyromv.metrics.impute`, K importance samples),
scored against the true pixels: RMSE, and the mean error (bias: self-masking hides bright
pixels, so an ignorable model imputes them too dark). Baseline: each pixel's mean over the
training rows observing it. Several seeds (``trainer.seed``; the masks stay the same).

    python benchmarks/mnar_polydigits.py --seeds 0 1 2 --out docs/results/mnar_polydigits.md   # ~5 minutes
    python benchmarks/mnar_polydigits.py --seeds 0 1 2 --override model.objective=iwae model.num_particles=20 \\
        --out docs/results/mnar_polydigits_iwae.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize
from omegaconf import OmegaConf

from pyromv.cli.train import run, with_missingness
from pyromv.models import load_model


def _config(args: argparse.Namespace, missingness: str, seed: int):
    overrides = [f"feature_missing_rate={args.rate}", "feature_missing_pattern=self_masking",
                 f"missingness={missingness}", f"trainer.epochs={args.epochs}", "trainer.progress=false",
                 "evaluate=false", f"trainer.seed={seed}", *args.override]
    with initialize(version_base=None):
        return compose("train", overrides=overrides)


def _splits(cfg):
    """The training and test sets as the training script builds them, and the complete test set."""
    source = OmegaConf.to_object(cfg.data)
    complete = source.load("test")
    return (*with_missingness(cfg, source.load("train"), complete), complete)


def _scores(imputed: dict[str, torch.Tensor], truth: dict[str, torch.Tensor],
            missing: dict[str, torch.Tensor]) -> dict[str, float]:
    err = torch.cat([(imputed[m] - truth[m])[missing[m]].flatten() for m in truth])
    return {"rmse": float(err.pow(2).mean().sqrt()), "bias": float(err.mean()), "entries": int(err.numel())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--rate", type=float, default=0.3)
    p.add_argument("--missingness", nargs="+", default=["self_masking", "self_masking_high"],
                   help="the missingness models compared with the ignorable one")
    p.add_argument("--K", type=int, default=1000, help="importance samples of the imputation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--override", nargs="*", default=[], help="more Hydra overrides, e.g. model.objective=iwae")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for seed in args.seeds:
        for setting in ("ignorable", *args.missingness):
            cfg = _config(args, setting, seed)
            train, test, complete = _splits(cfg)
            truth = complete.data
            missing = {m: ~test.obs_mask[m] for m in test.names}
            with tempfile.TemporaryDirectory() as tmp:
                metrics = run(cfg, "mvae", "polydigits", Path(tmp))
                model = load_model(Path(tmp) / "model")
            imputed = model.impute(test, num_samples=args.K, seed=seed).dataset.data
            rows[(setting, seed)] = {**_scores(imputed, truth, missing), "epochs": metrics["epochs"],
                                     "test_elbo": metrics["test_elbo"]}
            print(setting, seed, rows[(setting, seed)], flush=True)
        if ("mean", 0) not in rows:  # the baseline does not depend on the seed
            seen = {m: train.obs_mask[m] for m in train.names}
            means = {m: (train.data[m] * seen[m]).sum(0) / seen[m].sum(0).clamp_min(1) for m in train.names}
            imputed = {m: means[m].expand_as(truth[m]) for m in truth}
            rows[("mean", 0)] = _scores(imputed, truth, missing)
    settings = ["ignorable", *args.missingness]
    lines = [f"MVAE on PolyDigits, {args.rate:.0%} of every modality's pixels dropped by self-masking (train and "
             f"test), {args.epochs} epochs, overrides {args.override}, imputation K={args.K}; seeds {args.seeds}. "
             "Error on the "
             f"{rows[('mean', 0)]['entries']} missing test pixels.", "",
             "| missingness | seed | epochs | RMSE | mean error |", "|---|---|---|---|---|"]
    for setting in settings:
        for seed in args.seeds:
            r = rows[(setting, seed)]
            lines.append(f"| {setting} | {seed} | {r['epochs']} | {r['rmse']:.4f} | {r['bias']:+.4f} |")
        mean = {k: sum(rows[(setting, s)][k] for s in args.seeds) / len(args.seeds) for k in ("rmse", "bias")}
        lines.append(f"| {setting} | mean | | **{mean['rmse']:.4f}** | {mean['bias']:+.4f} |")
    base = rows[("mean", 0)]
    lines.append(f"| per-pixel mean of the observed training pixels | | | {base['rmse']:.4f} | {base['bias']:+.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
