"""Mixture of products with private latents, looked at through ``poutine.trace``.

MoPoE (Sutter, Daunhawer & Vogt, ICLR 2021) fuses every subset of the observed modalities by a
product of experts and mixes the subsets; with ``private_latent_dim > 0`` each modality also
has a private latent ``w_m`` (the paper's modality-specific space). The Pyro program has one
site per latent and per modality, all inside the batch plate, and a missing modality's
observation site is masked out: ``poutine.trace`` shows it.

The script prints the sites of one partially observed batch, trains with the default
per-subset ELBO in ``pyro.infer.SVI``, then generates ``m1`` and ``m2`` from ``m0`` alone (shared
latent from ``m0``, the targets' private latents from their prior) and reports how often a
classifier recognises the row's digit in them (cross-modal coherence; chance is 10%), next to
how often it does in images reconstructed from their own data.

Run: ``python examples/mopoe_private.py`` (``--epochs 2`` for a quick check).
"""

from __future__ import annotations

import argparse

import pyro
import torch
from pyro import poutine

from pyromv.data import PolyDigits, mcar
from pyromv.metrics import cross_coherence, predict, train_classifiers
from pyromv.models import MoPoE, MoPoEConfig


def describe_sites(model: MoPoE, batch) -> None:
    """Print each sample site of the guide and the model with its shape and how many rows it scores."""
    guide = poutine.trace(model.guide).get_trace(batch)
    trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)
    for title, tr in (("guide", guide), ("model", trace)):
        print(f" {title}:")
        _print_sites(poutine.util.prune_subsample_sites(tr), batch.batch_size)


def _print_sites(trace, batch_size: int) -> None:
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        kind = "observed" if site["is_observed"] else "latent"
        mask = site["mask"]
        rows = batch_size if mask is None else int(torch.as_tensor(mask).reshape(batch_size, -1).any(-1).sum())
        print(f"  {name:6s} {kind:8s} value {tuple(site['value'].shape)}  scored on {rows}/{batch_size} rows")


def main(epochs: int = 60, seed: int = 0) -> dict[str, float]:
    pyro.set_rng_seed(seed)
    source = PolyDigits()
    train = mcar(source.load("train"), rate=0.3, seed=seed)
    test = source.load("test")
    model = MoPoE(source.modalities(), MoPoEConfig(latent_dim=16, private_latent_dim=4))
    print("sample sites of a partially observed batch:")
    describe_sites(model, train.batch(torch.arange(8)))

    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), loss=model.default_loss())
    for epoch in range(epochs):
        total = sum(svi.step(batch) for batch in train.batches(64, shuffle=True))
        if epoch % 20 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  loss per row {total / len(train):9.2f}")

    classifiers = train_classifiers(source.load("train"))
    coherence = cross_coherence(model, test, classifiers, subsets=[["m0"]]).by_subset["m0"]
    model.eval()
    with torch.no_grad():
        batch = test.batch()
        own = model.reconstruct(batch)
    labels = test.labels
    self_accuracy = float(sum((predict(classifiers[m], own[m]) == labels).float().mean() for m in ("m1", "m2")) / 2)
    print(f"coherence of m1, m2 generated from m0: {coherence:.2f} (chance 0.10); "
          f"recognised in their own reconstructions: {self_accuracy:.2f}")
    return {"coherence_from_m0": coherence, "self_accuracy": self_accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
