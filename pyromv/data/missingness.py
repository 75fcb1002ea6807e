"""Seeded simulators that make a complete data set partially observed."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .dataset import MultimodalDataset


def mcar(
    dataset: MultimodalDataset,
    rate: float | Mapping[str, float],
    seed: int = 0,
    keep_at_least_one: bool = True,
) -> MultimodalDataset:
    """Drop whole modalities Missing Completely At Random.

    Each row loses modality ``m`` independently with probability ``rate[m]`` (or ``rate``
    for every modality), on top of what was already missing. With
    ``keep_at_least_one=True``, a row that would lose every observed modality keeps one of
    them, chosen uniformly; the realised rates are then slightly below ``rate``. With
    ``keep_at_least_one=False`` such rows are dropped (with a warning), so the result can
    have fewer rows than the input.

    Returns a new data set; the input is not changed.
    """
    names = dataset.names
    if isinstance(rate, Mapping):
        unknown = set(rate) - set(names)
        if unknown:
            raise ValueError(
                f"unknown modality {sorted(unknown)} in rate: the modalities are {names}"
            )
        rates = {m: float(rate.get(m, 0.0)) for m in names}
    else:
        rates = {m: float(rate) for m in names}
    for m, r in rates.items():
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"missing rate of modality {m!r} must be in [0, 1], got {r}")

    g = torch.Generator().manual_seed(seed)
    n = len(dataset)
    batch = dataset.batch()
    before = torch.stack([batch.row_mask(m) for m in names], 1)  # (N, M)
    u = torch.rand(n, len(names), generator=g)
    drop = u < torch.tensor([rates[m] for m in names])
    after = before & ~drop
    if keep_at_least_one:
        lost_all = ~after.any(1) & before.any(1)
        if lost_all.any():
            # choose one previously observed modality uniformly for each such row
            scores = torch.rand(n, len(names), generator=g).masked_fill(~before, -1.0)
            pick = scores.argmax(1)
            restore = torch.zeros_like(after)
            restore[torch.arange(n), pick] = True
            after = after | (restore & lost_all[:, None])
    new_masks = {}
    for j, m in enumerate(names):
        mask = dataset.obs_mask[m]
        rows = after[:, j].reshape((n,) + (1,) * (mask.dim() - 1))
        new_masks[m] = mask & rows
    return dataset.with_obs_mask(new_masks, drop_empty=not keep_at_least_one)
