"""Compact storage (bytes decoded per batch) and the prepared, memory-mapped format."""

import json
import pickle

import numpy as np
import pytest
import torch

from pyromv.data import Modality, MultimodalDataset, PolyDigits, feature_mcar, mcar
from pyromv.data.prepared import Prepared, open_prepared, read_index, write_prepared
from pyromv.data.stored import RowFile, StoredDataset, quantize


def _same_batches(a, b, batch_size=7, shuffle=True):
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    n = 0
    for x, y in zip(a.batches(batch_size, shuffle, ga), b.batches(batch_size, shuffle, gb), strict=True):
        assert x.names == y.names
        for m in x.names:
            assert x.data[m].dtype == y.data[m].dtype
            assert torch.equal(x.data[m], y.data[m]), m
            assert torch.equal(x.obs_mask[m], y.obs_mask[m]), m
        assert (x.labels is None) == (y.labels is None)
        if x.labels is not None:
            assert torch.equal(x.labels, y.labels)
        n += 1
    assert n == -(-len(a) // batch_size)


@pytest.fixture
def byte_images():
    """Image bytes, a text modality of codes and labels: the layout of FashionText."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(23, 1, 4, 4), dtype=np.uint8)
    pixels[0] = np.arange(256, dtype=np.uint8).reshape(16, 1, 4, 4)[0]  # every byte appears below
    pixels[1:17] = np.arange(256, dtype=np.uint8).reshape(16, 1, 4, 4)
    text = rng.integers(0, 5, size=(23, 6))
    mods = [Modality("image", (1, 4, 4), "laplace", {"scale": 0.1}),
            Modality("text", (6,), "categorical", {"num_categories": 5})]
    return mods, pixels, text, rng.integers(0, 3, size=23)


def test_bytes_decode_to_the_floats_of_the_float_data_set(byte_images):
    """uint8 storage gives bit for bit the batches of the float32 data set built as the sources
    build it, (bytes / 255.0).astype(float32), for all 256 byte values."""
    mods, pixels, text, labels = byte_images
    floats = MultimodalDataset(mods, {"image": torch.tensor((pixels / 255.0).astype(np.float32)),
                                      "text": torch.tensor(text)}, labels=torch.tensor(labels))
    stored = StoredDataset(mods, {"image": torch.from_numpy(pixels), "text": torch.tensor(text, dtype=torch.uint8)},
                           scales={"image": 255}, labels=torch.tensor(labels))
    assert stored.stored["image"].dtype == torch.uint8 and stored.stored["image"].element_size() == 1
    _same_batches(floats, stored)
    _same_batches(floats, stored, batch_size=100, shuffle=False)
    # missingness, holdout views, feature masks and pickling keep them equal
    _same_batches(mcar(floats, 0.4, seed=2), mcar(stored, 0.4, seed=2))
    _same_batches(feature_mcar(floats, 0.3, seed=5), feature_mcar(stored, 0.3, seed=5))
    for a, b in zip(floats.holdout(0.3, seed=1), stored.holdout(0.3, seed=1)):
        _same_batches(a, b)
    _same_batches(floats, pickle.loads(pickle.dumps(stored)))
    assert torch.equal(stored.data["image"], floats.data["image"])
    assert stored.observed_fraction() == floats.observed_fraction()


def test_stored_refusals(byte_images):
    mods, pixels, text, _ = byte_images
    with pytest.raises(TypeError, match="'image'.*need a scale"):
        StoredDataset(mods, {"image": torch.from_numpy(pixels), "text": torch.tensor(text)})
    with pytest.raises(ValueError, match="'text'.*scale"):
        StoredDataset(mods, {"image": torch.from_numpy(pixels), "text": torch.tensor(text)},
                      scales={"image": 255, "text": 2})
    with pytest.raises(ValueError, match="'image'.*outside the support"):  # bytes / 1 are not in [0, 1]
        StoredDataset([Modality("image", (1, 4, 4), "bernoulli")], {"image": torch.from_numpy(pixels)},
                      scales={"image": 1.0})
    with pytest.raises(ValueError, match="observe no modality"):
        StoredDataset(mods, {"image": torch.from_numpy(pixels), "text": torch.tensor(text)}, scales={"image": 255},
                      obs_mask={"image": torch.zeros(23, dtype=torch.bool), "text": torch.zeros(23, dtype=torch.bool)})
    with pytest.raises(ValueError, match="cannot store values outside"):
        quantize(np.array([0.5, 1.2]))


def test_quantize_error_bound():
    x = np.random.default_rng(1).uniform(0, 1, size=10000)
    codes = quantize(x)
    assert codes.dtype == np.uint8
    assert np.abs(codes / 255.0 - x).max() <= 0.5 / 255 + 1e-12
    exact = np.arange(256) / 255.0
    assert np.array_equal(quantize(exact), np.arange(256))


@pytest.fixture
def digits():
    source = PolyDigits(hidden_dim=8)
    return mcar(source.load("train"), 0.3, seed=1), source.load("test")


@pytest.mark.parametrize("access", ["read", "mmap", "memory"])
def test_prepared_gives_the_in_memory_batches(digits, tmp_path, access):
    train, test = digits
    path = write_prepared(tmp_path / "p", {"train": train, "test": test}, source={"name": "polydigits"},
                          progress=False)
    index = read_index(path)
    assert index["splits"]["train"]["modalities"]["m0"]["dtype"] == "float32"
    assert index["splits"]["test"]["modalities"]["m0"]["mask"] is None  # nothing missing: no mask file
    assert index["splits"]["train"]["modalities"]["m0"]["mask"]["kind"] == "rows"
    opened = open_prepared(path, "train", access=access)
    assert isinstance(opened._stored["m0"], RowFile) == (access == "read")
    _same_batches(train, opened)
    _same_batches(test, Prepared(str(path), access=access).load("test"))
    assert [m.to_dict() for m in Prepared(str(path)).modalities()] == [m.to_dict() for m in train.modalities]
    for a, b in zip(train.holdout(0.1, seed=0), opened.holdout(0.1, seed=0)):
        _same_batches(a, b)
    _same_batches(train, pickle.loads(pickle.dumps(opened)))  # what a spawned DataLoader worker gets
    if access != "memory":  # the path, not the data
        assert len(pickle.dumps(opened)) < 0.5 * sum(v.numel() * 4 for v in train.data.values())
    with pytest.raises(ValueError, match="access must be one of"):
        open_prepared(path, access="lazy")


def test_prepared_uint8_and_streamed_chunks(digits, tmp_path):
    train, _ = digits
    whole = write_prepared(tmp_path / "whole", {"train": train}, dtype="uint8", progress=False)
    chunks = [train.subset(torch.arange(s, min(len(train), s + 500))) for s in range(0, len(train), 500)]
    streamed = write_prepared(tmp_path / "streamed", {"train": (len(train), iter(chunks))}, dtype="uint8",
                              progress=False)
    a, b = open_prepared(whole), open_prepared(streamed)
    _same_batches(a, b)
    assert a.stored["m1"].dtype == torch.uint8
    for m in train.names:  # quantized: within half a level of the floats, missing entries zero
        assert float((a.data[m] - train.data[m]).abs().max()) <= 0.5 / 255 + 1e-6
    # bytes that are bytes stay exactly themselves when prepared again ("auto" keeps the scale)
    again = write_prepared(tmp_path / "again", {"train": a}, progress=False)
    _same_batches(a, open_prepared(again))


def test_prepared_feature_masks_and_mask_kind_change(digits, tmp_path):
    train, _ = digits
    partial = feature_mcar(train, {"m0": 0.3}, seed=2)
    path = write_prepared(tmp_path / "f", {"train": partial}, progress=False)
    assert read_index(path)["splits"]["train"]["modalities"]["m0"]["mask"]["kind"] == "features"
    _same_batches(partial, open_prepared(path))
    first = partial.subset(torch.arange(0, 100))
    rows = {m: first.batch().row_mask(m) for m in first.names}
    keep = rows["m1"].nonzero()[0]
    rows["m0"] = torch.ones(100, dtype=torch.bool)
    rows["m0"][keep] = False  # m0 missing in a row that observes m1: a row mask file starts
    chunks = [first.with_obs_mask(rows), partial.subset(torch.arange(100, 200))]
    with pytest.raises(ValueError, match="feature-level masks after row masks"):
        write_prepared(tmp_path / "g", {"train": (200, chunks)}, progress=False)
    assert not (tmp_path / "g").exists()  # nothing half-written is left
    assert not list(tmp_path.glob(".g.tmp-*"))


def test_prepared_refusals(digits, tmp_path):
    train, _ = digits
    path = write_prepared(tmp_path / "p", {"train": train}, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_prepared(path, {"train": train}, progress=False)
    write_prepared(path, {"train": train.subset(torch.arange(10))}, overwrite=True, progress=False)
    assert len(open_prepared(path)) == 10
    with pytest.raises(ValueError, match="no split 'test'"):
        open_prepared(path, "test")
    with pytest.raises(ValueError, match="dtype must be one of"):
        write_prepared(tmp_path / "q", {"train": train}, dtype="int8")
    with pytest.raises(ValueError, match="announced"):
        write_prepared(tmp_path / "q", {"train": (5, [train.subset(torch.arange(10))])}, progress=False)
    with pytest.raises(FileNotFoundError, match="not a prepared data set"):
        Prepared(str(tmp_path / "nothing")).modalities()
    with pytest.raises(ValueError, match="data.path"):
        Prepared().modalities()
    # a truncated array is named
    array = path / "train" / "m0.npy"
    array.write_bytes(array.read_bytes()[:200])
    with pytest.raises(ValueError, match="m0.npy"):
        open_prepared(path)
    index = json.loads((path / "dataset.json").read_text())
    index["format_version"] = 99
    (path / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="format version 99"):
        open_prepared(path)
