"""Reading the standard files of public data sets: idx, MATLAB, PNG/JPEG and torch index files.

Every reader checks what it reads and raises ``FileNotFoundError`` naming the expected files
when they are absent and ``ValueError`` naming the file when it is malformed.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: where ``root = ""`` points for the benchmarks without a system location
DATA_ENV = "PYROMV_DATA"

# idx type codes (LeCun's MNIST format): numpy dtypes, big-endian
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def default_root(name: str) -> Path:
    """``$PYROMV_DATA/<name>`` when that variable is set, else ``./data/<name>``."""
    return Path(os.environ.get(DATA_ENV, "data")) / name


def resolve_root(root: str, name: str) -> Path:
    """The configured ``root``, or :func:`default_root` when it is empty."""
    return Path(root).expanduser() if str(root) else default_root(name)


def missing_files(
    what: str, root: Path, expected: Iterable[str], hint: str = ""
) -> FileNotFoundError:
    """A ``FileNotFoundError`` that lists every expected file under ``root``."""
    listing = "\n".join(f"  {root / e}" for e in expected)
    msg = f"{what}: files not found; expected\n{listing}"
    if hint:
        msg += f"\n{hint}"
    return FileNotFoundError(msg)


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), raw or gzip-compressed.

    Layout: two zero bytes, a type code (``0x08`` unsigned byte ... ``0x0E`` double), the
    number of dimensions ``k``, then ``k`` big-endian 32-bit sizes and the data in C order,
    big-endian. Raises ``ValueError`` naming the file for a wrong magic number, an unknown
    type code or a data size that does not match the header.

    The result is cached per file (path, modification time and size) and read-only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    return _read_idx_cached(*_file_key(path))


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime: int, size: int) -> np.ndarray:
    del mtime, size  # cache keys only
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an idx file (its magic number must start with two zero bytes)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown idx type code 0x{code:02x}")
    if ndim < 1:
        raise ValueError(f"{path}: idx header declares {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: idx header declares shape {dims} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header} bytes"
        )
    out = (
        np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
    )
    out.setflags(write=False)
    return out


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an idx file (gzip-compressed when ``compress`` or the name ends in .gz).

    The inverse of :func:`read_idx`, for preparing files and for tests.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {v.newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    dtype = array.dtype.newbyteorder("=")
    if dtype not in codes:
        raise ValueError(f"idx cannot store dtype {array.dtype}")
    header = bytes([0, 0, codes[dtype], array.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=dtype.newbyteorder(">")).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def find_first(root: Path, candidates: Sequence[str]) -> Path | None:
    """The first of ``root / c`` that is a file, else ``None``."""
    for c in candidates:
        if (root / c).is_file():
            return root / c
    return None


def load_torch_index(path: Path) -> np.ndarray:
    """A 1-D integer tensor saved with ``torch.save`` (e.g. MMVAE's pairing files).

    Loaded with ``weights_only=True``: no pickled code is run.
    """
    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling failure is a malformed file)
        raise ValueError(
            f"{path}: not a tensor file readable with weights_only=True ({err})"
        ) from err
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.is_floating_point():
        raise ValueError(f"{path}: expected a 1-D integer tensor, got {_describe(value)}")
    return value.numpy().astype(np.int64)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__}" + (
        f" of shape {tuple(shape)} and dtype {dtype}" if shape is not None else ""
    )


def read_image(
    path: Path, mode: str, size: tuple[int, int] | None = None, crop: int = 0
) -> np.ndarray:
    """An image file as a ``(C, H, W)`` uint8 array (``mode`` ``"L"`` or ``"RGB"``).

    ``crop > 0`` takes a centred ``crop x crop`` square first; ``size = (H, W)`` then resizes
    bilinearly. Raises ``ValueError`` naming the file when it cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if crop:
                w, h = img.size
                if crop > min(w, h):
                    raise ValueError(f"{path}: image of {w}x{h} is smaller than the crop {crop}")
                left, top = (w - crop) // 2, (h - crop) // 2
                img = img.crop((left, top, left + crop, top + crop))
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read the image ({err})") from err
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def seeded_subset(n: int, k: int, seed: int, salt: int) -> np.ndarray:
    """``k`` of ``range(n)`` chosen uniformly without replacement (sorted); all when ``k`` is
    0 or at least ``n``."""
    if k <= 0 or k >= n:
        return np.arange(n)
    rng = np.random.default_rng([int(seed), int(salt)])
    return np.sort(rng.choice(n, size=k, replace=False))


_CACHE: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
_CACHE_SIZE = 8


def file_stamp(*paths: Path) -> tuple:
    """(resolved path, modification time, size) of each file: part of a cache key."""
    return tuple(_file_key(Path(p)) for p in paths)


def cached(key: tuple, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns, kept (read-only) per ``key``; least recently used dropped.

    Sources key on their name, split, configuration and :func:`file_stamp` of their files,
    so changing a file or a field rebuilds.
    """
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    out = build()
    for arr in out.values():
        if isinstance(arr, np.ndarray):
            arr.setflags(write=False)
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


def clear_cache() -> None:
    """Forget every built array: the next ``load`` reads the files again."""
    _CACHE.clear()
    _read_idx_cached.cache_clear()


def stratified_subset(labels: np.ndarray, k: int, seed: int, salt: int) -> np.ndarray:
    """``k`` indices chosen uniformly within each class, class sizes proportional to the
    classes' shares (largest remainders), sorted; all when ``k`` is 0 or at least ``len``."""
    n = len(labels)
    if k <= 0 or k >= n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (k / n)
    take = np.floor(quota).astype(np.int64)
    extra = k - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    rng = np.random.default_rng([int(seed), int(salt)])
    out = [
        rng.choice(np.flatnonzero(labels == c), size=t, replace=False)
        for c, t in zip(classes, take)
    ]
    return np.sort(np.concatenate(out))
