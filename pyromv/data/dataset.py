"""In-memory multimodal data sets and their batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .batch import MultimodalBatch
from .modality import Modality
from .validation import validate_data


class MultimodalDataset(torch.utils.data.Dataset):
    """Rows of several modalities, each possibly missing, held as tensors in memory.

    Parameters
    ----------
    modalities : sequence of Modality
        The specs, in the order the models see them.
    data : dict of str to array
        ``data[m]`` of shape ``(N, *modality.shape)``. Entries that ``obs_mask`` marks missing
        may hold anything, NaN included; they are replaced by zeros.
    obs_mask : dict of str to bool array, optional
        ``(N,)`` or ``(N, *shape)``; ``True`` where observed. Default: all observed.
    labels : array, optional
        ``(N,)`` class labels (used by coherence metrics and plots, never by training).
    drop_empty : bool
        Drop rows that observe no modality (with a warning) instead of raising.

    Batches come from :meth:`batches` (tensor indexing, no per-row Python work); the
    ``__getitem__``/:func:`collate` pair serves ``torch.utils.data.DataLoader`` users.
    """

    def __init__(
        self,
        modalities: Sequence[Modality],
        data: Mapping[str, Any],
        obs_mask: Mapping[str, Any] | None = None,
        labels: Any | None = None,
        drop_empty: bool = False,
    ) -> None:
        self.modalities = list(modalities)
        self.data, self.obs_mask, self.labels = validate_data(
            self.modalities, data, obs_mask, labels, drop_empty
        )

    @classmethod
    def from_nan(
        cls, modalities: Sequence[Modality], data: Mapping[str, Any], labels: Any | None = None,
        drop_empty: bool = False,
    ) -> MultimodalDataset:
        """Build a data set whose missing entries are the NaNs of ``data``.

        A row whose modality is entirely NaN misses that modality; partly NaN rows give a
        feature-level mask for the modality.
        """
        masks = {}
        for mod in modalities:
            x = torch.as_tensor(data[mod.name]) if mod.name in data else None
            if x is None or not x.is_floating_point():
                continue
            observed = ~torch.isnan(x)
            rows = observed.flatten(1)
            partial = (rows.any(1) & ~rows.all(1)).any()
            masks[mod.name] = observed if partial else rows.any(1)
        return cls(modalities, data, masks, labels, drop_empty)

    @classmethod
    def _from_clean(
        cls, modalities: list[Modality], data: dict[str, Tensor], obs_mask: dict[str, Tensor],
        labels: Tensor | None,
    ) -> MultimodalDataset:
        new = cls.__new__(cls)
        new.modalities, new.data, new.obs_mask, new.labels = modalities, data, obs_mask, labels
        return new

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def modality(self, name: str) -> Modality:
        for mod in self.modalities:
            if mod.name == name:
                return mod
        raise ValueError(f"unknown modality {name!r}: the modalities are {self.names}")

    def __len__(self) -> int:
        return next(iter(self.data.values())).shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = {"data": {m: v[i] for m, v in self.data.items()},
               "obs_mask": {m: v[i] for m, v in self.obs_mask.items()}}
        if self.labels is not None:
            row["labels"] = self.labels[i]
        return row

    def batch(self, indices: Tensor | slice | None = None) -> MultimodalBatch:
        """The rows ``indices`` (all rows by default) as one batch."""
        full = MultimodalBatch(self.data, self.obs_mask, self.labels)
        return full if indices is None else full.index(indices)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[MultimodalBatch]:
        """Iterate over batches by tensor indexing (one ``index_select`` per tensor)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])

    def subset(self, indices: Tensor | Sequence[int]) -> MultimodalDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        b = self.batch(idx)
        return self._from_clean(self.modalities, b.data, b.obs_mask, b.labels)

    def split(self, fraction: float, seed: int = 0) -> tuple[MultimodalDataset, MultimodalDataset]:
        """Random split into ``(1 - fraction, fraction)`` parts, reproducible by ``seed``."""
        if not 0 < fraction < 1:
            raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
        n = len(self)
        n_second = max(1, int(round(n * fraction)))
        if n_second >= n:
            raise ValueError(f"cannot split {n} rows with fraction {fraction}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        first, second = perm[n_second:].sort().values, perm[:n_second].sort().values
        return self.subset(first), self.subset(second)

    def with_obs_mask(
        self, obs_mask: Mapping[str, Tensor], drop_empty: bool = False
    ) -> MultimodalDataset:
        """The same data with new observation masks (validated; entries now missing are zeroed)."""
        return MultimodalDataset(self.modalities, self.data, obs_mask, self.labels, drop_empty)

    def observed_fraction(self) -> dict[str, float]:
        """Fraction of rows that observe each modality."""
        return {m: float(self.batch().row_mask(m).float().mean()) for m in self.names}


def collate(rows: Sequence[Mapping[str, Any]]) -> MultimodalBatch:
    """Stack rows from :meth:`MultimodalDataset.__getitem__` into a batch (for DataLoader)."""
    first = rows[0]
    data = {m: torch.stack([r["data"][m] for r in rows]) for m in first["data"]}
    mask = {m: torch.stack([r["obs_mask"][m] for r in rows]) for m in first["obs_mask"]}
    labels = torch.stack([r["labels"] for r in rows]) if "labels" in first else None
    return MultimodalBatch(data, mask, labels)


def make_batch(
    modalities: Sequence[Modality],
    data: Mapping[str, Any],
    obs_mask: Mapping[str, Any] | None = None,
    labels: Any | None = None,
) -> MultimodalBatch:
    """Validate raw tensors into a :class:`MultimodalBatch` (same checks as the data set)."""
    return MultimodalDataset(modalities, data, obs_mask, labels).batch()
