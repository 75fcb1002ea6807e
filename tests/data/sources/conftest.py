"""Writers of tiny data-set files in their real formats, independent of the readers under test."""

import gzip
import struct

import numpy as np
import pytest

# idx type codes of LeCun's format, written by hand here (not with pyromv's writer)
_CODES = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of ``array``: 0, 0, type code, ndim, big-endian sizes, big-endian data."""
    array = np.asarray(array)
    head = struct.pack(">BBBB", 0, 0, _CODES[array.dtype], array.ndim)
    head += struct.pack(">" + "I" * array.ndim, *array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_file(path, array, compress=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def fashion_arrays(per_class: int, seed: int):
    """Random 28x28 uint8 images, ``per_class`` of each of the 10 classes, shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    labels = labels[rng.permutation(len(labels))]
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    return images, labels


def write_fashion(root, per_class=(6, 4), compress=True, seed=0):
    """The four Fashion-MNIST idx files (the release's names) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", per_class[0]), ("test", "t10k", per_class[1])):
        images, labels = fashion_arrays(n, seed + (split == "test"))
        ext = ".gz" if compress else ""
        write_idx_file(root / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
        write_idx_file(root / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)
        out[split] = (images, labels)
    return out


@pytest.fixture
def fashion_root(tmp_path):
    """A folder with tiny Fashion-MNIST files; yields (root, {split: (images, labels)})."""
    from pyromv.data.sources import clear_cache

    clear_cache()
    root = tmp_path / "fashion"
    arrays = write_fashion(root)
    yield root, arrays
    clear_cache()
