"""A batch of partially observed multimodal data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MultimodalBatch:
    """Data, observation masks and optional labels of ``B`` rows.

    ``data[m]`` has shape ``(B, *shape_m)`` with every missing entry filled (zeros), so that
    no NaN can reach a log-probability or a gradient. ``obs_mask[m]`` is a boolean tensor,
    ``True`` where observed (as in Pyro), either ``(B,)`` (the whole modality is observed
    or not) or ``(B, *shape_m)`` (feature-level missingness).

    Batches are immutable: methods return new batches and never change the caller's.
    Build them through :class:`~pyromv.data.MultimodalDataset` (which validates) or
    :func:`~pyromv.data.make_batch`.
    """

    data: dict[str, Tensor]
    obs_mask: dict[str, Tensor]
    labels: Tensor | None = None

    @property
    def names(self) -> list[str]:
        """Modality names, in order."""
        return list(self.data)

    @property
    def batch_size(self) -> int:
        """Number of rows."""
        return next(iter(self.data.values())).shape[0]

    def __len__(self) -> int:
        return self.batch_size

    def row_mask(self, name: str) -> Tensor:
        """``(B,)`` mask: does the row observe anything of modality ``name``."""
        mask = self.obs_mask[name]
        return mask if mask.dim() == 1 else mask.flatten(1).any(1)

    def feature_mask(self, name: str) -> Tensor | None:
        """Feature-level mask ``(B, *shape)`` or ``None`` when the mask is per row."""
        mask = self.obs_mask[name]
        return None if mask.dim() == 1 else mask

    def observed_counts(self) -> Tensor:
        """Number of observed modalities of each row, ``(B,)``."""
        return sum(self.row_mask(m).long() for m in self.names)

    def restrict(self, names: Iterable[str]) -> MultimodalBatch:
        """The same rows with every modality outside ``names`` marked missing."""
        keep = set(names)
        unknown = keep - set(self.data)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}; the batch has {self.names}")
        mask = {
            m: (v if m in keep else torch.zeros_like(v)) for m, v in self.obs_mask.items()
        }
        return MultimodalBatch(self.data, mask, self.labels)

    def with_row_masks(self, masks: dict[str, Tensor]) -> MultimodalBatch:
        """Intersect each modality's observation mask with a ``(B,)`` row mask."""
        unknown = set(masks) - set(self.obs_mask)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}; the batch has {self.names}")
        out = dict(self.obs_mask)
        for m, rows in masks.items():
            mask = self.obs_mask[m]
            rows = rows.reshape(rows.shape + (1,) * (mask.dim() - 1))
            out[m] = mask & rows
        return MultimodalBatch(self.data, out, self.labels)

    def index(self, idx: Tensor | slice) -> MultimodalBatch:
        """Rows ``idx`` of this batch."""
        labels = None if self.labels is None else self.labels[idx]
        return MultimodalBatch(
            {m: v[idx] for m, v in self.data.items()},
            {m: v[idx] for m, v in self.obs_mask.items()},
            labels,
        )

    def to(self, device: torch.device | str) -> MultimodalBatch:
        """Copy of the batch with every tensor on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        return MultimodalBatch(
            {m: v.to(device) for m, v in self.data.items()},
            {m: v.to(device) for m, v in self.obs_mask.items()},
            labels,
        )
