"""MNIST-SVHN (Shi et al. 2019) and MNIST-SVHN-Text (Sutter et al. 2020) from local files.

MNIST is read through :class:`torchvision.datasets.MNIST` (``download=False``) from
torchvision's layout, ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``;
SVHN from the release's MATLAB files ``<root>/{train,test}_32x32.mat`` (read with SciPy as
torchvision does; torchvision's own SVHN class insists on the release's checksums).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..dataset import MultimodalDataset
from ..modality import Modality, NetworkSpec
from ._files import (
    cached,
    file_stamp,
    load_torch_index,
    missing_files,
    read_idx,
    resolve_root,
    seeded_subset,
)
from ._specs import likelihood_kwargs, network_spec
from ._text import MMJSD_ALPHABET, check_alphabet, place_words

SPLITS = ("train", "test")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _check_split(split: str, source: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown {source} split {split!r}; choose from {list(SPLITS)}")


def mnist_files(root: Path, split: str) -> tuple[Path, Path]:
    """torchvision's MNIST files of ``split`` under ``root``; ``FileNotFoundError`` if absent."""
    raw = root / "MNIST" / "raw"
    p = _MNIST_PREFIX[split]
    names = [f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte"]
    if not all((raw / n).is_file() for n in names):
        raise missing_files(
            f"MNIST ({split})",
            raw,
            names,
            hint="(torchvision's layout: the idx files uncompressed under <root>/MNIST/raw/)",
        )
    return raw / names[0], raw / names[1]


def load_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 28, 28)`` uint8 images and ``(N,)`` int64 labels, read by torchvision."""
    _check_split(split, "MNIST")
    img_path, lab_path = mnist_files(root, split)

    def build() -> dict[str, np.ndarray]:
        from torchvision.datasets import MNIST

        try:
            ds = MNIST(str(root), train=split == "train", download=False)
            images, labels = ds.data.numpy(), ds.targets.numpy().astype(np.int64)
        except Exception as err:  # noqa: BLE001  (torchvision asserts on bad files)
            for path in (img_path, lab_path):
                read_idx(path)  # raises a ValueError naming the malformed file
            raise ValueError(f"MNIST files under {img_path.parent} are malformed: {err!r}") from err
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(
                f"{img_path}: expected images of shape (N, 28, 28), got {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels"
            )
        if len(labels) and not 0 <= labels.min() <= labels.max() <= 9:
            raise ValueError(f"{lab_path}: labels must be 0..9")
        return {"images": images, "labels": labels}

    out = cached(("MNIST", split, file_stamp(img_path, lab_path)), build)
    return out["images"], out["labels"]


def load_svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3, 32, 32)`` uint8 images and ``(N,)`` int64 labels (``10`` read as digit 0)
    from the release's ``{split}_32x32.mat``."""
    _check_split(split, "SVHN")
    path = root / f"{split}_32x32.mat"
    if not path.is_file():
        raise missing_files(
            f"SVHN ({split})",
            root,
            [path.name],
            hint="(the cropped-digits release, format 2, as MATLAB files)",
        )

    def build() -> dict[str, np.ndarray]:
        try:
            import scipy.io
        except ImportError as err:  # pragma: no cover - scipy ships with the test extra
            raise ImportError("reading SVHN's .mat files needs SciPy: pip install scipy") from err
        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as err:  # noqa: BLE001  (scipy raises several types on bad files)
            raise ValueError(f"{path}: not a readable MATLAB file ({err})") from err
        if "X" not in mat or "y" not in mat:
            raise ValueError(
                f"{path}: expected the variables 'X' and 'y', found "
                f"{sorted(k for k in mat if not k.startswith('__'))}"
            )
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            raise ValueError(f"{path}: expected 'X' of shape (32, 32, 3, N), got {x.shape}")
        if x.shape[3] != len(y):
            raise ValueError(f"{path}: 'X' holds {x.shape[3]} images but 'y' {len(y)} labels")
        y = y.astype(np.int64)
        if len(y) and not 1 <= y.min() <= y.max() <= 10:
            raise ValueError(f"{path}: SVHN labels must be 1..10 (10 is the digit 0)")
        return {
            "images": np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8),
            "labels": y % 10,
        }

    out = cached(("SVHN", split, file_stamp(path)), build)
    return out["images"], out["labels"]


def match_by_label(
    labels1: np.ndarray, labels2: np.ndarray, dm: int, max_d: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """MMVAE's pairing of two labelled sets (``rand_match_on_idx`` of Shi et al. 2019).

    For each class ``c``: take the first ``n_c = min(#c in set 1, #c in set 2, max_d)``
    indices of class ``c`` of each set (ascending), then ``dm`` times append a random
    permutation of each list side by side. Each used image appears exactly ``dm`` times;
    the pairs of a class are ``dm * n_c`` rows.
    """
    out1, out2 = [], []
    for c in np.union1d(np.unique(labels1), np.unique(labels2)):
        i1, i2 = np.flatnonzero(labels1 == c), np.flatnonzero(labels2 == c)
        n = min(len(i1), len(i2), int(max_d))
        i1, i2 = i1[:n], i2[:n]
        for _ in range(int(dm)):
            out1.append(i1[rng.permutation(n)])
            out2.append(i2[rng.permutation(n)])
    if not out1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out1), np.concatenate(out2)


