"""Sampler fitting on latent codes (1,500 codes of 16 dims, a 10-component mixture).

Run: ``pytest benchmarks/test_samplers.py --benchmark-only``
"""

import pytest
import torch

from pyromv.samplers import build_sampler

THREADS = 1  # docs/performance.md: one torch thread
torch.set_num_threads(THREADS)


def _codes() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(10, 16, generator=g)
    return centres[torch.randint(10, (1500,), generator=g)] + 0.5 * torch.randn(1500, 16, generator=g)


@pytest.mark.parametrize("name, kwargs", [
    ("gmm", {"n_components": 10}),
    ("maf", {"max_epochs": 20, "progress": False}),
    ("iaf", {"max_epochs": 20, "progress": False}),
])
def test_sampler_fit(benchmark, name, kwargs):
    codes = _codes()
    benchmark.extra_info.update(sampler=name, codes=tuple(codes.shape))
    benchmark.pedantic(lambda: build_sampler(name, **kwargs).fit_codes(codes), rounds=3, iterations=1)
