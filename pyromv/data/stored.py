"""Data sets stored compactly (image bytes, memory-mapped files) and decoded batch by batch.

A :class:`~pyromv.data.MultimodalDataset` holds every modality as the tensors the model sees:
floats of the default dtype (4 bytes a pixel) or ``int64`` codes. :class:`StoredDataset` keeps
each modality in its *stored* dtype instead (``uint8`` image bytes with a ``scale`` of 255, or
floats, or integer codes), possibly in a memory-mapped file, and builds each batch by gathering
its rows (one tensor index per modality: only those rows are read from disk) and decoding them:

``x = stored.to(float) / scale`` for bytes, ``x = stored.long()`` for category codes, then the
missing entries zero-filled, exactly as :func:`~pyromv.data.validation.validate_data` does for the
in-memory data set. ``uint8 / 255`` decoded in float32 equals the float32 rounding of the exact
quotient for every byte, so a byte-stored data set gives the same batches, bit for bit, as the
same data stored as ``(bytes / 255.0).astype(float32)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .batch import MultimodalBatch
from .dataset import MultimodalDataset, partially_observed
from .modality import Modality, resolve_mask_aware
from .validation import _as_tensor, check_modalities, check_values, likelihood_head

#: rows decoded at once when the values are checked (bounds the memory of the check)
CHECK_CHUNK = 65536


def decode(x: Tensor, scale: float | None, integer_codes: bool, dtype: torch.dtype | None = None) -> Tensor:
    """Stored values -> the values a model sees: ``int64`` codes, or floats ``x / scale``.

    ``scale=None`` converts without dividing (floats stored as floats)."""
    if integer_codes:
        return x.long()
    x = x.to(dtype or torch.get_default_dtype())
    return x / scale if scale is not None else x


def _fill(x: Tensor, mask: Tensor) -> Tensor:
    """Zeros where ``mask`` (``(B,)`` or ``x``'s shape) says missing."""
    if bool(mask.all()):
        return x
    full = mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    return torch.where(full, x, torch.zeros((), dtype=x.dtype))


def _check_mask(name: str, mask: Any, n: int, shape: tuple[int, ...]) -> Tensor:
    mask = _as_tensor(mask, f"obs_mask of modality {name!r}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"obs_mask of modality {name!r} must be boolean (or 0/1)")
        mask = mask.bool()
    if tuple(mask.shape) not in {(n,), (n, *shape)}:
        raise ValueError(
            f"obs_mask of modality {name!r} has shape {tuple(mask.shape)}; expected ({n},) for "
            f"whole-modality missingness or {(n, *shape)} for feature-level missingness"
        )
    return mask


class StoredDataset(MultimodalDataset):
    """Rows kept in their stored dtype (and possibly memory-mapped), decoded per batch.

    Parameters
    ----------
    modalities : sequence of Modality
    stored : dict of str to array
        ``stored[m]`` of shape ``(N, *modality.shape)``: ``uint8`` bytes (with ``scales[m]``),
        floats, or integer codes for the ``categorical`` likelihood. A tensor backed by a
        memory map (``torch.from_numpy(np.load(f, mmap_mode="c"))``) is read only where a batch
        gathers rows.
    scales : dict of str to float, optional
        Divide modality ``m`` by ``scales[m]`` when decoding (255 for image bytes in [0, 1]).
        Integer data of a non-categorical modality need a scale (``TypeError`` otherwise, as
        :class:`~pyromv.data.MultimodalDataset` refuses ``uint8``).
    obs_mask, labels, drop_empty
        As in :class:`~pyromv.data.MultimodalDataset`.
    check : bool
        Check the observed values against the likelihoods' supports, decoding
        :data:`CHECK_CHUNK` rows at a time (``False`` for data checked when they were written).

    Notes
    -----
    ``batch``, ``batches``, ``subset``, ``split``, ``holdout`` and ``with_obs_mask`` never decode
    more than the rows asked for; ``subset`` (hence ``split``/``holdout``) returns a *view* that
    shares the stored arrays. The ``data`` attribute decodes every row (it exists for code that
    reads whole modalities, such as the plots); prefer :meth:`batch`.
    """

    def __init__(
        self,
        modalities: Sequence[Modality],
        stored: Mapping[str, Any],
        scales: Mapping[str, float | None] | None = None,
        obs_mask: Mapping[str, Any] | None = None,
        labels: Any | None = None,
        drop_empty: bool = False,
        check: bool = True,
    ) -> None:
        self.modalities = list(modalities)
        specs = check_modalities(self.modalities)
        if set(stored) != set(specs):
            raise ValueError(f"stored data for modalities {sorted(stored)}; the modalities are {list(specs)}")
        scales = dict(scales or {})
        unknown = set(scales) - set(specs)
        if unknown:
            raise ValueError(f"scales name unknown modality {sorted(unknown)}: the modalities are {list(specs)}")
        self._stored: dict[str, Tensor] = {}
        self._scales: dict[str, float | None] = {}
        self._codes: dict[str, bool] = {}
        n: int | None = None
        for name, spec in specs.items():
            x = stored[name] if isinstance(stored[name], RowFile) else _as_tensor(stored[name], f"modality {name!r}")
            if x.dim() != len(spec.shape) + 1 or tuple(x.shape[1:]) != spec.shape:
                raise ValueError(f"modality {name!r}: expected stored rows of shape {spec.shape}, got {tuple(x.shape)}")
            if n is None:
                n = x.shape[0]
                if n == 0:
                    raise ValueError(f"the data set is empty (modality {name!r} has 0 rows)")
            elif x.shape[0] != n:
                raise ValueError(f"modality {name!r} has {x.shape[0]} rows; the others have {n}")
            codes = likelihood_head(spec).integer_codes
            scale = scales.get(name)
            if scale is not None and (codes or not float(scale) > 0):
                raise ValueError(f"modality {name!r}: scale {scale!r} must be positive (and only for "
                                 "non-categorical data)")
            if not codes and not x.is_floating_point() and scale is None:
                raise TypeError(f"modality {name!r}: {x.dtype} data of a {spec.likelihood!r} likelihood need a "
                                "scale (255 for image bytes in [0, 1])")
            if codes and x.is_floating_point():
                raise TypeError(f"modality {name!r}: the categorical likelihood needs integer codes, got {x.dtype}")
            self._stored[name] = x
            self._scales[name] = None if scale is None else float(scale)
            self._codes[name] = codes
        assert n is not None
        masks = dict(obs_mask or {})
        unknown = set(masks) - set(specs)
        if unknown:
            raise ValueError(f"obs_mask names unknown modality {sorted(unknown)}: the modalities are {list(specs)}")
        self.obs_mask = {
            m: _check_mask(m, masks[m], n, specs[m].shape) if masks.get(m) is not None
            else torch.ones(n, dtype=torch.bool) for m in specs
        }
        if labels is not None:
            labels = _as_tensor(labels, "labels")
            if labels.shape[:1] != (n,):
                raise ValueError(f"labels have {tuple(labels.shape)} rows; the data has {n}")
        self.labels = labels
        self._rows: Tensor | None = None  # positions of this view's rows in the stored arrays
        self._reopen: tuple[Any, tuple] | None = None  # (function, args) giving the arrays back after pickling
        if check:
            self._check_values()
        self._drop_empty(drop_empty)
        self.modalities = resolve_mask_aware(self.modalities, partially_observed(self.obs_mask))  # as the base

    # ------------------------------------------------------------------ internals
    def _view(self, positions: Tensor | None, obs_mask: dict[str, Tensor] | None = None) -> StoredDataset:
        new = StoredDataset.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("_checked_specs", None)
        if "_checked_specs" in self.__dict__:
            new._checked_specs = set(self._checked_specs)
        if positions is not None:
            new._rows = positions if self._rows is None else self._rows[positions]
            new.obs_mask = {m: v[positions] for m, v in (obs_mask or self.obs_mask).items()}
            new.labels = None if self.labels is None else self.labels[positions]
        elif obs_mask is not None:
            new.obs_mask = obs_mask
        return new

    def _drop_empty(self, drop_empty: bool) -> None:
        observed = torch.zeros(len(self), dtype=torch.bool)
        for v in self.obs_mask.values():
            observed |= v if v.dim() == 1 else v.flatten(1).any(1)
        if bool(observed.all()):
            return
        empty = (~observed).nonzero().flatten()
        if not drop_empty:
            raise ValueError(f"{len(empty)} row(s) observe no modality (first: row {int(empty[0])}); a row needs "
                             "at least one observed modality (pass drop_empty=True to drop them)")
        if len(empty) == len(self):
            raise ValueError(f"every row ({len(self)}) observes no modality")
        warnings.warn(f"dropping {len(empty)} row(s) that observe no modality", stacklevel=3)
        keep = observed.nonzero().flatten()
        view = self._view(keep)
        self._rows, self.obs_mask, self.labels = view._rows, view.obs_mask, view.labels

    def _check_values(self) -> None:
        n = len(self)
        for mod in self.modalities:
            head = likelihood_head(mod)
            for start in range(0, n, CHECK_CHUNK):
                pos = torch.arange(start, min(n, start + CHECK_CHUNK))
                x = self._decoded(mod.name, pos)
                mask = self.obs_mask[mod.name][pos]
                try:
                    check_values(mod, x, mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim())), head)
                except ValueError as err:  # name the row of the data set, not of the chunk
                    raise ValueError(f"{err} (rows {start}..{start + len(pos) - 1} checked together: the row "
                                     "above counts from the first of them)") from None

    def _decoded(self, name: str, positions: Tensor | slice | None) -> Tensor:
        """Decoded, not yet zero-filled, rows ``positions`` of modality ``name``."""
        x = self._stored[name]
        if self._rows is not None:
            x = x[self._rows if positions is None else self._rows[positions]]
        elif positions is not None or isinstance(x, RowFile):
            x = x[positions if positions is not None else slice(None)]
        return decode(x, self._scales[name], self._codes[name])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state.get("_reopen") is not None:  # memory-mapped: send the path, not the data
            state["_stored"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._stored is None:
            fn, args = self._reopen
            self._stored = fn(*args)

    # ------------------------------------------------------------------ the data set interface
    @property
    def data(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Every row decoded (memory: the whole data set as floats); prefer :meth:`batch`."""
        return self.batch().data

    @property
    def scales(self) -> dict[str, float | None]:
        """The divisor of each modality's stored values (``None``: stored as the model sees it)."""
        return dict(self._scales)

    @property
    def stored(self) -> dict[str, Tensor]:
        """The stored arrays of this view's rows (gathered: a copy unless the view is whole)."""
        return {m: (v[:] if self._rows is None else v[self._rows]) for m, v in self._stored.items()}

    def __len__(self) -> int:
        return len(next(iter(self.obs_mask.values())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        b = self.batch(torch.as_tensor([i]))
        row = {"data": {m: v[0] for m, v in b.data.items()}, "obs_mask": {m: v[0] for m, v in b.obs_mask.items()}}
        if b.labels is not None:
            row["labels"] = b.labels[0]
        return row

    def batch(self, indices: Tensor | slice | None = None) -> MultimodalBatch:
        """The rows ``indices`` (all by default), gathered from the stored arrays and decoded."""
        masks = self.obs_mask if indices is None else {m: v[indices] for m, v in self.obs_mask.items()}
        data = {m: _fill(self._decoded(m, indices), masks[m]) for m in self.names}
        labels = self.labels if indices is None or self.labels is None else self.labels[indices]
        return MultimodalBatch(data, masks, labels)

    def subset(self, indices: Tensor | Sequence[int]) -> StoredDataset:
        """The rows ``indices`` as a view sharing the stored arrays (nothing is copied but masks and labels)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() == 0:
            raise ValueError("subset of no rows: a data set needs at least one row")
        return self._view(idx)

    def with_obs_mask(self, obs_mask: Mapping[str, Tensor], drop_empty: bool = False) -> StoredDataset:
        """The same rows with new observation masks (entries now missing read as zeros)."""
        specs = {m.name: m for m in self.modalities}
        unknown = set(obs_mask) - set(specs)
        if unknown:
            raise ValueError(f"obs_mask names unknown modality {sorted(unknown)}: the modalities are {self.names}")
        n = len(self)
        masks = {m: _check_mask(m, obs_mask[m], n, specs[m].shape) if obs_mask.get(m) is not None
                 else torch.ones(n, dtype=torch.bool) for m in specs}
        new = self._view(None, masks)
        new._drop_empty(drop_empty)
        new.modalities = resolve_mask_aware(self.modalities, partially_observed(new.obs_mask))
        return new

    def observed_fraction(self) -> dict[str, float]:
        """Fraction of rows that observe each modality (from the masks alone)."""
        return {m: float((v if v.dim() == 1 else v.flatten(1).any(1)).float().mean())
                for m, v in self.obs_mask.items()}


def quantize(x: Tensor | np.ndarray, scale: float = 255.0) -> np.ndarray:
    """Floats in ``[0, 1]`` to ``uint8`` codes ``round(x * scale)`` (``decode`` maps them back to
    ``code / scale``: an error of at most ``0.5 / scale``, none for values that were bytes / scale)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size and (np.nanmin(x) < 0 or np.nanmax(x) * scale > 255.5):
        raise ValueError(f"cannot store values outside [0, {255 / scale:g}] as bytes with scale {scale:g}")
    return np.rint(np.nan_to_num(x) * scale).astype(np.uint8)


class RowFile:
    """The rows of a C-ordered ``.npy`` file, read on demand with positioned reads (``os.pread``).

    ``rows[indices]`` (a tensor or array of row indices, a slice, ``...``) reads just those rows
    into a new tensor: one read per run of consecutive rows, nothing mapped into the process, so
    the resident set holds the batch and no more (a memory map can map far more than the rows it
    touches: with large page-cache folios one row maps up to megabytes). The file descriptor is
    opened per process; pickling sends the path.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        header = np.load(self.path, mmap_mode="r", allow_pickle=False)  # maps, reads nothing but the header
        shape, dtype, self.offset = header.shape, header.dtype, int(header.offset)
        contiguous = header.flags.c_contiguous
        del header
        if not contiguous or dtype.hasobject or not dtype.isnative:
            raise ValueError(f"{self.path}: rows can be read from C-ordered native arrays only")
        self.np_dtype, self.shape = dtype, torch.Size(shape)
        self.dtype = torch.from_numpy(np.empty(0, dtype)).dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        size = os.path.getsize(self.path)
        if size < self.offset + self.row_bytes * shape[0]:
            raise ValueError(f"{self.path}: truncated ({size} bytes; the header announces "
                             f"{self.offset + self.row_bytes * shape[0]})")
        self._fd: tuple[int, int] | None = None  # (pid, fd)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if self._fd is not None and self._fd[0] == os.getpid():
            os.close(self._fd[1])

    def _file(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():  # a forked worker opens its own
            self._fd = (os.getpid(), os.open(self.path, os.O_RDONLY))
        return self._fd[1]

    def dim(self) -> int:
        return len(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Tensor:
        n = self.shape[0]
        if isinstance(index, slice) or index is Ellipsis:
            rows = np.arange(n)[index if isinstance(index, slice) else slice(None)]
        else:
            rows = np.asarray(index.cpu() if isinstance(index, Tensor) else index, dtype=np.int64).reshape(-1)
            rows = np.where(rows < 0, rows + n, rows)
            if rows.size and (rows.min() < 0 or rows.max() >= n):
                raise IndexError(f"row index out of range for {n} rows of {self.path}")
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.np_dtype)
        if len(rows):
            flat = out.reshape(len(rows), -1).view(np.uint8)
            order = np.argsort(rows, kind="stable")
            ranked = rows[order]
            # runs of consecutive rows (in sorted order) are read at once
            breaks = np.flatnonzero(np.diff(ranked) != 1) + 1
            fd, size = self._file(), self.row_bytes
            for run in np.split(np.arange(len(rows)), breaks):
                first, count = int(ranked[run[0]]), len(run)
                data = os.pread(fd, size * count, self.offset + first * size)
                block = np.frombuffer(data, dtype=np.uint8).reshape(count, size)
                flat[order[run]] = block
        return torch.from_numpy(out)
