import gzip

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from pyromv.data.sources import read_idx, write_idx
from pyromv.data.sources._files import read_image, seeded_subset

from .conftest import idx_bytes, write_idx_file


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32"])
def test_read_idx_matches_torchvision_reader(tmp_path, compress, dtype):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = write_idx_file(tmp_path / f"a.idx{'.gz' if compress else ''}", array, compress)
    got = read_idx(path)
    np.testing.assert_array_equal(got, array)
    assert not got.flags.writeable
    # an independent reader of the format (torchvision's) agrees on the raw file
    raw = tmp_path / "raw.idx"
    raw.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_sn3_pascalvincent_tensor(str(raw)).numpy(), array)


def test_write_idx_round_trip_is_the_format(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "w.idx", array)
    assert (tmp_path / "w.idx").read_bytes() == idx_bytes(array)
    write_idx(tmp_path / "w.idx.gz", array)
    assert gzip.decompress((tmp_path / "w.idx.gz").read_bytes()) == idx_bytes(array)


def test_read_idx_errors_name_the_file(tmp_path):
    good = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    cases = {
        "magic.idx": b"\x01" + good[1:],
        "type.idx": good[:2] + b"\x07" + good[3:],
        "short.idx": good[:-1],
        "long.idx": good + b"\x00",
        "header.idx": good[:6],
        "gzip.idx.gz": b"\x1f\x8b" + b"garbage",
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_idx(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="absent"):
        read_idx(tmp_path / "absent.idx")


def test_read_idx_cache_sees_a_rewritten_file(tmp_path):
    path = write_idx_file(tmp_path / "c.idx", np.zeros(4, dtype=np.uint8))
    assert read_idx(path).sum() == 0
    write_idx_file(path, np.ones(5, dtype=np.uint8))
    assert read_idx(path).tolist() == [1] * 5


def test_read_image_crop_resize_and_errors(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    got = read_image(tmp_path / "x.png", "RGB")
    np.testing.assert_array_equal(got, rgb.transpose(2, 0, 1))
    crop = read_image(tmp_path / "x.png", "RGB", crop=6)
    np.testing.assert_array_equal(crop, rgb[2:8, 3:9].transpose(2, 0, 1))
    assert read_image(tmp_path / "x.png", "L", size=(4, 5)).shape == (1, 4, 5)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png"):
        read_image(tmp_path / "bad.png", "RGB")
    with pytest.raises(ValueError, match="smaller than the crop"):
        read_image(tmp_path / "x.png", "RGB", crop=20)


def test_seeded_subset():
    assert seeded_subset(5, 0, 0, 1).tolist() == [0, 1, 2, 3, 4]
    assert seeded_subset(5, 9, 0, 1).tolist() == [0, 1, 2, 3, 4]
    a = seeded_subset(100, 10, 3, 1)
    assert len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, seeded_subset(100, 10, 3, 1))
    assert not np.array_equal(a, seeded_subset(100, 10, 4, 1))
    assert torch.is_tensor(torch.from_numpy(a))


def test_stratified_subset_keeps_class_shares():
    from pyromv.data.sources._files import stratified_subset

    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    pick = stratified_subset(labels, 20, seed=0, salt=1)
    assert len(pick) == 20 and len(set(pick.tolist())) == 20
    np.testing.assert_array_equal(np.bincount(labels[pick], minlength=4), [10, 6, 3, 1])
    assert np.array_equal(stratified_subset(labels, 0, 0, 1), np.arange(100))
    assert not np.array_equal(pick, stratified_subset(labels, 20, seed=1, salt=1))
