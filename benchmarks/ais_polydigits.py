"""AIS vs IWAE on PolyDigits: a default MVAE trained briefly, ~100 test rows.

    python -m benchmarks.ais_polydigits --quick          # 2 epochs, 32 rows, T=50
    python -m benchmarks.ais_polydigits --epochs 3 --rows 100 --steps 100 500

Prints, per setting: mean log p over rows, share of rows passing the method's diagnostic (IWAE:
k-hat <= 0.7; AIS: halves agree and s.e. <= 0.1) and seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from pyromv.data import PolyDigits
from pyromv.metrics.ais import annealed_log_likelihood
from pyromv.metrics.likelihood import log_likelihood
from pyromv.models import MVAE, MVAEConfig
from pyromv.training import Trainer, TrainerConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 500])
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=5)
    p.add_argument("--K", type=int, default=1000)
    args = p.parse_args()
    if args.quick:
        args.epochs, args.rows, args.steps = 2, 32, [50]
    torch.manual_seed(0)
    source = PolyDigits()
    model = MVAE(source.modalities(), MVAEConfig())
    t = time.time()
    Trainer(model, config=TrainerConfig(epochs=args.epochs)).fit(source.load("train"))
    print(f"trained {args.epochs} epochs in {time.time() - t:.0f}s")
    test = source.load("test").batch().index(slice(0, args.rows))
    t = time.time()
    iw = log_likelihood(model, test, K=args.K, seed=0)
    passed = float((iw.khat <= 0.7).float().mean())
    print(f"IWAE K={args.K}: mean {iw.mean:.2f} passing {passed:.0%} {time.time() - t:.0f}s")
    for T in args.steps:
        t = time.time()
        r = annealed_log_likelihood(model, test, num_steps=T, num_chains=args.chains,
                                    leapfrog_steps=args.leapfrog, seed=0)
        print(f"AIS T={T} C={args.chains} L={args.leapfrog}: mean {r.mean:.2f} passing "
              f"{float(r.passed.float().mean()):.0%} median s.e. {float(r.row_stderr.median()):.3f} "
              f"{time.time() - t:.0f}s")


if __name__ == "__main__":
    main()
