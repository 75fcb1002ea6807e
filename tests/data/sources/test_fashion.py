import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pyromv.data import FashionText, MultimodalDataset, NoisyFashion, PolyFashion
from pyromv.data.sources import (
    FASHION_MNIST_ROOT,
    clear_cache,
    fashion_mnist_files,
    load_fashion_mnist,
)
from pyromv.data.sources._text import decode_text
from pyromv.data.sources.fashion import CLASS_NAMES, rotate

from .conftest import write_fashion, write_idx_file


def _stack(ds: MultimodalDataset) -> np.ndarray:
    return np.stack([ds.data[m].numpy()[:, 0] for m in ds.names], 1)  # (N, M, 28, 28)


# ---------------------------------------------------------------- the files
def test_load_reads_the_idx_files(fashion_root):
    root, arrays = fashion_root
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split, str(root))
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])
        assert labels.dtype == np.int64


def test_uncompressed_and_torchvision_layouts(tmp_path):
    flat = tmp_path / "flat"
    arrays = write_fashion(flat, compress=False)
    nested = tmp_path / "tv"
    write_fashion(nested / "FashionMNIST" / "raw", compress=False)
    for root in (flat, nested):
        np.testing.assert_array_equal(load_fashion_mnist("test", str(root))[1], arrays["test"][1])


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz.*\n.*t10k-labels-idx1-ubyte\.gz"
    ):
        fashion_mnist_files("test", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        PolyFashion(root=str(tmp_path)).load("train")
    with pytest.raises(ValueError, match=r"'val'.*'train', 'test'"):
        fashion_mnist_files("val", str(tmp_path))


def test_malformed_files_raise_value_error_naming_them(fashion_root):
    root, arrays = fashion_root
    labels = root / "train-labels-idx1-ubyte.gz"
    # images and labels disagree in number
    write_idx_file(labels, arrays["train"][1][:-1], compress=True)
    with pytest.raises(ValueError, match="labels"):
        load_fashion_mnist("train", str(root))
    # wrong image size
    write_idx_file(labels, arrays["train"][1], compress=True)
    write_idx_file(
        root / "train-images-idx3-ubyte.gz", np.zeros((60, 27, 28), np.uint8), compress=True
    )
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*28, 28"):
        load_fashion_mnist("train", str(root))
    # not an idx file at all
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz"):
        PolyFashion(root=str(root)).load("test")
    # labels outside 0..9
    bad = arrays["test"][1].copy()
    bad[0] = 10
    write_idx_file(root / "t10k-images-idx3-ubyte.gz", arrays["test"][0], compress=True)
    write_idx_file(root / "t10k-labels-idx1-ubyte.gz", bad, compress=True)
    with pytest.raises(ValueError, match="0..9"):
        load_fashion_mnist("test", str(root))


# ---------------------------------------------------------------- PolyFashion
def test_polyfashion_construction(fashion_root):
    root, arrays = fashion_root
    cfg = PolyFashion(root=str(root), num_modalities=3, train_images=0, test_images=0)
    tex = cfg.textures()
    assert tex.shape == (3, 56, 56) and tex.min() >= 0 and tex.max() <= 0.4
    for split in ("train", "test"):
        ds = cfg.load(split)
        images, labels = arrays[split]
        src = cfg.source_indices(split)
        corners = cfg.crop_corners(split)
        assert ds.names == ["m0", "m1", "m2"] and len(ds) == len(images)
        assert all(ds.data[m].shape == (len(ds), 1, 28, 28) for m in ds.names)
        # row i anchors on image i; every entry shows a distinct image of the row's class
        np.testing.assert_array_equal(src[:, 0], np.arange(len(images)))
        np.testing.assert_array_equal(labels[src], np.repeat(ds.labels.numpy()[:, None], 3, 1))
        assert all(len(set(r)) == 3 for r in src.tolist())
        # removing each entry's background crop gives back the garment exactly
        x = _stack(ds)
        for m in range(3):
            backs = np.stack([tex[m, t : t + 28, c : c + 28] for t, c in corners[:, m]])
            d = (x[:, m] - backs) / (1.0 - 2.0 * backs)
            np.testing.assert_allclose(d, images[src[:, m]] / 255.0, atol=2e-5)
        assert x.min() >= 0.0 and x.max() <= 1.0
    # crops move: the background is not one fixed image per modality
    assert len({tuple(c) for c in cfg.crop_corners("train")[:, 0]}) > 10


def test_polyfashion_pool_caps_and_seed(fashion_root):
    root, _ = fashion_root
    cfg = PolyFashion(root=str(root), num_modalities=2, train_images=30, test_images=20, seed=1)
    src = cfg.source_indices("train")
    assert src.shape == (30, 2) and len(set(src[:, 0])) == 30
    assert set(src.ravel()) <= set(src[:, 0])  # the other modalities draw from the pool
    first = _stack(cfg.load("train"))
    clear_cache()
    np.testing.assert_array_equal(
        first,
        _stack(
            PolyFashion(
                root=str(root), num_modalities=2, train_images=30, test_images=20, seed=1
            ).load("train")
        ),
    )
    other = PolyFashion(root=str(root), num_modalities=2, train_images=30, seed=2)
    assert not np.array_equal(first, _stack(other.load("train")))


def test_polyfashion_modalities_and_bad_fields(fashion_root):
    root, _ = fashion_root
    mods = PolyFashion(root=str(root), encoder="conv", decoder="conv", hidden_dim=8).modalities()
    assert [m.name for m in mods] == [f"m{i}" for i in range(5)]
    assert all(m.shape == (1, 28, 28) and m.likelihood == "laplace" for m in mods)
    assert mods[0].encoder.name == "conv" and mods[0].encoder.kwargs == {"hidden_dim": 8}
    for field, value in (
        ("num_modalities", 0),
        ("rows_per_image", 0),
        ("train_images", -1),
        ("hidden_dim", 0),
        ("likelihood_scale", 0.0),
    ):
        with pytest.raises(ValueError, match=field):
            PolyFashion(**{field: value})
    with pytest.raises(ValueError, match="num_modalities"):
        PolyFashion(root=str(root), num_modalities=5, test_images=0).load("test")  # 4 per class


def test_load_does_not_share_memory_with_the_cache(fashion_root):
    root, _ = fashion_root
    cfg = PolyFashion(root=str(root), num_modalities=2)
    ds = cfg.load("test")
    ds.data["m0"].fill_(0.5)
    assert not torch.all(cfg.load("test").data["m0"] == 0.5)


# ---------------------------------------------------------------- FashionText
def test_fashiontext_text_is_the_class_name(fashion_root):
    root, arrays = fashion_root
    cfg = FashionText(root=str(root), text_length=14)
    ds = cfg.load("train")
    images, labels = arrays["train"]
    np.testing.assert_allclose(ds.data["image"].numpy()[:, 0], images / 255.0, atol=1e-6)
    text = decode_text(ds.data["text"].numpy(), cfg.alphabet)
    starts = []
    for t, y in zip(text, labels):
        word = CLASS_NAMES[y].lower()
        assert len(t) == 14 and t.strip() == word
        starts.append(t.index(word[0]) if not t.startswith(" ") else len(t) - len(t.lstrip(" ")))
        assert set(t.replace(word, "", 1)) <= {" "}
    # starts cover 0 .. 14 - len(word): for 'bag' (3 letters) the last start is 11
    bag = [s for s, y in zip(starts, labels) if y == 8]
    assert max(bag) <= 11
    text_mod = ds.modality("text")
    assert text_mod.likelihood == "categorical" and text_mod.shape == (14,)
    assert text_mod.likelihood_kwargs == {"num_categories": len(cfg.alphabet)}
    assert ds.data["text"].dtype == torch.int64


#: each class name in codes of FASHION_ALPHABET, written out by hand (space 0, a = 1 ... z = 26,
#: "-" 27, "/" 28)
CLASS_CODES = {
    0: [20, 27, 19, 8, 9, 18, 20, 28, 20, 15, 16],  # t-shirt/top
    1: [20, 18, 15, 21, 19, 5, 18],  # trouser
    2: [16, 21, 12, 12, 15, 22, 5, 18],  # pullover
    3: [4, 18, 5, 19, 19],  # dress
    4: [3, 15, 1, 20],  # coat
    5: [19, 1, 14, 4, 1, 12],  # sandal
    6: [19, 8, 9, 18, 20],  # shirt
    7: [19, 14, 5, 1, 11, 5, 18],  # sneaker
    8: [2, 1, 7],  # bag
    9: [1, 14, 11, 12, 5, 0, 2, 15, 15, 20],  # ankle boot
}


def test_fashiontext_codes_are_the_literal_expected_ones(fashion_root):
    """Independent of the reader's alphabet and decoder: leading spaces, the class name in the
    literal codes above, trailing spaces."""
    root, arrays = fashion_root
    ds = FashionText(root=str(root), text_length=14).load("train")
    _, labels = arrays["train"]
    assert len(set(labels.tolist())) > 1
    for row, y in zip(ds.data["text"].tolist(), labels.tolist()):
        word = CLASS_CODES[y]
        start = next(i for i, c in enumerate(row) if c != 0)
        assert row == [0] * start + word + [0] * (14 - start - len(word)), (row, y)


def test_fashiontext_bad_text_settings():
    with pytest.raises(ValueError, match="t-shirt/top"):
        FashionText(text_length=10)
    with pytest.raises(ValueError, match="outside the alphabet"):
        FashionText(alphabet=" abc")


# ---------------------------------------------------------------- NoisyFashion
def test_rotate_against_rot90():
    x = np.random.default_rng(0).random((3, 28, 28))
    np.testing.assert_allclose(rotate(x, [90.0] * 3), np.rot90(x, 1, axes=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(rotate(x, [-90.0] * 3), np.rot90(x, -1, axes=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(rotate(x, [0.0] * 3), x, atol=1e-12)
    angles = np.array([10.0, -33.0, 45.0])
    np.testing.assert_array_equal(rotate(x, angles, chunk=2), rotate(x, angles))


def test_noisyfashion_views(fashion_root):
    root, arrays = fashion_root
    images, labels = arrays["train"]
    plain = NoisyFashion(root=str(root), max_angle=0.0, noise=0.0)
    ds = plain.load("train")
    src = plain.source_indices("train")
    np.testing.assert_allclose(ds.data["view1"].numpy()[:, 0], images[src[:, 0]] / 255.0, atol=1e-6)
    np.testing.assert_allclose(ds.data["view2"].numpy()[:, 0], images[src[:, 1]] / 255.0, atol=1e-6)
    assert np.all(src[:, 0] != src[:, 1]) and np.array_equal(labels[src[:, 0]], labels[src[:, 1]])

    noisy = NoisyFashion(root=str(root), noise=0.5, max_angle=30.0)
    ds = noisy.load("train")
    src = noisy.source_indices("train")
    clean = images[src[:, 1]] / 255.0
    v2 = ds.data["view2"].numpy()[:, 0]
    added = v2 - clean
    below = v2 < 1.0 - 1e-6  # not truncated
    assert added.min() >= -1e-6 and added[below].max() <= 0.5 + 1e-6
    assert 0.2 < added[below].mean() < 0.3  # E[U(0, 0.5)] = 0.25, minus the truncated pixels
    angles = noisy.angles("train")
    assert np.abs(angles).max() <= 30.0 and np.abs(angles).std() > 5.0
    v1 = ds.data["view1"].numpy()[:, 0]
    np.testing.assert_allclose(v1, rotate(images[src[:, 0]] / 255.0, angles).clip(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="max_angle"):
        NoisyFashion(max_angle=-1.0)


# ---------------------------------------------------------------- the real files
def _real_files() -> Path:
    root = Path(FASHION_MNIST_ROOT)
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"Fashion-MNIST not installed in {root} (apt-get install dataset-fashion-mnist)"
        )
    return root


def test_real_fashion_mnist_files():
    _real_files()
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split)  # no root: the Debian location
        assert images.shape == (n, 28, 28)
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n // 10] * 10)
    ds = PolyFashion(train_images=200, test_images=100).load("test")
    assert len(ds) == 100 and set(ds.labels.tolist()) <= set(range(10))


# ---------------------------------------------------------------- the command line
def test_every_source_is_a_hydra_data_option():
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    from pyromv.cli.config import DATA_SOURCES, register_configs

    register_configs()
    expected = {
        "polyfashion",
        "fashiontext",
        "noisyfashion",
        "mnist_svhn",
        "mnist_svhn_text",
        "polymnist",
        "translated_polymnist",
        "mhd",
        "cub",
        "celeba",
        "linnerud",
        "diabetes",
    }
    assert expected <= set(DATA_SOURCES)
    with initialize(version_base=None):
        for name in expected:
            cfg = compose("train", overrides=[f"data={name}"])
            assert isinstance(OmegaConf.to_object(cfg.data), DATA_SOURCES[name])


def test_pyromv_train_on_polyfashion_files(fashion_root, tmp_path):
    import json

    from hydra import compose, initialize

    from pyromv.cli.train import run

    root, _ = fashion_root
    with initialize(version_base=None):
        cfg = compose(
            "train",
            overrides=[
                "data=polyfashion",
                f"data.root={root}",
                "data.num_modalities=2",
                "data.hidden_dim=16",
                "trainer.epochs=1",
                "trainer.progress=false",
                "model.latent_dim=4",
                "evaluate=false",
            ],
        )
    metrics = run(cfg, "mvae", "polyfashion", tmp_path / "out")
    assert math.isfinite(metrics["test_elbo"]) and metrics["test_rows"] == 40
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["data"] == "polyfashion"
    assert (tmp_path / "out" / "cross_generation.png").read_bytes()[:4] == b"\x89PNG"
