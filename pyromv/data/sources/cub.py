"""CUB Image-Captions (the MMVAE version of Caltech-UCSD Birds with Reed et al.'s captions)."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..dataset import MultimodalDataset
from ..modality import Modality, NetworkSpec
from ._files import cached, missing_files, read_image, resolve_root, seeded_subset
from ._specs import likelihood_kwargs, network_spec

SPLITS = ("train", "test")
SPECIAL_TOKENS = ("<exc>", "<pad>", "<eos>")
_TEXT_FILES = {"train": "text_trainvalclasses.txt", "test": "text_testclasses.txt"}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(caption: str) -> list[str]:
    """Lower-case words (with an optional ``'s``-style suffix) and single punctuation marks."""
    return _TOKEN.findall(caption.lower())


def read_captions(path: Path) -> list[str]:
    """The non-empty lines of a caption file, one caption per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_vocabulary(captions: list[str], min_occurrence: int) -> list[str]:
    """``<exc>, <pad>, <eos>`` then every token occurring more than ``min_occurrence`` times,
    in order of first appearance (MMVAE's rule: ``count > min_occ``)."""
    counts = Counter(t for c in captions for t in tokenize(c))
    words = [w for w in counts if counts[w] > min_occurrence and w not in SPECIAL_TOKENS]
    return [*SPECIAL_TOKENS, *words]


def encode_captions(captions: list[str], vocabulary: list[str], length: int) -> np.ndarray:
    """``(N, length)`` token codes: the first ``length - 1`` tokens, ``<eos>``, then ``<pad>``;
    tokens outside the vocabulary become ``<exc>``."""
    index = {w: i for i, w in enumerate(vocabulary)}
    exc, pad, eos = (index[t] for t in SPECIAL_TOKENS)
    out = np.full((len(captions), length), pad, dtype=np.int64)
    for r, c in enumerate(captions):
        codes = [index.get(t, exc) for t in tokenize(c)[: length - 1]] + [eos]
        out[r, : len(codes)] = codes
    return out


@dataclass
class CUBImageCaptions:
    """CUB Image-Captions as in MMVAE (Shi et al. 2019): a bird photo and one of its captions.

    Files (the layout MMVAE's code reads, ``data/cub/``): ``<root>/train/<class>/*.jpg`` and
    ``<root>/test/<class>/*.jpg`` (torchvision ``ImageFolder`` order: classes sorted, files
    sorted), and ``<root>/text_trainvalclasses.txt`` / ``<root>/text_testclasses.txt`` with
    one caption per line, ``captions_per_image`` consecutive lines per image in that order.

    Modalities: ``image`` ``(3, image_size, image_size)`` in ``[0, 1]`` (resized, bilinear)
    and ``caption`` ``(max_length,)`` token codes with a ``"categorical"`` likelihood over
    the vocabulary. Labels: the class (folder) index.

    Parameters
    ----------
    root : str
        The folder described above; ``""`` means ``$PYROMV_DATA/cub`` (else ``./data/cub``).
    image_size : int
        Side of the resized images (64 in MMVAE).
    max_length : int
        Tokens per caption, ``<eos>`` included (32 in MMVAE).
    min_occurrence : int
        A word enters the vocabulary when it occurs more than this many times in the
        training captions (3 in MMVAE); other words become ``<exc>``.
    captions_per_image : int
        Consecutive caption lines per image (10 in the data set).
    max_rows, seed
        Keep a seeded uniform subset of ``max_rows`` rows (``0``: all; the training set is
        about 88,550 rows, 4.4 GB as float32 at 64x64).
    likelihood, likelihood_scale, image_network, caption_network, hidden_dim
        The image's head and fixed scale (Laplace of scale 0.01 as MMVAE's decoder),
        registered networks and their width.

    Notes
    -----
    Row ``r`` is caption line ``r`` with image ``r // captions_per_image``, as MMVAE's
    resampler pairs them. The vocabulary comes from the training captions (the test split
    reuses it). MMVAE tokenises with NLTK; here a regular expression splits words and
    punctuation (NLTK is not a dependency), so a few rare tokens may differ.

    References
    ----------
    .. [1] Y. Shi, N. Siddharth, B. Paige and P. H. S. Torr, "Variational Mixture-of-Experts
       Autoencoders for Multi-Modal Deep Generative Models", NeurIPS 2019.
    .. [2] S. Reed, Z. Akata, H. Lee and B. Schiele, "Learning Deep Representations of
       Fine-Grained Visual Descriptions", CVPR 2016.
    """

    root: str = ""
    image_size: int = 64
    max_length: int = 32
    min_occurrence: int = 3
    captions_per_image: int = 10
    max_rows: int = 0
    seed: int = 0
    likelihood: str = "laplace"
    likelihood_scale: float = 0.01
    image_network: str = "conv"
    caption_network: str = "mlp"
    hidden_dim: int = 256

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a field outside its range."""
        for f in ("image_size", "captions_per_image", "hidden_dim"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"CUB: {f} must be >= 1, got {getattr(self, f)}")
        if int(self.max_length) < 2:
            raise ValueError(f"CUB: max_length must be >= 2, got {self.max_length}")
        if int(self.max_rows) < 0 or int(self.min_occurrence) < 0:
            raise ValueError("CUB: max_rows and min_occurrence must be >= 0")

    @property
    def root_path(self) -> Path:
        """The folder the data set's files are read from (``root`` or the default data folder)."""
        return resolve_root(self.root, "cub")

    def _caption_file(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown CUB split {split!r}; choose from {list(SPLITS)}")
        path = self.root_path / _TEXT_FILES[split]
        if not path.is_file():
            raise missing_files(
                f"CUB ({split})",
                self.root_path,
                [_TEXT_FILES[split], f"{split}/<class>/<image>.jpg"],
            )
        return path

    def vocabulary(self) -> list[str]:
        """The vocabulary of the training captions (code = position)."""
        path = self._caption_file("train")
        stamp = (str(path), path.stat().st_mtime_ns, path.stat().st_size)
        key = ("CUB-vocabulary", int(self.min_occurrence), stamp)
        out = cached(
            key,
            lambda: {
                "words": np.array(build_vocabulary(read_captions(path), int(self.min_occurrence)))
            },
        )
        return [str(w) for w in out["words"]]

    def _network(self, name: str) -> NetworkSpec:
        return network_spec(name, self.hidden_dim)

    def modalities(self) -> list[Modality]:
        """Reads the training captions to size the vocabulary."""
        self.check()
        s = int(self.image_size)
        kw = likelihood_kwargs(self.likelihood, self.likelihood_scale)
        return [
            Modality(
                "image",
                (3, s, s),
                likelihood=self.likelihood,
                likelihood_kwargs=kw,
                encoder=self._network(self.image_network),
                decoder=self._network(self.image_network),
            ),
            Modality(
                "caption",
                (int(self.max_length),),
                likelihood="categorical",
                likelihood_kwargs={"num_categories": len(self.vocabulary())},
                encoder=self._network(self.caption_network),
                decoder=self._network(self.caption_network),
            ),
        ]

    def image_files(self, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
        """Image paths in ``ImageFolder`` order, their class indices and the class names."""
        folder = self.root_path / split
        if not folder.is_dir():
            raise missing_files(f"CUB ({split})", self.root_path, [f"{split}/<class>/<image>.jpg"])
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        paths, labels = [], []
        for k, c in enumerate(classes):
            files = sorted(
                p for p in (folder / c).iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS
            )
            paths += files
            labels += [k] * len(files)
        if not paths:
            raise missing_files(f"CUB ({split})", folder, ["<class>/<image>.jpg"])
        return paths, np.array(labels, dtype=np.int64), classes

    def _built(self, split: str) -> dict[str, np.ndarray]:
        self.check()
        cap_path = self._caption_file(split)
        paths, labels, _ = self.image_files(split)
        captions = read_captions(cap_path)
        k = int(self.captions_per_image)
        if len(captions) != k * len(paths):
            raise ValueError(
                f"{cap_path}: holds {len(captions)} captions but {self.root_path / split} holds "
                f"{len(paths)} images; expected {k} captions per image ({k * len(paths)})"
            )
        vocab = self.vocabulary()
        keep = seeded_subset(
            len(captions), int(self.max_rows), self.seed, 0xC0 + SPLITS.index(split)
        )
        stamp = (str(cap_path), cap_path.stat().st_mtime_ns, tuple(str(p) for p in paths))

        def build() -> dict[str, np.ndarray]:
            image_rows = keep // k
            used, inverse = np.unique(image_rows, return_inverse=True)
            s = int(self.image_size)
            images = np.stack([read_image(paths[i], "RGB", size=(s, s)) for i in used])
            codes = encode_captions([captions[i] for i in keep], vocab, int(self.max_length))
            return {
                "images": images,
                "image_of_row": inverse,
                "captions": codes,
                "labels": labels[image_rows],
                "rows": keep,
            }

        return cached(("CUB", split, dataclasses.astuple(self), stamp), build)

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` split (one row per caption), with class labels."""
        b = self._built(split)
        images = torch.tensor(b["images"])[torch.tensor(b["image_of_row"])]
        data = {
            "image": images.float().div_(255.0),
            "caption": torch.from_numpy(b["captions"].copy()),
        }
        return MultimodalDataset(
            self.modalities(), data, labels=torch.from_numpy(b["labels"].copy())
        )

    def decode(self, codes: torch.Tensor | np.ndarray) -> list[str]:
        """Captions from ``(N, max_length)`` token codes, stopping at ``<eos>``."""
        vocab = self.vocabulary()
        out = []
        for row in np.asarray(codes):
            words = []
            for c in row:
                w = vocab[int(c)]
                if w == "<eos>":
                    break
                words.append(w)
            out.append(" ".join(words))
        return out