@dataclass
class MNISTSVHN:
    """MNIST-SVHN: an MNIST digit and an SVHN house number of the same class (Shi et al. 2019).

    Modalities: ``mnist`` ``(1, 28, 28)`` and ``svhn`` ``(3, 32, 32)``, values in ``[0, 1]``,
    Laplace likelihoods of scale 0.75 (the MMVAE code's). Labels: the digit.

    Parameters
    ----------
    root : str
        Folder with ``MNIST/raw/`` (torchvision's layout), ``train_32x32.mat`` and
        ``test_32x32.mat``; ``""`` means ``$PYROMV_DATA/mnist_svhn`` (else ``./data/mnist_svhn``).
    dm : int
        Pairing count: how many times each used image is paired (MMVAE's ``dm``, 30 in the
        released script ``bin/make-mnist-svhn-idx.py``).
    max_d : int
        At most this many images per class and set are used (10,000 in the release).
    seed : int
        Seed of the pairing (when it is generated) and of ``max_rows``.
    use_index_files : bool
        Read the released pairing, ``{split}-ms-mnist-idx.pt`` and ``{split}-ms-svhn-idx.pt``
        in ``root``, when both exist (the papers' exact rows); otherwise generate it.
    max_rows : int
        Keep a seeded uniform subset of this many rows (``0``: all; the full training set is
        about 1.7 million rows with ``dm = 30``, some 26 GB as float32).
    likelihood, likelihood_scale, mnist_network, svhn_network, hidden_dim
        Likelihood head and fixed scale of both images; registered networks
        (MMVAE used an MLP for MNIST and a CNN for SVHN) and their width.

    References
    ----------
    .. [1] Y. Shi, N. Siddharth, B. Paige and P. H. S. Torr, "Variational Mixture-of-Experts
       Autoencoders for Multi-Modal Deep Generative Models", NeurIPS 2019.
    """

    root: str = ""
    dm: int = 30
    max_d: int = 10000
    seed: int = 0
    use_index_files: bool = True
    max_rows: int = 0
    likelihood: str = "laplace"
    likelihood_scale: float = 0.75
    mnist_network: str = "mlp"
    svhn_network: str = "conv"
    hidden_dim: int = 256

    _name = "MNIST-SVHN"
    _folder = "mnist_svhn"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a field outside its range."""
        for f in ("dm", "max_d", "hidden_dim"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{self._name}: {f} must be >= 1, got {getattr(self, f)}")
        if int(self.max_rows) < 0:
            raise ValueError(f"{self._name}: max_rows must be >= 0 (0: all), got {self.max_rows}")
        if not float(self.likelihood_scale) > 0:
            raise ValueError(
                f"{self._name}: likelihood_scale must be positive, got {self.likelihood_scale}"
            )

    @property
    def root_path(self) -> Path:
        """The folder the data set's files are read from (``root`` or the default data folder)."""
        return resolve_root(self.root, self._folder)

    def _network(self, name: str) -> NetworkSpec:
        return network_spec(name, self.hidden_dim)

    def _image(self, name: str, shape: tuple[int, ...], network: str) -> Modality:
        kwargs = likelihood_kwargs(self.likelihood, self.likelihood_scale)
        return Modality(
            name,
            shape,
            likelihood=self.likelihood,
            likelihood_kwargs=kwargs,
            encoder=self._network(network),
            decoder=self._network(network),
        )

    def modalities(self) -> list[Modality]:
        """The data set's modality specs (shape, likelihood, networks), after checking its files."""
        self.check()
        return [
            self._image("mnist", (1, 28, 28), self.mnist_network),
            self._image("svhn", (3, 32, 32), self.svhn_network),
        ]

    def _index_files(self, split: str) -> tuple[Path, Path] | None:
        root = self.root_path
        files = (root / f"{split}-ms-mnist-idx.pt", root / f"{split}-ms-svhn-idx.pt")
        if self.use_index_files and all(f.is_file() for f in files):
            return files
        return None

    def pairs(self, split: str) -> np.ndarray:
        """``(N, 2)`` row indices into the MNIST and SVHN splits (after ``max_rows``)."""
        return self._built(split)["pairs"].copy()

    def _built(self, split: str) -> dict[str, np.ndarray]:
        _check_split(split, self._name)
        self.check()
        root = self.root_path
        mnist_x, mnist_y = load_mnist(root, split)
        svhn_x, svhn_y = load_svhn(root, split)
        index = self._index_files(split)
        stamps = file_stamp(*mnist_files(root, split), root / f"{split}_32x32.mat", *(index or ()))

        def build() -> dict[str, np.ndarray]:
            if index is not None:
                i1, i2 = (load_torch_index(p) for p in index)
                if len(i1) != len(i2):
                    raise ValueError(f"{index[0]} holds {len(i1)} indices but {index[1]} {len(i2)}")
                for p, i, n in ((index[0], i1, len(mnist_y)), (index[1], i2, len(svhn_y))):
                    if len(i) and (i.min() < 0 or i.max() >= n):
                        raise ValueError(
                            f"{p}: indices must lie in [0, {n}), the size of the split"
                        )
                bad = np.flatnonzero(mnist_y[i1] != svhn_y[i2])
                if len(bad):
                    raise ValueError(
                        f"{index[0]} and {index[1]} pair different digits (first at row {bad[0]}); "
                        "are they from another split?"
                    )
            else:
                rng = np.random.default_rng([int(self.seed), 0x35, SPLITS.index(split)])
                i1, i2 = match_by_label(mnist_y, svhn_y, int(self.dm), int(self.max_d), rng)
            keep = seeded_subset(len(i1), int(self.max_rows), self.seed, 0x36 + SPLITS.index(split))
            pairs = np.stack([i1[keep], i2[keep]], 1)
            return {
                "pairs": pairs,
                "labels": mnist_y[pairs[:, 0]],
                **self._extra(split, mnist_y[pairs[:, 0]]),
            }

        key = (self._name, split, dataclasses.astuple(self), stamps)
        out = dict(cached(key, build))
        out["mnist"], out["svhn"] = mnist_x, svhn_x
        return out

    def _extra(self, split: str, labels: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def _data(self, built: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        pairs = built["pairs"]
        mnist = torch.from_numpy(built["mnist"][pairs[:, 0]]).unsqueeze(1).float().div_(255.0)
        svhn = torch.from_numpy(built["svhn"][pairs[:, 1]]).float().div_(255.0)
        return {"mnist": mnist, "svhn": svhn}

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` split, fully observed, with digit labels."""
        built = self._built(split)
        return MultimodalDataset(
            self.modalities(), self._data(built), labels=torch.from_numpy(built["labels"].copy())
        )


@dataclass
class MNISTSVHNText(MNISTSVHN):
    """MNIST-SVHN-Text (Sutter, Daunhawer & Vogt, NeurIPS 2020): MNIST-SVHN plus the digit's
    English name as character-level text.

    Modalities: ``mnist`` ``(1, 28, 28)``, ``svhn`` ``(3, 32, 32)`` and ``text``
    ``(text_length,)`` symbol codes with a ``"categorical"`` likelihood over the alphabet.

    The text is the word (``"zero"`` ... ``"nine"``) written in a sequence of ``text_length``
    spaces from a start drawn uniformly in ``0 .. text_length - 1 - len(word)`` (the release
    keeps the last symbol a space), with the release's 71-symbol alphabet. The release
    redraws the start at every access; here it is drawn once per row, seeded.

    Parameters
    ----------
    dm : int
        Pairing count (20 in the MNIST-SVHN-Text code, after Shi et al.).
    text_length, alphabet, text_network
        Sequence length (8 in the release), symbols, and the text's registered network.
    root, max_d, seed, use_index_files, max_rows, likelihood, likelihood_scale, mnist_network,
    svhn_network, hidden_dim
        As in :class:`MNISTSVHN` (the same files; ``""`` means ``$PYROMV_DATA/mnist_svhn``).

    References
    ----------
    .. [1] T. M. Sutter, I. Daunhawer and J. E. Vogt, "Multimodal Generative Learning
       Utilizing Jensen-Shannon Divergence", NeurIPS 2020.
    """

    dm: int = 20
    text_length: int = 8
    alphabet: str = MMJSD_ALPHABET
    text_network: str = "mlp"

    _name = "MNIST-SVHN-Text"

    def check(self) -> None:
        super().check()
        check_alphabet(self.alphabet, DIGIT_WORDS, int(self.text_length) - 1, self._name)

    def modalities(self) -> list[Modality]:
        """The data set's modality specs (shape, likelihood, networks), after checking its files."""
        text = Modality(
            "text",
            (int(self.text_length),),
            likelihood="categorical",
            likelihood_kwargs={"num_categories": len(self.alphabet)},
            encoder=self._network(self.text_network),
            decoder=self._network(self.text_network),
        )
        return [*super().modalities(), text]

    def _extra(self, split: str, labels: np.ndarray) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([int(self.seed), 0x7E, SPLITS.index(split)])
        codes, starts = place_words(
            DIGIT_WORDS, labels, int(self.text_length), self.alphabet, rng, last_free=True
        )
        return {"text": codes, "starts": starts}

    def _data(self, built: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {**super()._data(built), "text": torch.from_numpy(built["text"].copy())}
