import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pyromv.data import MultimodalDataset, PolyDigits
from pyromv.data.sources import polydigits
from pyromv.nn import build_decoder, build_encoder


@pytest.fixture(scope="module")
def digits():
    raw = load_digits()
    return raw.images / 16.0, raw.target


def _recover(x: torch.Tensor, backs: np.ndarray) -> np.ndarray:
    """Invert ``x = b (1 - d) + (1 - b) d`` for every modality: ``(N, M, 8, 8)`` digits."""
    b = backs[None]
    return (x.numpy()[:, :, 0] - b) / (1.0 - 2.0 * b)


def _stack(ds: MultimodalDataset) -> torch.Tensor:
    return torch.stack([ds.data[m] for m in ds.names], 1)  # (N, M, 1, 8, 8)


@pytest.mark.parametrize("split", ["train", "test"])
def test_shapes_range_and_labels(split):
    cfg = PolyDigits()
    ds = cfg.load(split)
    assert isinstance(ds, MultimodalDataset)
    assert ds.names == ["m0", "m1", "m2"]
    n = len(ds)
    for m in ds.names:
        x = ds.data[m]
        assert x.shape == (n, 1, 8, 8)
        assert x.dtype == torch.get_default_dtype()
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert ds.obs_mask[m].all()
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
    assert set(ds.labels.tolist()) == set(range(10))


def test_split_sizes_stratified(digits):
    cfg = PolyDigits(test_fraction=0.2)
    train, test = cfg.load("train"), cfg.load("test")
    assert len(train) + len(test) == 1797
    counts = np.bincount(digits[1], minlength=10)
    test_counts = np.bincount(test.labels.numpy(), minlength=10)
    np.testing.assert_array_equal(test_counts, np.round(0.2 * counts).astype(int))


def test_likelihood_scale_only_for_location_scale_heads():
    (mod, *_) = PolyDigits(likelihood="continuous_bernoulli").modalities()
    assert mod.likelihood_kwargs == {}
    (mod, *_) = PolyDigits(likelihood="normal", likelihood_scale=0.2).modalities()
    assert mod.likelihood_kwargs == {"scale": 0.2}


def test_modality_specs():
    mods = PolyDigits(num_modalities=4, hidden_dim=16).modalities()
    assert [m.name for m in mods] == ["m0", "m1", "m2", "m3"]
    for mod in mods:
        assert mod.shape == (1, 8, 8)
        assert mod.likelihood == "laplace"
        assert mod.likelihood_kwargs == {"scale": 0.1}
        assert mod.encoder.name == "mlp" and mod.decoder.name == "mlp"
        assert list(mod.encoder.kwargs["hidden_dims"]) == [16, 16]


@pytest.mark.parametrize("net", ["mlp", "conv", "linear"])
def test_network_specs_build(net):
    mod = PolyDigits(encoder=net, decoder=net, hidden_dim=8).modalities()[0]
    enc = build_encoder(mod.encoder.name, mod.encoder.kwargs, mod.shape, 2)
    dec = build_decoder(mod.decoder.name, mod.decoder.kwargs, 2, mod.shape)
    loc, scale = enc(torch.rand(5, *mod.shape))
    assert loc.shape == scale.shape == (5, 2)
    assert dec(loc).shape == (5, *mod.shape)


def test_deterministic_and_seeded():
    first = _stack(PolyDigits(seed=3).load("test"))
    polydigits._build.cache_clear()  # rebuild from scratch, not from the cache
    again = PolyDigits(seed=3).load("test")
    assert torch.equal(first, _stack(again))
    other = PolyDigits(seed=4).load("test")
    assert not torch.equal(first, _stack(other))
    assert not np.array_equal(
        PolyDigits(seed=3).backgrounds(), PolyDigits(seed=4).backgrounds()
    )


def test_load_returns_independent_copies():
    cfg = PolyDigits()
    ds = cfg.load("test")
    ds.data["m0"].fill_(0.5)
    assert not torch.all(cfg.load("test").data["m0"] == 0.5)


