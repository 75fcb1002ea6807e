"""Issue 15's criterion: with feature-level missingness, does the ELBO's gap to log p shrink when
the encoders see the feature mask? Measured twice, with the gap split into its two parts
(Cremer et al. 2018, :func:`pyromv.metrics.inference_gaps`): the *amortisation* gap (the
encoder's: ELBO of a per-row fitted Gaussian minus the amortised ELBO) and the *approximation*
gap (the diagonal Gaussian family's: log p minus the per-row fit's ELBO).

1. **Trained end to end** (the issue's wording): the default ``pyromv-train`` job (MVAE on
   PolyDigits, 30% of modalities missing in the training set) with ``feature_missing_rate`` of
   every entry missing in the training and test sets, once with ``mask_aware=off`` (zero-filled
   encoders, the old behaviour) and once with ``mask_aware=on``. The two runs learn different
   decoders, so their gaps are gaps of two different generative models.
2. **One decoder, three encoders** (``--fixed-decoder``): the mask-aware run's decoders frozen,
   and three fresh encoders trained on them with the same budget (``--encoder-objective``: the
   model's objective, or e.g. ``elbo``): a zero-filled and a mask-aware encoder on the data with
   missing entries, and, as the floor, an encoder trained and scored on the same rows with
   every entry observed. Their amortisation gaps differ by the encoders alone; the floor is the
   part no treatment of missing entries can remove (the encoder family's and objective's own).

On the first ``--test-rows`` test rows it prints, per model, the amortised ELBO, the per-row fit's
ELBO, IWAE_K, the gaps, and the ratios of the gaps (mask-aware / zero-filled).

    python benchmarks/mask_aware_polydigits.py --quick        # under a minute
    python benchmarks/mask_aware_polydigits.py --epochs 100 --test-rows 500 --K 1000 --fixed-decoder \\
        --seeds 0 1 2 3 4 --jobs 2 --out docs/results/mask_aware_gaps.md   # ~7 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize
from omegaconf import OmegaConf

from pyromv.cli.train import run, with_missingness
from pyromv.metrics import inference_gaps
from pyromv.models import load_model
from pyromv.models.registry import get_model_class
from pyromv.training import Trainer, TrainerConfig

GAPS = ("gap", "amortisation_gap", "approximation_gap")


def _config(mask_aware: str, args: argparse.Namespace):
    overrides = [f"mask_aware={mask_aware}", f"feature_missing_rate={args.rate}", f"trainer.epochs={args.epochs}",
                 "trainer.progress=false", "evaluate=false", f"model={args.model}", f"trainer.seed={args.seed}",
                 *args.override]
    with initialize(version_base=None):
        return compose("train", overrides=overrides)


def _data(cfg, split: str, entries_missing: bool = True):
    """The run's split as the training script builds it, with or without its missing entries."""
    source = OmegaConf.to_object(cfg.data)
    train, test = with_missingness(cfg, source.load("train"), source.load("test"), entries=entries_missing)
    return train if split == "train" else test


def _gaps(label: str, model, test, args: argparse.Namespace, extra: dict) -> dict:
    result = inference_gaps(model, test, K=args.K, local_steps=args.local_steps, seed=0,
                            likelihood_options={"khat": False})
    row = {"model": label, **extra, **{k: round(v, 3) if isinstance(v, float) else v
                                       for k, v in result.summary().items()}}
    print(json.dumps(row), flush=True)
    return row


def train_end_to_end(mask_aware: str, args: argparse.Namespace, out: Path, test) -> tuple[dict, Path]:
    cfg = _config(mask_aware, args)
    metrics = run(cfg, args.model, "polydigits", out)
    model = load_model(out / "model")
    return _gaps(f"end-to-end, mask_aware={mask_aware}", model, test, args,
                 {"epochs": metrics["epochs"], "train_seconds": round(metrics["seconds"], 1)}), out / "model"


def train_encoder_on(decoder_run: Path, mask_aware: str, args: argparse.Namespace, train, test,
                     label: str) -> dict:
    """A fresh encoder (``mask_aware``) trained on the frozen decoders of ``decoder_run``."""
    source = load_model(decoder_run)
    specs = [dataclasses.replace(m, mask_aware=mask_aware) for m in source.modalities]
    config = source.config
    if args.encoder_objective:
        config = dataclasses.replace(config, objective=args.encoder_objective)
    torch.manual_seed(args.seed + 1)
    model = get_model_class(source.name)(specs, config)
    model.decoders.load_state_dict(source.decoders.state_dict())
    for p in model.decoders.parameters():
        p.requires_grad_(False)
    cfg = _config(mask_aware, args)
    trainer_config = TrainerConfig(**{**OmegaConf.to_container(cfg.trainer), "epochs": args.encoder_epochs})
    optimizer = torch.optim.Adam(model.encoders.parameters(), lr=trainer_config.lr)
    history = Trainer(model, config=trainer_config, optimizer=optimizer).fit(train, resume=False)
    return _gaps(f"fixed decoder, {label}", model, test, args, {"epochs": len(history)})


SETTINGS = {  # label -> what it is
    "zero-filled": "end to end, mask_aware=off",
    "mask-aware": "end to end, mask_aware=on",
    "floor": "one decoder, every entry observed",
    "one decoder, zero-filled": "one decoder, mask_aware=off",
    "one decoder, mask-aware": "one decoder, mask_aware=on",
}


