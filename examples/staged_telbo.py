"""A model trained in stages, in a plain Pyro script: TELBO with ``frozen_except``.

TELBO (Vedantam, Fischer, Huang & Murphy, ICLR 2018) first fits a joint VAE with a joint
encoder on complete rows, then freezes it and fits one unimodal encoder per modality (a
partially observed row is encoded by the product of its observed unimodal experts).
``model.stages()`` lists the stages, each with its own model, guide, objective and trainable
parameters; ``frozen_except(model, stage)`` freezes everything the stage does not train.

The script runs both stages with ``pyro.infer.SVI``, checks that stage 2 left the decoders
untouched, and reports the test ELBO of rows that observe only ``m0`` (what the unimodal
experts of stage 2 are for).

Run: ``python examples/staged_telbo.py`` (``--epochs 2`` for a quick check).
"""

from __future__ import annotations

import argparse

import pyro
import torch

from pyromv.data import PolyDigits, mcar
from pyromv.models import TELBO, TELBOConfig
from pyromv.training import frozen_except


def main(epochs: int = 40, seed: int = 0) -> dict[str, float]:
    pyro.set_rng_seed(seed)
    source = PolyDigits()
    train = mcar(source.load("train"), rate=0.3, seed=seed)
    test = source.load("test")
    model = TELBO(source.modalities(), TELBOConfig(latent_dim=16))

    decoders_after_stage_1 = None
    for number, stage in enumerate(model.stages(), start=1):
        with frozen_except(model, stage):
            svi = pyro.infer.SVI(stage.model, stage.guide, pyro.optim.Adam({"lr": 1e-3}), loss=stage.loss)
            for _ in range(epochs):
                total = sum(svi.step(batch) for batch in train.batches(64, shuffle=True))
            print(f"stage {number} ({stage.name}): final loss per row {total / len(train):9.2f}")
        if number == 1:
            decoders_after_stage_1 = {n: p.detach().clone() for n, p in model.named_parameters()
                                      if n.startswith("decoders")}
    unchanged = all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in decoders_after_stage_1.items())
    print(f"decoders unchanged by stage 2: {unchanged}")

    model.eval()
    with torch.no_grad():
        only_m0 = test.batch().restrict(["m0"])
        loss = model.evaluation_loss().loss(model.evaluation_model(), model.evaluation_guide(), only_m0)
    elbo = -loss / len(test)
    print(f"test ELBO of m0 alone (unimodal expert of stage 2): {elbo:.2f} nats per row")
    return {"elbo_m0": elbo, "decoders_unchanged": float(unchanged)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