def test_train_and_test_use_disjoint_images(digits):
    cfg = PolyDigits()
    src_train, src_test = cfg.source_indices("train"), cfg.source_indices("test")
    assert not set(src_train.ravel()) & set(src_test.ravel())
    # the pixels agree: remove the background and find the source image again
    backs = cfg.backgrounds()
    images = digits[0]
    for split, src in (("train", src_train), ("test", src_test)):
        rec = _recover(_stack(cfg.load(split)), backs)
        np.testing.assert_allclose(rec, images[src], atol=1e-5)
    # and no recovered test image equals any train image
    key = lambda d: {row.tobytes() for row in np.round(d * 16).astype(np.int8).reshape(-1, 64)}  # noqa: E731
    train_keys = key(_recover(_stack(cfg.load("train")), backs))
    test_keys = key(_recover(_stack(cfg.load("test")), backs))
    assert not train_keys & test_keys


def test_rows_anchor_on_pool_images_in_order():
    cfg = PolyDigits()
    for split in ("train", "test"):
        src = cfg.source_indices(split)
        assert np.all(np.diff(src[:, 0]) > 0)  # row i shows pool image i in modality 0
        # the pool is exactly the set of images the split shows
        assert set(src.ravel()) <= set(src[:, 0])


@pytest.mark.parametrize("num_modalities", [1, 3, 5])
def test_same_class_different_images(digits, num_modalities):
    cfg = PolyDigits(num_modalities=num_modalities)
    for split in ("train", "test"):
        src = cfg.source_indices(split)
        labels = cfg.load(split).labels.numpy()
        np.testing.assert_array_equal(digits[1][src], np.repeat(labels[:, None], num_modalities, 1))
        distinct = np.array([len(set(row)) for row in src])
        assert np.all(distinct == num_modalities)


def test_rows_per_image_repeats_anchors_with_new_draws():
    one = PolyDigits(rows_per_image=1).source_indices("test")
    two = PolyDigits(rows_per_image=2).source_indices("test")
    n = len(one)
    assert two.shape == (2 * n, 3)
    np.testing.assert_array_equal(two[:n, 0], one[:, 0])
    np.testing.assert_array_equal(two[n:, 0], one[:, 0])
    assert np.mean(np.any(two[:n, 1:] != two[n:, 1:], axis=1)) > 0.9
    assert len(PolyDigits(rows_per_image=2).load("test")) == 2 * n


def test_backgrounds_differ_between_modalities():
    backs = PolyDigits(num_modalities=6).backgrounds()
    assert backs.shape == (6, 8, 8)
    assert backs.min() >= 0.0 and backs.max() <= 0.4
    for i in range(6):
        assert backs[i].std() > 0.05  # a visible pattern, not a flat colour
        for j in range(i):
            assert np.abs(backs[i] - backs[j]).mean() > 0.05
    # a modality's background depends on its index and the seed, not on the modality count
    np.testing.assert_array_equal(PolyDigits(num_modalities=2).backgrounds(), backs[:2])


def test_bad_split_names_allowed_values():
    with pytest.raises(ValueError, match=r"'val'.*'train', 'test'"):
        PolyDigits().load("val")
    with pytest.raises(ValueError, match="'train', 'test'"):
        PolyDigits().source_indices("validation")


@pytest.mark.parametrize(
    "field, value",
    [("num_modalities", 0), ("test_fraction", 0.0), ("test_fraction", 1.0),
     ("rows_per_image", 0), ("hidden_dim", 0)],
)
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=field):
        PolyDigits(**{field: value})


def test_too_many_modalities_for_a_class():
    with pytest.raises(ValueError, match="num_modalities"):
        PolyDigits(num_modalities=100).load("test")


def test_structured_config_round_trip():
    omegaconf = pytest.importorskip("omegaconf")
    conf = omegaconf.OmegaConf.structured(PolyDigits)
    conf.num_modalities = 2
    cfg = omegaconf.OmegaConf.to_object(conf)
    assert cfg == PolyDigits(num_modalities=2)