def measure(seed: int, args: argparse.Namespace) -> dict[str, dict]:
    """Every setting of one seed (``trainer.seed``; the data's masks do not change with it)."""
    torch.set_num_threads(1)
    args = argparse.Namespace(**{**vars(args), "seed": seed})
    cfg = _config("on", args)
    test = _data(cfg, "test")
    test = test.subset(torch.arange(min(args.test_rows, len(test))))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["zero-filled"], _ = train_end_to_end("off", args, Path(tmp) / "off", test)
        out["mask-aware"], aware_run = train_end_to_end("on", args, Path(tmp) / "on", test)
        if args.fixed_decoder:
            train = _data(cfg, "train")
            complete = (_data(cfg, "train", entries_missing=False),
                        _data(cfg, "test", entries_missing=False).subset(torch.arange(len(test))))
            out["floor"] = train_encoder_on(aware_run, "off", args, *complete, "every entry observed (floor)")
            out["one decoder, zero-filled"] = train_encoder_on(aware_run, "off", args, train, test, "zero-filled")
            out["one decoder, mask-aware"] = train_encoder_on(aware_run, "on", args, train, test, "mask-aware")
    return out


def table(results: dict[int, dict[str, dict]], args: argparse.Namespace) -> str:
    """Markdown: one line per setting and seed, the means over seeds, and the ratios."""
    seeds = sorted(results)
    mean = lambda label, key: sum(results[s][label][key] for s in seeds) / len(seeds)  # noqa: E731
    lines = [f"MVAE on PolyDigits, {args.rate:.0%} of entries missing (train and test), {args.epochs} epochs, "
             f"{results[seeds[0]]['zero-filled']['rows']} test rows, IWAE_{args.K}, per-row fits of "
             f"{args.local_steps} steps; seeds {seeds}. Nats per row.", "",
             "| setting | seed | epochs | ELBO | per-row fit | IWAE | gap | amortisation | approximation |",
             "|---|---|---|---|---|---|---|---|---|"]
    labels = [k for k in SETTINGS if k in results[seeds[0]]]
    for label in labels:
        for s in [*seeds, "mean"]:
            if s == "mean":
                r = {k: mean(label, k) for k in ("elbo", "local_elbo", "log_p", *GAPS)}
                r["epochs"] = ""
            else:
                r = results[s][label]
            lines.append(f"| {SETTINGS[label]} | {s} | {r['epochs']} | {r['elbo']:.2f} | {r['local_elbo']:.2f} | "
                         f"{r['log_p']:.2f} | {r['gap']:.2f} | {r['amortisation_gap']:.2f} | "
                         f"{r['approximation_gap']:.2f} |")
    lines.append("")
    # IWAE is a lower bound of log p; where the per-row fit's ELBO is higher, it is the better one
    best_gap = lambda label: sum(max(results[s][label]["log_p"], results[s][label]["local_elbo"])  # noqa: E731
                                 - results[s][label]["elbo"] for s in seeds) / len(seeds)
    for zero, aware in (("zero-filled", "mask-aware"), ("one decoder, zero-filled", "one decoder, mask-aware")):
        if zero not in labels:
            continue
        ratios = ", ".join(f"{g.replace('_', ' ')} {mean(aware, g) / mean(zero, g):.3f}" for g in GAPS[:2])
        lines.append(f"- {SETTINGS[aware].split(',')[0]}: mask-aware / zero-filled (means): {ratios}; the gap to "
                     f"the better lower bound of log p (IWAE or the per-row fit) {best_gap(zero):.2f} -> "
                     f"{best_gap(aware):.2f} (ratio {best_gap(aware) / best_gap(zero):.3f})")
    if "floor" in labels:
        floor = mean("floor", "amortisation_gap")
        over = {k: mean(f"one decoder, {k}", "amortisation_gap") - floor for k in ("zero-filled", "mask-aware")}
        lines.append(f"- one decoder: amortisation gap above the complete-entries floor ({floor:.2f}): zero-filled "
                     f"{over['zero-filled']:.2f}, mask-aware {over['mask-aware']:.2f} (ratio "
                     f"{over['mask-aware'] / over['zero-filled']:.2f})")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 epochs, 100 test rows, K=200, 50 fit steps")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--encoder-epochs", type=int, default=None, help="epochs of the fixed-decoder encoders "
                   "(default: --epochs)")
    p.add_argument("--fixed-decoder", action="store_true", help="also train three encoders on one decoder")
    p.add_argument("--encoder-objective", default=None, help="the fixed-decoder encoders' objective (the model "
                   "config's `objective`, e.g. elbo; default: the model's)")
    p.add_argument("--test-rows", type=int, default=500)
    p.add_argument("--K", type=int, default=1000)
    p.add_argument("--local-steps", type=int, default=300, help="Adam steps of each row's Gaussian fit")
    p.add_argument("--rate", type=float, default=0.3)
    p.add_argument("--model", default="mvae")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--jobs", type=int, default=1, help="seeds measured at once (one thread each)")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    p.add_argument("--override", nargs="*", default=[], help="more Hydra overrides, e.g. data.encoder=conv")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.test_rows, args.K, args.local_steps = 5, 100, 200, 50
    args.encoder_epochs = args.encoder_epochs or args.epochs
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            results = dict(zip(args.seeds, pool.map(measure, args.seeds, [args] * len(args.seeds))))
    else:
        results = {seed: measure(seed, args) for seed in args.seeds}
    text = table(results, args)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
