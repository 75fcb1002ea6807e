import numpy as np
import pytest
from PIL import Image

from pyromv.data import PolyMNIST, TranslatedPolyMNIST
from pyromv.data.sources import clear_cache


def _write(split_dir, per_digit=2, modalities=3, seed=0):
    """MoPoE's layout: m<k>/<i>.<digit>.png, one RGB 28x28 image per modality and row."""
    rng = np.random.default_rng(seed)
    images = {}
    for m in range(modalities):
        (split_dir / f"m{m}").mkdir(parents=True)
        for digit in range(10):
            for i in range(per_digit):
                img = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
                Image.fromarray(img).save(split_dir / f"m{m}" / f"{i}.{digit}.png")
                images[(m, f"{i}.{digit}.png")] = img
    return images


@pytest.fixture
def poly_root(tmp_path):
    clear_cache()
    root = tmp_path / "PolyMNIST"
    train = _write(root / "train", per_digit=3)
    test = _write(root / "test", per_digit=2, seed=1)
    yield root, {"train": train, "test": test}
    clear_cache()


def test_rows_pair_by_file_name(poly_root):
    root, images = poly_root
    cfg = PolyMNIST(root=str(root), num_modalities=3)
    for split, per_digit in (("train", 3), ("test", 2)):
        ds = cfg.load(split)
        names = cfg.file_names(split)
        assert len(ds) == 10 * per_digit
        assert names[:per_digit] == [f"{i}.0.png" for i in range(per_digit)]  # (digit, index) order
        np.testing.assert_array_equal(ds.labels.numpy(), [int(n.split(".")[1]) for n in names])
        for m in range(3):
            x = ds.data[f"m{m}"]
            assert x.shape == (len(ds), 3, 28, 28)
            expected = (
                np.stack([images[split][(m, n)] for n in names]).transpose(0, 3, 1, 2) / 255.0
            )
            np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    assert [m.shape for m in cfg.modalities()] == [(3, 28, 28)] * 3
    sub = PolyMNIST(root=str(root), num_modalities=3, max_rows=4).file_names("train")
    assert len(sub) == 4 and set(sub) <= set(cfg.file_names("train"))


def test_missing_and_malformed_layouts(tmp_path, poly_root):
    with pytest.raises(FileNotFoundError, match=r"m0/<index>\.<digit>\.png"):
        PolyMNIST(root=str(tmp_path / "none")).load("train")
    root, _ = poly_root
    with pytest.raises(FileNotFoundError, match="m3"):  # the files hold 3 modalities, not 5
        PolyMNIST(root=str(root)).load("train")
    (root / "test" / "m1" / "0.4.png").unlink()
    with pytest.raises(ValueError, match=r"0\.4\.png is missing from .*m1"):
        PolyMNIST(root=str(root), num_modalities=3).load("test")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(root / "train" / "m0" / "seven.png")
    with pytest.raises(ValueError, match=r"seven\.png.*<index>\.<digit>\.png"):
        PolyMNIST(root=str(root), num_modalities=3).load("train")
    (root / "train" / "m0" / "seven.png").unlink()
    (root / "train" / "m2" / "1.1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"m2/1\.1\.png"):
        PolyMNIST(root=str(root), num_modalities=3).load("train")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "m2" / "1.1.png")
    with pytest.raises(ValueError, match="28x28"):
        PolyMNIST(root=str(root), num_modalities=3).load("train")


def test_translated_polymnist_folder_names(tmp_path):
    clear_cache()
    base = tmp_path / "tr"
    sub = base / "Translated_MMNIST_scale_75_translated_True"
    _write(sub / "test", per_digit=1, modalities=2)
    cfg = TranslatedPolyMNIST(root=str(base), num_modalities=2)
    assert cfg.root_path == sub and len(cfg.load("test")) == 10
    direct = TranslatedPolyMNIST(root=str(sub), num_modalities=2)
    assert direct.root_path == sub
    with pytest.raises(ValueError, match="'train', 'test'"):
        cfg.load("validation")
    clear_cache()
