"""The small three-modality data set the model tests share: an 8x8 image (continuous
Bernoulli, conv networks), a 5-vector (Normal, scale 0.7) and 3 categorical codes (4 categories),
random values from a seeded generator, modalities missing completely at random on request."""

from __future__ import annotations

import torch

from pyromv.data import Modality, MultimodalBatch, MultimodalDataset, mcar

MODS = [
    Modality("img", (1, 8, 8), likelihood="continuous_bernoulli", encoder="conv", decoder="conv"),
    Modality("vec", (5,), likelihood="normal", likelihood_kwargs={"scale": 0.7}),
    Modality("tag", (3,), likelihood="categorical", likelihood_kwargs={"num_categories": 4}),
]
NAMES = [m.name for m in MODS]


def data(n: int = 24, seed: int = 3) -> dict[str, torch.Tensor]:
    """``n`` rows of every modality."""
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.rand(n, 1, 8, 8, generator=g), "vec": torch.randn(n, 5, generator=g),
            "tag": torch.randint(0, 4, (n, 3), generator=g)}


def dataset(missing: float = 0.0, n: int = 24, mods=MODS) -> MultimodalDataset:
    """The rows of :func:`data` for the modalities ``mods``, a fraction ``missing`` of their
    modalities dropped (MCAR, seed 1)."""
    names = [m.name for m in mods]
    full = MultimodalDataset(mods, {k: v for k, v in data(n).items() if k in names})
    return mcar(full, missing, seed=1) if missing else full


def batch(missing: float = 0.0, n: int = 24, mods=MODS) -> MultimodalBatch:
    """:func:`dataset` as one batch."""
    return dataset(missing, n, mods).batch()
