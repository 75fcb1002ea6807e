from collections import Counter

import numpy as np
import pytest
import torch

from pyromv.data import MNISTSVHN, MNISTSVHNText
from pyromv.data.sources import clear_cache, match_by_label
from pyromv.data.sources._text import MMJSD_ALPHABET, decode_text
from pyromv.data.sources.mnist_svhn import DIGIT_WORDS

from .conftest import write_idx_file

scipy_io = pytest.importorskip("scipy.io")


def _write(root, seed=0, n_mnist=(40, 20), n_svhn=(30, 25)):
    """torchvision's MNIST layout and SVHN's .mat files with random pixels and labels."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix, nm, ns in (
        ("train", "train", n_mnist[0], n_svhn[0]),
        ("test", "t10k", n_mnist[1], n_svhn[1]),
    ):
        m_lab = rng.integers(0, 10, nm).astype(np.uint8)
        m_img = rng.integers(0, 256, (nm, 28, 28)).astype(np.uint8)
        write_idx_file(raw / f"{prefix}-images-idx3-ubyte", m_img)
        write_idx_file(raw / f"{prefix}-labels-idx1-ubyte", m_lab)
        s_lab = rng.integers(1, 11, (ns, 1)).astype(np.uint8)  # 10 is the digit 0
        s_img = rng.integers(0, 256, (32, 32, 3, ns)).astype(np.uint8)
        scipy_io.savemat(str(root / f"{split}_32x32.mat"), {"X": s_img, "y": s_lab})
        out[split] = (m_img, m_lab.astype(np.int64), s_img, s_lab.ravel().astype(np.int64) % 10)
    return out


@pytest.fixture
def ms_root(tmp_path):
    clear_cache()
    root = tmp_path / "ms"
    arrays = _write(root)
    yield root, arrays
    clear_cache()


def test_match_by_label_is_mmvae_pairing():
    l1 = np.array([0, 1, 0, 1, 1, 0, 2])
    l2 = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    i1, i2 = match_by_label(l1, l2, dm=3, max_d=10, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(l1[i1], l2[i2])
    # class 0: min(3, 3) images each; class 1: min(3, 4) = 3 -> the first three class-1 SVHN
    # indices (0, 1, 5), each used dm = 3 times; class 2 has no partner
    assert len(i1) == 3 * (3 + 3)
    assert Counter(i1.tolist()) == {0: 3, 2: 3, 5: 3, 1: 3, 3: 3, 4: 3}
    assert Counter(i2.tolist()) == {2: 3, 3: 3, 4: 3, 0: 3, 1: 3, 5: 3}
    i1, _ = match_by_label(l1, l2, dm=2, max_d=1, rng=np.random.default_rng(0))
    assert sorted(i1.tolist()) == [0, 0, 1, 1]  # one image per class (the first), twice


def test_mnist_svhn_rows(ms_root):
    root, arrays = ms_root
    cfg = MNISTSVHN(root=str(root), dm=4)
    for split in ("train", "test"):
        m_img, m_lab, s_img, s_lab = arrays[split]
        ds = cfg.load(split)
        pairs = cfg.pairs(split)
        expected = sum(4 * min((m_lab == c).sum(), (s_lab == c).sum()) for c in range(10))
        assert len(ds) == len(pairs) == expected
        np.testing.assert_array_equal(m_lab[pairs[:, 0]], s_lab[pairs[:, 1]])
        np.testing.assert_array_equal(ds.labels.numpy(), m_lab[pairs[:, 0]])
        np.testing.assert_allclose(
            ds.data["mnist"].numpy()[:, 0], m_img[pairs[:, 0]] / 255.0, atol=1e-6
        )
        # SVHN's X is (H, W, C, N): row r shows X[..., pairs[r, 1]] as (C, H, W)
        np.testing.assert_allclose(
            ds.data["svhn"].numpy(),
            s_img[..., pairs[:, 1]].transpose(3, 2, 0, 1) / 255.0,
            atol=1e-6,
        )
        assert max(Counter(pairs[:, 0].tolist()).values()) == 4
    assert [m.shape for m in cfg.modalities()] == [(1, 28, 28), (3, 32, 32)]
    small = MNISTSVHN(root=str(root), dm=4, max_rows=7)
    sub = small.pairs("train")
    assert len(sub) == 7 and {tuple(p) for p in sub} <= {tuple(p) for p in cfg.pairs("train")}


def test_released_index_files_are_used(ms_root):
    root, arrays = ms_root
    m_lab, s_lab = arrays["test"][1], arrays["test"][3]
    i1 = np.array([i for i in range(len(m_lab)) if m_lab[i] in set(s_lab.tolist())][:5])
    i2 = np.array([int(np.flatnonzero(s_lab == m_lab[i])[0]) for i in i1])
    torch.save(torch.from_numpy(i1), root / "test-ms-mnist-idx.pt")
    torch.save(torch.from_numpy(i2), root / "test-ms-svhn-idx.pt")
    np.testing.assert_array_equal(MNISTSVHN(root=str(root)).pairs("test"), np.stack([i1, i2], 1))
    # without them (or when told not to) the pairing is generated
    assert len(MNISTSVHN(root=str(root), use_index_files=False, dm=2).pairs("test")) != 5
    # index files that pair different digits are refused
    bad = i2.copy()
    bad[0] = int(np.flatnonzero(s_lab != m_lab[i1[0]])[0])
    torch.save(torch.from_numpy(bad), root / "test-ms-svhn-idx.pt")
    with pytest.raises(ValueError, match="different digits"):
        MNISTSVHN(root=str(root)).load("test")
    torch.save({"not": "a tensor"}, root / "test-ms-svhn-idx.pt")
    with pytest.raises(ValueError, match=r"test-ms-svhn-idx\.pt"):
        MNISTSVHN(root=str(root)).load("test")
    torch.save(torch.tensor([10_000] * 5), root / "test-ms-svhn-idx.pt")
    with pytest.raises(ValueError, match="indices must lie"):
        MNISTSVHN(root=str(root)).load("test")


def test_missing_and_malformed_files(tmp_path, ms_root):
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw/train-images-idx3-ubyte"):
        MNISTSVHN(root=str(tmp_path / "nothing")).load("train")
    root, _ = ms_root
    (root / "test_32x32.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_32x32\.mat"):
        MNISTSVHN(root=str(root)).load("test")
    (root / "test_32x32.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(ValueError, match=r"test_32x32\.mat"):
        MNISTSVHN(root=str(root)).load("test")
    scipy_io.savemat(
        str(root / "test_32x32.mat"),
        {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))},
    )
    with pytest.raises(ValueError, match=r"\(32, 32, 3, N\)"):
        MNISTSVHN(root=str(root)).load("test")
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        MNISTSVHN(root=str(root)).load("train")


def test_mnist_svhn_text(ms_root):
    root, arrays = ms_root
    cfg = MNISTSVHNText(root=str(root))
    assert cfg.dm == 20 and cfg.text_length == 8 and len(cfg.alphabet) == 71
    ds = cfg.load("test")
    text = decode_text(ds.data["text"].numpy(), MMJSD_ALPHABET)
    for t, y in zip(text, ds.labels.tolist()):
        word = DIGIT_WORDS[y]
        assert len(t) == 8 and t.strip() == word
        assert t.endswith(" ")  # the release never writes into the last position
    starts = {
        t.index(t.strip()) for t, y in zip(text, ds.labels.tolist()) if len(DIGIT_WORDS[y]) == 3
    }
    assert starts == {0, 1, 2, 3, 4}  # 3-letter words start anywhere in 0 .. 8 - 1 - 3
    mods = {m.name: m for m in cfg.modalities()}
    assert mods["text"].likelihood == "categorical"
    assert mods["text"].likelihood_kwargs == {"num_categories": 71}
    with pytest.raises(ValueError, match="text_length"):
        MNISTSVHNText(text_length=5)


#: each digit's word in codes of the release's 71-symbol alphabet, written out by hand
#: (a = 0 ... z = 25; the space is 69)
DIGIT_CODES = {
    0: [25, 4, 17, 14], 1: [14, 13, 4], 2: [19, 22, 14], 3: [19, 7, 17, 4, 4], 4: [5, 14, 20, 17],
    5: [5, 8, 21, 4], 6: [18, 8, 23], 7: [18, 4, 21, 4, 13], 8: [4, 8, 6, 7, 19], 9: [13, 8, 13, 4],
}


def test_mnist_svhn_text_codes_are_the_literal_expected_ones(ms_root):
    """Independent of the reader's alphabet and decoder: every row is spaces (69), the digit's
    word in the literal codes above, spaces, and the last position is a space."""
    root, _ = ms_root
    ds = MNISTSVHNText(root=str(root)).load("test")
    assert len(ds) > 0
    for row, y in zip(ds.data["text"].tolist(), ds.labels.tolist()):
        word = DIGIT_CODES[y]
        start = next(i for i, c in enumerate(row) if c != 69)
        assert row == [69] * start + word + [69] * (8 - start - len(word)), (row, y)
        assert row[-1] == 69
