"""A conditional model: CVAE predicting one modality from the others, with uncertainty.

The conditional VAE (Sohn, Lee & Yan, NeurIPS 2015) models only ``p(y | c) = ∫ p(y | z, c)
p(z | c) dz``: a learned prior network ``p(z | c)``, a recognition network ``q(z | y, c)`` and
a decoder of ``y`` given ``(z, c)``. In pyromv the conditioning modalities may be missing
(their experts are left out of the prior's product) and the model generates only ``y``.

The script predicts ``m0`` from ``m1`` and ``m2``, draws 20 samples per row from ``p(y | c)``
(their spread is the model's uncertainty), and compares the prediction error with the
spread.

Run: ``python examples/conditional_cvae.py`` (``--epochs 2`` for a quick check).
"""

from __future__ import annotations

import argparse

import pyro
import torch

from pyromv.data import PolyDigits, mcar
from pyromv.models import CVAE, CVAEConfig


def main(epochs: int = 60, seed: int = 0) -> dict[str, float]:
    pyro.set_rng_seed(seed)
    source = PolyDigits()
    train = mcar(source.load("train"), rate=0.3, seed=seed)
    test = source.load("test")
    model = CVAE(source.modalities(), CVAEConfig(latent_dim=16, main_modality="m0"))
    print(f"the model generates {model.generated_modalities} given the others")

    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), loss=model.default_loss())
    for epoch in range(epochs):
        total = sum(svi.step(batch) for batch in train.batches(64, shuffle=True))
        if epoch % 20 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  conditional ELBO loss per row {total / len(train):9.2f}")

    model.eval()
    with torch.no_grad():
        context = test.batch().restrict(["m1", "m2"])
        draws = torch.stack([model.cross_generate(context, targets=["m0"], sample=True)["m0"] for _ in range(20)])
        mean = model.cross_generate(context, targets=["m0"])["m0"]
    truth = test.data["m0"]
    error = float((mean - truth).abs().mean())
    spread = float(draws.std(0).mean())
    baseline = float((train.data["m0"][train.batch().row_mask("m0")].mean(0) - truth).abs().mean())
    print(f"m0 from (m1, m2): mean absolute error {error:.3f} (the training mean image: {baseline:.3f}); "
          f"spread of 20 draws {spread:.3f}")
    return {"error": error, "spread": spread, "baseline_error": baseline}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
