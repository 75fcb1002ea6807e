"""In-memory multimodal data sets and their batches."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .batch import MultimodalBatch
from .modality import Modality, resolve_mask_aware
from .validation import check_values, likelihood_head, validate_data


class MultimodalDataset(torch.utils.data.Dataset):
    """Rows of several modalities, each possibly missing, held as tensors in memory.

    Parameters
    ----------
    modalities : sequence of Modality
        The specs, in the order the models see them.
    data : dict of str to array
        ``data[m]`` of shape ``(N, *modality.shape)``, ``N >= 1`` (an empty data set is refused).
        Every observed entry must lie in the support of the modality's likelihood: finite
        for every likelihood, in [0, 1] for the Bernoulli and continuous Bernoulli, whole
        numbers ``0 .. num_categories - 1`` for the categorical (and per column for the
        tabular); otherwise a ``ValueError`` names the modality, the row, the entry and the
        value. The check runs once, here, in a few vectorised passes; whatever Pyro's validation
        setting. Categorical data are stored as ``int64`` codes, the rest as the default float
        dtype (integers and booleans convert exactly); ``uint8`` data are refused (``TypeError``)
        for non-categorical likelihoods: convert image bytes explicitly, ``x.float() / 255``.
        Entries that ``obs_mask`` marks missing may hold anything, NaN and inf included; they
        are replaced by zeros.
    obs_mask : dict of str to bool array, optional
        ``(N,)`` or ``(N, *shape)``; ``True`` where observed. Default: all observed. A modality
        some row observes only in part gets ``mask_aware="on"`` in :attr:`modalities` where its
        spec says ``"auto"`` (a model built from these specs gives its encoder the mask).
    labels : array, optional
        ``(N,)`` class labels (used by coherence metrics and plots, never by training).
    drop_empty : bool
        Drop rows that observe no modality (with a warning) instead of raising.

    Notes
    -----
    Batches come from :meth:`batches` (tensor indexing, no per-row Python work); the
    ``__getitem__``/:func:`collate` pair serves ``torch.utils.data.DataLoader`` users. Batches of
    a data set are therefore checked batches, for the Trainer, the metrics and a plain
    ``pyro.infer.SVI`` loop alike; a model whose modality specs differ from the data set's is
    checked when it meets it (:meth:`check_against`, called by the Trainer and the metrics).
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
        self.modalities = resolve_mask_aware(self.modalities, partially_observed(self.obs_mask))

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

    def check_against(self, modalities: Sequence[Modality]) -> None:
        """Check this data set against a model's modality specs (where a data set meets a model).

        The values were checked against this data set's own specs when it was built; this
        refuses a data set whose modalities differ from the model's by name or shape, and where
        a modality's likelihood (or its options) differs, checks the observed values against the
        model's likelihood too (:func:`~pyromv.data.validation.check_values`, once: the result
        is remembered). Equal specs cost a comparison, no pass over the data.
        """
        theirs = {m.name: m for m in modalities}
        if set(theirs) != set(self.names):
            raise ValueError(f"the data has modalities {self.names}; the model expects {list(theirs)}")
        checked = self.__dict__.setdefault("_checked_specs", set())
        for mine in self.modalities:
            spec = theirs[mine.name]
            if spec.shape != mine.shape:
                raise ValueError(
                    f"modality {mine.name!r}: the data have rows of shape {mine.shape}; the model "
                    f"expects {spec.shape}"
                )
            if mine.mask_aware == "on" and spec.mask_aware == "auto" and ("mask", spec.name) not in checked:
                checked.add(("mask", spec.name))
                warnings.warn(
                    f"modality {spec.name!r}: the data miss single entries, but the model's encoder does not "
                    "see the mask (the model was built from specs with mask_aware='auto' before any data "
                    "with feature masks): missing entries reach it as zeros. Train with mask-aware encoders: build "
                    "the model from the data set's specs (e.g. MVAE(train.modalities, config)) or set "
                    "Modality(mask_aware='on'); "
                    "mask_aware='off' silences this warning",
                    UserWarning, stacklevel=3,
                )
            key = (spec.name, spec.likelihood, repr(sorted(spec.likelihood_kwargs.items())))
            if (spec.likelihood, spec.likelihood_kwargs) == (mine.likelihood, mine.likelihood_kwargs) \
                    or key in checked:
                continue
            head = likelihood_head(spec)
            x = self.data[mine.name]
            if head.integer_codes and x.is_floating_point():
                raise ValueError(
                    f"modality {spec.name!r}: the data set holds floats (built for a "
                    f"{mine.likelihood!r} likelihood) but the model's likelihood {spec.likelihood!r} "
                    "scores category codes; build the data set with the model's modalities"
                )
            if not head.integer_codes and not x.is_floating_point():
                raise ValueError(
                    f"modality {spec.name!r}: the data set holds category codes (built for a "
                    f"{mine.likelihood!r} likelihood) but the model's likelihood is {spec.likelihood!r}; "
                    "build the data set with the model's modalities"
                )
            mask = self.obs_mask[mine.name]
            check_values(spec, x, mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim())), head)
            checked.add(key)

    @property
    def names(self) -> list[str]:
        """Modality names, in order."""
        return [m.name for m in self.modalities]

    def modality(self, name: str) -> Modality:
        """The spec of modality ``name``; ValueError naming the known ones if unknown."""
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
        """Iterate over batches by tensor indexing (one ``index_select`` per tensor).

        A ``batch_size`` above the number of rows gives one batch of every row (none with
        ``drop_last=True``)."""
        try:
            size = operator.index(batch_size)
        except TypeError:
            size = 0
        if isinstance(batch_size, bool) or size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = size
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])

    def subset(self, indices: Tensor | Sequence[int]) -> MultimodalDataset:
        """The rows ``indices`` as a new data set (at least one row: data sets are never empty)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() == 0:
            raise ValueError("subset of no rows: a data set needs at least one row")
        b = self.batch(idx)
        new = self._from_clean(self.modalities, b.data, b.obs_mask, b.labels)
        if "_checked_specs" in self.__dict__:  # rows of checked rows are checked
            new._checked_specs = set(self._checked_specs)
        return new

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

    def holdout(
        self, fraction: float, seed: int = 0
    ) -> tuple[MultimodalDataset, MultimodalDataset | None]:
        """``(train, validation)`` for a trainer: :meth:`split` with the validation part
        clamped to between 1 and ``len - 1`` rows, so any ``fraction`` in (0, 1) works on any
        data set of 2 rows or more. A data set of one row cannot lend a row to validation:
        it is returned whole with ``None`` (no validation, no early stopping) and a warning
        that says so; ``fraction == 0`` returns ``(self, None)`` silently."""
        if fraction == 0:
            return self, None
        if not 0 < fraction < 1:
            raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
        n = len(self)
        if n < 2:
            warnings.warn(
                f"the data set has {n} row: too few to hold out a validation set (val_fraction="
                f"{fraction} needs at least 2 rows); training on it without validation or early "
                "stopping", stacklevel=2,
            )
            return self, None
        n_val = min(max(1, int(round(n * fraction))), n - 1)
        return self.split(n_val / n, seed=seed)

    def with_obs_mask(
        self, obs_mask: Mapping[str, Tensor], drop_empty: bool = False
    ) -> MultimodalDataset:
        """The same data with new observation masks (validated; entries now missing are zeroed).

        The values are not checked against the likelihoods again: they were when this data set
        was built, and its missing entries are zeros, inside every support."""
        new = MultimodalDataset.__new__(MultimodalDataset)
        new.modalities = self.modalities
        new.data, new.obs_mask, new.labels = validate_data(
            self.modalities, self.data, obs_mask, self.labels, drop_empty, check_support=False
        )
        new.modalities = resolve_mask_aware(self.modalities, partially_observed(new.obs_mask))
        return new

    def observed_fraction(self) -> dict[str, float]:
        """Fraction of rows that observe each modality."""
        return {m: float(self.batch().row_mask(m).float().mean()) for m in self.names}


def partially_observed(obs_mask: Mapping[str, Tensor]) -> dict[str, bool]:
    """Per modality: does some row observe some but not all of its entries (feature-level
    missingness)? Such modalities get mask-aware encoders under ``mask_aware="auto"``."""
    out = {}
    for m, mask in obs_mask.items():
        rows = mask.flatten(1) if mask.dim() > 1 else None
        out[m] = rows is not None and bool((rows.any(1) & ~rows.all(1)).any())
    return out


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
