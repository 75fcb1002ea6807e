"""Prepared data sets: one ``.npy`` file per modality and split, rows read when a batch needs them.

A prepared data set is a folder::

    dataset.json                # modalities, dtypes, shapes, scales, masks, splits, source config
    train/m0.npy                # (N, *shape) in the stored dtype (uint8 bytes, float32, int codes)
    train/m0.mask.npy           # only when something is missing: (N,) or (N, *shape) bool
    train/labels.npy            # when the data have labels
    test/...

:func:`write_prepared` writes it once, atomically (into a temporary sibling folder renamed into
place at the end), streaming rows chunk by chunk (``numpy.lib.format.open_memmap``), so a data set
larger than memory can be written. :func:`open_prepared` opens a split as a
:class:`~pyromv.data.stored.StoredDataset` that reads each batch's rows from disk when the batch is
built (positioned reads by default, or memory maps). Row masks and labels (a byte or eight per
row) are read into memory. :class:`Prepared` is the data source
(``pyromv-train data=prepared data.path=...``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .dataset import MultimodalDataset
from .modality import Modality
from .stored import RowFile, StoredDataset, _fill, quantize
from .validation import likelihood_head

FORMAT = "pyromv-prepared"
FORMAT_VERSION = 1
INDEX_NAME = "dataset.json"
DTYPES = ("auto", "uint8", "float32")
ACCESS = ("read", "mmap", "memory")
_NUMPY_FLOAT = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _code_dtype(spec: Modality) -> np.dtype:
    k = int(spec.likelihood_kwargs.get("num_categories", 1 << 31))
    return np.dtype(np.uint8 if k <= 256 else np.int16 if k <= 32767 else np.int64)


def _plan(ds: MultimodalDataset, spec: Modality, dtype: str) -> tuple[np.dtype, float | None]:
    """(stored numpy dtype, scale) of one modality."""
    if likelihood_head(spec).integer_codes:
        return _code_dtype(spec), None
    if isinstance(ds, StoredDataset) and ds.scales[spec.name] is not None and dtype in ("auto", "uint8"):
        return torch.empty(0, dtype=ds._stored[spec.name].dtype).numpy().dtype, ds.scales[spec.name]
    if dtype == "uint8":
        return np.dtype(np.uint8), 255.0
    return np.dtype(np.float32), None


def _encode(ds: MultimodalDataset, name: str, np_dtype: np.dtype, scale: float | None) -> np.ndarray:
    if isinstance(ds, StoredDataset) and scale is not None and ds.scales[name] == scale:
        return _fill(ds.stored[name], ds.obs_mask[name]).numpy().astype(np_dtype, copy=False)
    x = ds.batch().data[name].numpy()
    if scale is not None:
        try:
            return quantize(x, scale)
        except ValueError as err:
            raise ValueError(f"modality {name!r}: {err}; prepare it with dtype=float32") from None
    return x.astype(np_dtype, copy=False)


def write_prepared(
    path: str | os.PathLike,
    splits: Mapping[str, MultimodalDataset | tuple[int, Iterable[MultimodalDataset]]],
    *,
    dtype: str = "auto",
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write data sets as a prepared folder (atomically); returns its path.

    Parameters
    ----------
    path : path
        The folder to create. An existing one is refused unless ``overwrite`` (then replaced
        only once the new one is complete).
    splits : dict
        ``split name -> MultimodalDataset``, or ``split -> (rows, chunks)`` with an iterable of
        data sets of the same modalities whose lengths add up to ``rows`` (streamed: the split is
        never in memory whole). Every split needs the same modalities.
    dtype : {"auto", "uint8", "float32"}
        How non-categorical modalities are stored. ``"auto"`` keeps bytes that are bytes (a
        :class:`~pyromv.data.stored.StoredDataset` with a scale) and stores floats as float32;
        ``"uint8"`` also quantizes floats in [0, 1] to ``round(255 x)`` (an error of at most
        1/510 per value, a quarter of the disk and memory of float32); ``"float32"`` decodes bytes.
        Category codes take the smallest integer type that holds them.
    source : dict, optional
        JSON-serialisable description of where the data came from (the CLI stores the data
        config), kept in ``dataset.json``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if not splits:
        raise ValueError("no splits to write")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (prepare: overwrite=true) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    tmp.chmod(0o755)
    try:
        index: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                                 "source": dict(source) if source is not None else None, "splits": {}}
        modalities: list[Modality] | None = None
        for split, given in splits.items():
            if not isinstance(split, str) or not split.isidentifier():
                raise ValueError(f"split names must be identifiers, got {split!r}")
            rows, chunks = (len(given), [given]) if isinstance(given, MultimodalDataset) else given
            entry, mods = _write_split(tmp, split, int(rows), chunks, dtype, progress)
            if modalities is None:
                modalities = mods
            elif [m.to_dict() for m in mods] != [m.to_dict() for m in modalities]:
                raise ValueError(f"split {split!r} has other modalities than the first split")
            index["splits"][split] = entry
        assert modalities is not None
        index["modalities"] = [m.to_dict() for m in modalities]
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_split(
    folder: Path, split: str, rows: int, chunks: Iterable[MultimodalDataset], dtype: str, progress: bool,
) -> tuple[dict[str, Any], list[Modality]]:
    (folder / split).mkdir()
    arrays: dict[str, np.memmap] = {}
    masks: dict[str, np.ndarray] = {}
    labels = None
    entry: dict[str, Any] = {"rows": rows, "modalities": {}, "labels": None}
    modalities: list[Modality] = []
    start = 0
    bar = tqdm(total=rows, desc=f"preparing {split}", unit="row", disable=not progress, dynamic_ncols=True)
    try:
        for ds in chunks:
            n = len(ds)
            if start + n > rows:
                raise ValueError(f"split {split!r}: the chunks hold more than the {rows} rows announced")
            if not arrays:  # the first chunk fixes the layout
                modalities = list(ds.modalities)
                for spec in modalities:
                    np_dtype, scale = _plan(ds, spec, dtype)
                    rel = f"{split}/{spec.name}.npy"
                    arrays[spec.name] = np.lib.format.open_memmap(folder / rel, mode="w+", dtype=np_dtype,
                                                                  shape=(rows, *spec.shape))
                    entry["modalities"][spec.name] = {"file": rel, "dtype": np_dtype.name,
                                                      "shape": [rows, *spec.shape], "scale": scale, "mask": None}
                if ds.labels is not None:
                    labels = np.lib.format.open_memmap(folder / f"{split}/labels.npy", mode="w+",
                                                       dtype=ds.labels.numpy().dtype,
                                                       shape=(rows, *ds.labels.shape[1:]))
                    entry["labels"] = {"file": f"{split}/labels.npy"}
            elif [m.to_dict() for m in ds.modalities] != [m.to_dict() for m in modalities]:
                raise ValueError(f"split {split!r}: a chunk has other modalities than the first")
            for spec in modalities:
                info = entry["modalities"][spec.name]
                arrays[spec.name][start:start + n] = _encode(ds, spec.name, np.dtype(info["dtype"]), info["scale"])
                mask = ds.obs_mask[spec.name]
                if spec.name not in masks and bool(mask.all()):
                    continue
                if spec.name not in masks:  # the first missing entry: the mask file starts (all True before)
                    kind = "rows" if mask.dim() == 1 else "features"
                    rel = f"{split}/{spec.name}.mask.npy"
                    shape = (rows,) if kind == "rows" else (rows, *spec.shape)
                    masks[spec.name] = np.lib.format.open_memmap(folder / rel, mode="w+", dtype=np.bool_, shape=shape)
                    masks[spec.name][:start] = True
                    info["mask"] = {"file": rel, "kind": kind}
                target = masks[spec.name]
                if target.ndim == 1 and mask.dim() > 1:
                    raise ValueError(f"split {split!r}, modality {spec.name!r}: a chunk has feature-level masks "
                                     "after row masks; give every chunk the same kind of mask")
                target[start:start + n] = (mask.numpy() if target.ndim == mask.dim()
                                           else mask.numpy().reshape((n,) + (1,) * (target.ndim - 1)))
            for name, target in masks.items():  # modalities fully observed in this chunk
                if bool(ds.obs_mask[name].all()):
                    target[start:start + n] = True
            if labels is not None:
                if ds.labels is None:
                    raise ValueError(f"split {split!r}: a chunk without labels after chunks with labels")
                labels[start:start + n] = ds.labels.numpy()
            start += n
            bar.update(n)
    finally:
        bar.close()
    if start != rows:
        raise ValueError(f"split {split!r}: the chunks hold {start} rows, {rows} were announced")
    for arr in (*arrays.values(), *masks.values(), *([labels] if labels is not None else [])):
        arr.flush()
    return entry, modalities


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """``dataset.json`` of a prepared folder, checked (``FileNotFoundError``/``ValueError`` name the file)."""
    index_path = Path(path) / INDEX_NAME
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found: {path} is not a prepared data set "
                                "(write one with pyromv-prepare)")
    try:
        index = json.loads(index_path.read_text())
    except ValueError as err:
        raise ValueError(f"{index_path} is not valid JSON ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{index_path} is not a {FORMAT} index")
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{index_path} has format version {index.get('format_version')}; this pyromv reads "
                         f"{FORMAT_VERSION}")
    return index


def _load(folder: Path, rel: str, mmap: bool, dtype: str | None = None, shape: list | None = None) -> np.ndarray:
    file = folder / rel
    try:
        arr = np.load(file, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{file}: cannot be read as a .npy array ({err})") from None
    if (dtype is not None and arr.dtype.name != dtype) or (shape is not None and list(arr.shape) != list(shape)):
        raise ValueError(f"{file}: holds {arr.dtype.name} {list(arr.shape)}; dataset.json says {dtype} {shape}")
    return arr


def _open_arrays(path: str, split: str) -> dict[str, torch.Tensor]:
    folder = Path(path)
    entry = read_index(folder)["splits"][split]
    return {m: torch.from_numpy(_load(folder, info["file"], True, info["dtype"], info["shape"]))
            for m, info in entry["modalities"].items()}


def open_prepared(path: str | os.PathLike, split: str = "train", access: str = "read") -> StoredDataset:
    """Split ``split`` of a prepared folder as a :class:`StoredDataset` that reads rows on demand.

    ``access``:

    - ``"read"`` (default): each batch reads its rows with positioned reads
      (:class:`~pyromv.data.stored.RowFile`); the process holds the batch, nothing more.
    - ``"mmap"``: memory maps (``np.load(mmap_mode="c")``, copy-on-write, never written back)
      indexed like tensors. As fast as memory once the file is in the page cache, but every
      page a batch touches joins the resident set, and the kernel may map a whole large folio
      (measured here: about 1.6 MB per randomly read 784-byte row), so over an epoch the
      resident set grows towards the file's size (page cache the kernel can reclaim).
    - ``"memory"``: the arrays read into memory whole (in their stored dtype).

    Pickling the data set (a DataLoader worker started by ``spawn``) sends the path, not the data.
    """
    if access not in ACCESS:
        raise ValueError(f"access must be one of {ACCESS}, got {access!r}")
    folder = Path(path)
    index = read_index(folder)
    if split not in index["splits"]:
        raise ValueError(f"{folder} has no split {split!r}; it has {sorted(index['splits'])}")
    entry = index["splits"][split]
    modalities = [Modality.from_dict(d) for d in index["modalities"]]
    stored, scales, masks = {}, {}, {}
    for mod in modalities:
        info = entry["modalities"][mod.name]
        stored[mod.name] = _open(folder, info["file"], access, info["dtype"], info["shape"])
        scales[mod.name] = info["scale"]
        if info["mask"] is not None:  # row masks (a byte a row) in memory; feature masks as the data
            kind = access if info["mask"]["kind"] == "features" and access == "mmap" else "memory"
            masks[mod.name] = _open(folder, info["mask"]["file"], kind, "bool", None)
    labels = None
    if entry["labels"] is not None:
        labels = torch.from_numpy(_load(folder, entry["labels"]["file"], False))
    ds = StoredDataset(modalities, stored, scales, masks, labels, check=False)
    if access == "mmap":
        ds._reopen = (_open_arrays, (str(folder.resolve()), split))
    return ds


def _open(folder: Path, rel: str, access: str, dtype: str, shape: list | None):
    if access == "read":
        rows = _load(folder, rel, True, dtype, shape)  # checks dtype, shape and length
        del rows
        return RowFile(folder / rel)
    return torch.from_numpy(_load(folder, rel, access == "mmap", dtype, shape))


@dataclass
class Prepared:
    """A prepared data set (``pyromv-prepare``) as a data source: ``data=prepared data.path=DIR``.

    Parameters
    ----------
    path : str
        The folder :func:`write_prepared` wrote.
    access : str
        How rows are read: ``"read"`` (positioned reads per batch, the default), ``"mmap"`` or
        ``"memory"`` (see :func:`open_prepared`).
    """

    path: str = ""
    access: str = "read"

    def _folder(self) -> Path:
        if not str(self.path):
            raise ValueError("data.path must name a prepared data set folder (written by pyromv-prepare)")
        return Path(self.path).expanduser()

    def modalities(self) -> list[Modality]:
        """The modality specs recorded in ``dataset.json``."""
        return [Modality.from_dict(d) for d in read_index(self._folder())["modalities"]]

    def splits(self) -> list[str]:
        return list(read_index(self._folder())["splits"])

    def load(self, split: str) -> StoredDataset:
        """Split ``split`` (``"train"``, ``"test"``, ...), read as ``access`` says."""
        return open_prepared(self._folder(), split, access=self.access)
