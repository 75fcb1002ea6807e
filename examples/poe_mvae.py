"""Product of experts in a plain Pyro script: MVAE on PolyDigits, with pyromv's and Pyro's ELBOs.

MVAE (Wu & Goodman, NeurIPS 2018) fuses the modalities a row observes with a product of
Gaussian experts and the prior, so a row missing modalities is encoded from the rest. Its
model and guide are ordinary Pyro callables: ``pyro.infer.SVI`` trains them with the paper's
sub-sampled objective (``model.default_loss()``), and Pyro's own ``Trace_ELBO`` scores the same
pair (the joint ELBO of what each row observes).

The script drops 30% of the training modalities at random, trains, then generates every
modality from ``m0`` alone and reports how often a classifier recognises the row's digit in
the generated images (cross-modal coherence; chance is 10%).

Run: ``python examples/poe_mvae.py`` (``--epochs 2`` for a quick check).
"""

from __future__ import annotations

import argparse

import pyro
import torch

from pyromv.data import PolyDigits, mcar
from pyromv.metrics import classifier_accuracy, cross_coherence, train_classifiers
from pyromv.models import MVAE, MVAEConfig


def main(epochs: int = 100, seed: int = 0) -> dict[str, float]:
    pyro.set_rng_seed(seed)
    source = PolyDigits()
    train = mcar(source.load("train"), rate=0.3, seed=seed)
    test = source.load("test")
    model = MVAE(source.modalities(), MVAEConfig(latent_dim=16))

    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), loss=model.default_loss())
    for epoch in range(epochs):
        total = sum(svi.step(batch) for batch in train.batches(64, shuffle=True))
        if epoch % 25 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  sub-sampled ELBO loss per row {total / len(train):9.2f}")

    # Pyro's own estimator on the same model/guide: the joint ELBO of each test row
    model.eval()
    with torch.no_grad():
        test_batch = test.batch()
        elbo = -pyro.infer.Trace_ELBO(num_particles=10, vectorize_particles=True,
                                      max_plate_nesting=model.max_plate_nesting).loss(
            model.model, model.guide, test_batch) / len(test)
    print(f"test ELBO (pyro.infer.Trace_ELBO): {elbo:.2f} nats per row")

    classifiers = train_classifiers(source.load("train"))
    accuracy = classifier_accuracy(classifiers, test)
    coherence = cross_coherence(model, test, classifiers, subsets=[["m0"]])
    from_m0 = coherence.by_subset["m0"]
    print(f"classifier accuracy on real test images: {accuracy}")
    print(f"coherence of the modalities generated from m0: {from_m0:.2f} (chance 0.10)")
    return {"test_elbo": elbo, "coherence_from_m0": from_m0}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
