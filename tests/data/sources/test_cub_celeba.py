import numpy as np
import pytest
from PIL import Image

from pyromv.data import CelebA, CUBImageCaptions
from pyromv.data.sources import clear_cache
from pyromv.data.sources.cub import tokenize

WORDS = [
    "this bird is red with a short beak.",
    "a small bird with black wings.",
    "the bird has a red crown, and a short beak.",
    "this bird is black and red.",
]


def _write_cub(root, seed=0):
    """MMVAE's data/cub: <split>/<class>/*.jpg plus text_<...>classes.txt, 10 lines per image."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, text, classes in (
        ("train", "text_trainvalclasses.txt", ["001.Albatross", "002.Auklet"]),
        ("test", "text_testclasses.txt", ["003.Blackbird"]),
    ):
        lines = []
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{c}_{i}.jpg")
                files.setdefault(split, []).append(root / split / c / f"{c}_{i}.jpg")
                lines += [WORDS[(i + k) % 4] for k in range(10)]
        (root / text).write_text("\n".join(lines) + "\n")
    return files


@pytest.fixture
def cub_root(tmp_path):
    clear_cache()
    root = tmp_path / "cub"
    files = _write_cub(root)
    yield root, files
    clear_cache()


def test_tokenize():
    assert tokenize("The bird's beak, short.") == ["the", "bird's", "beak", ",", "short", "."]


def test_cub_rows_vocabulary_and_images(cub_root):
    root, files = cub_root
    cfg = CUBImageCaptions(root=str(root), image_size=16, max_length=8, min_occurrence=3)
    vocab = cfg.vocabulary()
    counts = {}
    for line in (root / "text_trainvalclasses.txt").read_text().split("\n"):
        for t in tokenize(line):
            counts[t] = counts.get(t, 0) + 1
    assert vocab[:3] == ["<exc>", "<pad>", "<eos>"]
    assert set(vocab[3:]) == {w for w, c in counts.items() if c > 3}
    ds = cfg.load("train")
    assert len(ds) == 40  # 4 images x 10 captions
    np.testing.assert_array_equal(ds.labels.numpy(), np.repeat([0, 0, 1, 1], 10))
    assert ds.data["image"].shape == (40, 3, 16, 16)
    # row r shows image r // 10, resized as PIL does
    for r in (0, 13, 39):
        with Image.open(files["train"][r // 10]) as img:
            ref = np.asarray(img.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(
            ds.data["image"][r].numpy(), ref.transpose(2, 0, 1) / 255.0, atol=1e-6
        )
    lines = [ln for ln in (root / "text_trainvalclasses.txt").read_text().split("\n") if ln]
    decoded = cfg.decode(ds.data["caption"])
    for r in (0, 7, 22):
        expected = [t if t in vocab else "<exc>" for t in tokenize(lines[r])][:7]
        assert decoded[r] == " ".join(expected)
    codes = ds.data["caption"][0].tolist()
    n = min(len(tokenize(lines[0])), 7)
    assert codes[n] == vocab.index("<eos>") and all(
        c == vocab.index("<pad>") for c in codes[n + 1 :]
    )
    mods = {m.name: m for m in cfg.modalities()}
    assert mods["caption"].likelihood_kwargs == {"num_categories": len(vocab)}
    assert len(cfg.load("test")) == 20
    assert len(CUBImageCaptions(root=str(root), image_size=16, max_rows=5).load("train")) == 5


def test_cub_errors(tmp_path, cub_root):
    with pytest.raises(FileNotFoundError, match=r"text_trainvalclasses\.txt"):
        CUBImageCaptions(root=str(tmp_path / "none")).load("train")
    root, files = cub_root
    text = root / "text_testclasses.txt"
    text.write_text("\n".join(text.read_text().split("\n")[:15]))
    with pytest.raises(ValueError, match=r"text_testclasses\.txt: holds 15 captions .* 2 images"):
        CUBImageCaptions(root=str(root)).load("test")
    files["train"][0].write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"001\.Albatross_0\.jpg"):
        CUBImageCaptions(root=str(root), image_size=16).load("train")


ATTRS = ["5_o_Clock_Shadow", "Smiling", "Young"] + [f"A{i}" for i in range(37)]


def _write_celeba(root, n=6, seed=0):
    """The release: img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt."""
    rng = np.random.default_rng(seed)
    (root / "img_align_celeba").mkdir(parents=True)
    values = rng.choice([-1, 1], size=(n, 40))
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (30, 24, 3), dtype=np.uint8)).save(
            root / "img_align_celeba" / name
        )
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in vals) for name, vals in zip(names, values)]
    (root / "list_attr_celeba.txt").write_text(
        f"{n}\n" + " ".join(ATTRS) + " \n" + "\n".join(rows) + "\n"
    )
    part = [0, 0, 0, 1, 2, 2][:n]
    (root / "list_eval_partition.txt").write_text(
        "\n".join(f"{a} {p}" for a, p in zip(names, part)) + "\n"
    )
    return names, (values > 0).astype(np.int64), np.array(part)


def test_celeba_reads_the_release(tmp_path):
    clear_cache()
    names, values, part = _write_celeba(tmp_path / "celeba")
    cfg = CelebA(root=str(tmp_path), image_size=8, crop=20)  # the parent of celeba/ works too
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        ds = cfg.load(split)
        rows = np.flatnonzero(part == code)
        assert len(ds) == len(rows) and ds.data["image"].shape == (len(rows), 3, 8, 8)
        np.testing.assert_array_equal(ds.data["attributes"].numpy(), values[rows])
        np.testing.assert_array_equal(ds.labels.numpy(), values[rows, 1])  # Smiling
    with Image.open(tmp_path / "celeba" / "img_align_celeba" / names[4]) as img:
        ref = np.asarray(
            img.convert("RGB").crop((2, 5, 22, 25)).resize((8, 8), Image.Resampling.BILINEAR)
        )
    np.testing.assert_allclose(
        cfg.load("test").data["image"][0].numpy(), ref.transpose(2, 0, 1) / 255.0, atol=1e-6
    )
    mods = {m.name: m for m in cfg.modalities()}
    assert mods["attributes"].likelihood == "bernoulli" and mods["attributes"].shape == (40,)
    assert cfg.attribute_names() == ATTRS
    with pytest.raises(ValueError, match="label_attribute"):
        CelebA(root=str(tmp_path), label_attribute="Wings").load("train")
    clear_cache()


def test_celeba_errors(tmp_path):
    clear_cache()
    with pytest.raises(FileNotFoundError, match=r"list_attr_celeba\.txt"):
        CelebA(root=str(tmp_path)).load("train")
    root = tmp_path / "celeba"
    _write_celeba(root)
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().split("\n")
    attr.write_text("\n".join(lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:]))
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt: line 4 has 39 values"):
        CelebA(root=str(root)).load("train")
    attr.write_text("\n".join(lines[:3] + [lines[3].replace(" 1", " 0", 1)] + lines[4:]))
    with pytest.raises(ValueError, match="-1 or 1"):
        CelebA(root=str(root)).load("train")
    attr.write_text("\n".join(lines))
    (root / "list_eval_partition.txt").write_text("000001.jpg 7\n")
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt: line 1"):
        CelebA(root=str(root)).load("train")
    clear_cache()


def test_cub_caption_codes_are_the_literal_expected_ones(cub_root):
    """Codes written out by hand from WORDS (not from the reader's tokenizer): with
    ``min_occurrence=10`` the tokens seen 10 times or fewer in the training file ("the", "has",
    "crown", ",": 10 each) are ``<exc>`` = 0; the others get 3, 4, ... in order of first
    appearance; ``<eos>`` = 2 after at most ``max_length - 1`` tokens, then ``<pad>`` = 1."""
    root, _ = cub_root
    cfg = CUBImageCaptions(root=str(root), image_size=16, max_length=10, min_occurrence=10)
    assert cfg.vocabulary() == ["<exc>", "<pad>", "<eos>", "this", "bird", "is", "red", "with", "a", "short",
                                "beak", ".", "small", "black", "wings", "and"]
    codes = cfg.load("train").data["caption"]
    # rows 0..3 of the first image: WORDS[0], WORDS[1], WORDS[2], WORDS[3]
    assert codes[0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 11, 2]  # this bird is red with a short beak .
    assert codes[1].tolist() == [8, 12, 4, 7, 13, 14, 11, 2, 1, 1]  # a small bird with black wings .
    assert codes[2].tolist() == [0, 4, 0, 8, 6, 0, 0, 15, 8, 2]  # the bird has a red crown , and a | short ...
    assert codes[3].tolist() == [3, 4, 5, 13, 15, 6, 11, 2, 1, 1]  # this bird is black and red .
