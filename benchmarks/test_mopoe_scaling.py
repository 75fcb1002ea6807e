"""MoPoE's training step as the number of modalities grows: the paper's estimator (one subset per
row, KL averaged in closed form) costs O(M) network passes; the stratified one decodes every
modality for each of the 2^M - 1 subsets.

Setting: M modalities of 64 Bernoulli pixels (complete rows, batch 128), MLP encoders and decoders
64-128-128-16, one torch thread (see ``docs/performance.md``).

Run: ``pytest benchmarks/test_mopoe_scaling.py --benchmark-only`` or, for the table of
``docs/performance.md``, ``python -m benchmarks.test_mopoe_scaling``.
"""

from __future__ import annotations

import statistics
import time

import pyro
import pytest
import torch

from pyromv.data import Modality, MultimodalDataset
from pyromv.models import MoPoE, MoPoEConfig

THREADS = 1
BATCH = 128
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [128, 128]}}


def _setup(M: int, objective: str):
    mods = [Modality(f"m{i}", (64,), "bernoulli", encoder=MLP, decoder=MLP) for i in range(M)]
    g = torch.Generator().manual_seed(0)
    data = {m.name: (torch.rand(BATCH, 64, generator=g) < 0.3).float() for m in mods}
    batch = MultimodalDataset(mods, data).batch()
    torch.manual_seed(0)
    model = MoPoE(mods, MoPoEConfig(latent_dim=16, objective=objective))
    return model, model.default_loss(), torch.optim.Adam(model.parameters(), lr=1e-4), batch


def _step(model, loss, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.differentiable_loss(model.model, model.guide, batch).backward()
    optimizer.step()


@pytest.mark.parametrize("objective", ["elbo", "stratified_elbo"])
@pytest.mark.parametrize("M", [3, 5, 8])
def test_mopoe_step(benchmark, M, objective):
    torch.set_num_threads(THREADS)
    model, loss, optimizer, batch = _setup(M, objective)
    benchmark.extra_info.update(M=M, objective=objective, subsets=len(model.subsets))
    with pyro.validation_enabled(False):
        benchmark(_step, model, loss, optimizer, batch)


def table(repeats: int = 21) -> str:
    """Median ms per step for each ``M`` and objective, and the ms per modality."""
    torch.set_num_threads(THREADS)
    lines = ["| M | subsets | elbo (paper) ms/step | ms per modality | stratified_elbo ms/step | ratio |",
             "|---|---|---|---|---|---|"]
    with pyro.validation_enabled(False):
        for M in (3, 5, 8):
            ms = {}
            for objective in ("elbo", "stratified_elbo"):
                setup = _setup(M, objective)
                for _ in range(3):
                    _step(*setup)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    _step(*setup)
                    times.append(time.perf_counter() - start)
                ms[objective] = 1e3 * statistics.median(times)
            lines.append(f"| {M} | {2**M - 1} | {ms['elbo']:.1f} | {ms['elbo'] / M:.2f} | "
                         f"{ms['stratified_elbo']:.1f} | {ms['stratified_elbo'] / ms['elbo']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
