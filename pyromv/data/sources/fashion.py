"""Multimodal data sets built from the real Fashion-MNIST files, offline.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) is 70,000 28x28 grey-scale garments in 10
classes, distributed as four idx files. Debian's ``dataset-fashion-mnist`` package installs
them in ``/usr/share/datasets/fashion-mnist/``, which is where the sources look when no
``root`` is given. Three constructions of the multimodal literature are built from them,
each deterministic given its ``seed``:

- :class:`PolyFashion`: PolyMNIST's construction (Sutter et al. 2021) with garments;
- :class:`FashionText`: an image plus the class name as character-level text, like the text
  modality of MNIST-SVHN-Text (Sutter et al. 2020);
- :class:`NoisyFashion`: the two-view "noisy MNIST" construction of multi-view CCA
  (Wang et al. 2015) and DVCCA (Wang et al. 2016).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..dataset import MultimodalDataset
from ..modality import Modality, NetworkSpec
from ..stored import StoredDataset
from ._files import cached as _cached
from ._files import find_first, missing_files, read_idx, stratified_subset
from ._poly import composite, draw_same_class, random_crops, texture
from ._specs import likelihood_kwargs, network_spec
from ._text import FASHION_ALPHABET, check_alphabet, place_words

#: where Debian's ``dataset-fashion-mnist`` package puts the idx files
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
#: the official class names, in label order
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = 10
SPLITS = ("train", "test")
IMAGE_SHAPE = (1, 28, 28)
_PREFIX = {"train": "train", "test": "t10k"}
_SPLIT_SIZE = {"train": 60000, "test": 10000}


def _check_split(split: str, source: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown {source} split {split!r}; choose from {list(SPLITS)}")


def fashion_mnist_files(split: str, root: str = "") -> tuple[Path, Path]:
    """Paths of the images and labels idx files of ``split`` (``"train"`` or ``"test"``).

    Looks in ``root`` (default :data:`FASHION_MNIST_ROOT`) and in ``root/FashionMNIST/raw``
    (torchvision's layout) for ``train-images-idx3-ubyte.gz`` / ``train-labels-idx1-ubyte.gz``
    (``t10k-`` for the test split), compressed or not. Raises ``FileNotFoundError`` naming
    the expected files when they are absent.
    """
    _check_split(split, "Fashion-MNIST")
    base = Path(root).expanduser() if root else Path(FASHION_MNIST_ROOT)
    p = _PREFIX[split]
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        names = [f"{p}-{kind}-ubyte.gz", f"{p}-{kind}-ubyte"]
        path = None
        for folder in (base, base / "FashionMNIST" / "raw"):
            path = path or find_first(folder, names)
        if path is None:
            raise missing_files(
                f"Fashion-MNIST ({split})",
                base,
                [f"{p}-images-idx3-ubyte.gz", f"{p}-labels-idx1-ubyte.gz"],
                hint="(or the same names without .gz, here or in FashionMNIST/raw/); on Debian: "
                "apt-get install dataset-fashion-mnist",
            )
        found.append(path)
    return found[0], found[1]


def load_fashion_mnist(split: str, root: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The ``(N, 28, 28)`` uint8 images and ``(N,)`` int64 labels of a Fashion-MNIST split.

    Raises ``ValueError`` naming the file when an idx file is malformed, holds other shapes,
    or when images and labels disagree in number.
    """
    img_path, lab_path = fashion_mnist_files(split, root)
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{img_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} "
            f"{images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{lab_path}: expected a 1-D uint8 label array, got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(
            f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise ValueError(f"{lab_path}: labels must be 0..9, found {int(labels.max())}")
    return images, labels.astype(np.int64)


def rotate(images: np.ndarray, degrees: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Rotate ``(N, H, W)`` images about their centres by ``degrees`` (counter-clockwise as
    displayed, rows running downwards), bilinear, zeros outside the image."""
    images = np.asarray(images, dtype=np.float64)
    degrees = np.broadcast_to(np.asarray(degrees, dtype=np.float64), (len(images),))
    out = np.empty_like(images)
    for lo in range(0, len(images), chunk):
        x = torch.as_tensor(images[lo : lo + chunk])[:, None]
        t = torch.as_tensor(np.deg2rad(degrees[lo : lo + chunk]))
        cos, sin, zero = torch.cos(t), torch.sin(t), torch.zeros_like(t)
        # output pixel (u, v), in normalised coordinates, samples the input at R(-theta)(u, v)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], -2
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        rotated = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[lo : lo + chunk] = rotated[:, 0].numpy()
    return out


@dataclass
class _FashionSource:
    """Fields and helpers shared by the Fashion-MNIST sources."""

    root: str = ""
    seed: int = 0
    train_images: int = 0
    test_images: int = 0
    likelihood: str = "laplace"
    likelihood_scale: float = 0.1
    encoder: str = "mlp"
    decoder: str = "mlp"
    hidden_dim: int = 256

    _name = "Fashion-MNIST"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a field outside its range."""
        for f in ("train_images", "test_images"):
            if int(getattr(self, f)) < 0:
                raise ValueError(f"{self._name}: {f} must be >= 0 (0: all), got {getattr(self, f)}")
        if int(self.hidden_dim) < 1:
            raise ValueError(f"{self._name}: hidden_dim must be >= 1, got {self.hidden_dim}")
        if not float(self.likelihood_scale) > 0:
            raise ValueError(
                f"{self._name}: likelihood_scale must be positive, got {self.likelihood_scale}"
            )

    def _network(self, name: str) -> NetworkSpec:
        return network_spec(name, self.hidden_dim)

    def _likelihood_kwargs(self) -> dict[str, Any]:
        return likelihood_kwargs(self.likelihood, self.likelihood_scale)

    def _image_modality(self, name: str) -> Modality:
        return Modality(
            name,
            IMAGE_SHAPE,
            likelihood=self.likelihood,
            likelihood_kwargs=self._likelihood_kwargs(),
            encoder=self._network(self.encoder),
            decoder=self._network(self.decoder),
        )

    def _pool(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 images and labels of the split, and the pool (indices into them)."""
        _check_split(split, self._name)
        self.check()
        images, labels = load_fashion_mnist(split, self.root)
        cap = int(self.train_images if split == "train" else self.test_images)
        pool = stratified_subset(labels, cap, self.seed, 0xF0 + SPLITS.index(split))
        return images, labels, pool

    def _cache_key(self, split: str) -> tuple:
        img, lab = fashion_mnist_files(split, self.root)
        stamps = tuple(
            (str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (img, lab)
        )
        return (type(self).__name__, split, dataclasses.astuple(self), stamps)


@dataclass
class PolyFashion(_FashionSource):
    """PolyMNIST's construction with garments: ``M`` modalities of one Fashion-MNIST class.

    PolyMNIST (Sutter, Daunhawer & Vogt, ICLR 2021) shows in each row the same class in ``M``
    modalities, each a different image of that class on a background of its own, with the
    strokes in the inverted background colour. PolyFashion does the same with the real
    Fashion-MNIST garments, read from their idx files (see :func:`fashion_mnist_files`).

    Parameters
    ----------
    num_modalities : int
        ``M``, named ``m0 ... m{M-1}``.
    root : str
        Folder of the idx files; ``""`` means ``/usr/share/datasets/fashion-mnist``.
    seed : int
        Seed of the image subsets, the draws, the backgrounds and their crops.
    train_images, test_images : int
        Size of the pool of images taken from each official split (a seeded subset,
        stratified by class; ``0`` takes all 60,000 / 10,000). Each pool image anchors
        ``rows_per_image`` rows.
    rows_per_image : int
        Rows anchored on each pool image.
    likelihood, likelihood_scale
        Likelihood head of the images (values in ``[0, 1]``) and the fixed scale of the
        ``"laplace"``/``"normal"`` heads.
    encoder, decoder : str
        Registered networks (``"mlp"`` by default: 5 convolutional modalities are slow on
        CPUs; ``"conv"`` is the better image model where there is the compute).
    hidden_dim : int
        Width of the hidden layers.

    Notes
    -----
    Construction, per official split:

    1. Pixels ``0..255`` are scaled to ``d`` in ``[0, 1]``; a seeded subset of the split,
       stratified by class, forms the pool (train and test images stay apart, as in the release).
    2. Row ``i`` anchors on pool image ``i``: its class ``c`` is the label and ``m0`` shows
       it; each other modality shows a different pool image of class ``c``, drawn without
       replacement (the ``M`` images of a row are distinct).
    3. Modality ``m`` owns a 56x56 texture ``T_m`` in ``[0, 0.4]`` (stripes at angle
       ``pi * frac(0.618 m)``, frequency cycling with ``m``, plus a smooth random field);
       each image gets a uniformly placed 28x28 crop ``b`` of ``T_m``, as PolyMNIST crops its
       background photographs, and is composited ``x = b (1 - d) + (1 - b) d``.

    Unlike PolyMNIST the images stay grey-scale ``(1, 28, 28)`` and are not binarised (the
    garments' texture is kept: ``d = (x - b) / (1 - 2 b)`` recovers the image exactly).

    References
    ----------
    .. [1] T. M. Sutter, I. Daunhawer and J. E. Vogt, "Generalized Multimodal ELBO", ICLR 2021.
    .. [2] H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
       Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017.
    """

    num_modalities: int = 5
    train_images: int = 1000
    test_images: int = 500
    rows_per_image: int = 1

    _name = "PolyFashion"
    TEXTURE = 56
    BACKGROUND_MAX = 0.4

    def check(self) -> None:
        super().check()
        if int(self.num_modalities) < 1:
            raise ValueError(f"PolyFashion: num_modalities must be >= 1, got {self.num_modalities}")
        if int(self.rows_per_image) < 1:
            raise ValueError(f"PolyFashion: rows_per_image must be >= 1, got {self.rows_per_image}")

    @property
    def names(self) -> list[str]:
        """Modality names, in order."""
        return [f"m{m}" for m in range(int(self.num_modalities))]

    def modalities(self) -> list[Modality]:
        """One ``(1, 28, 28)`` image modality per ``m``."""
        self.check()
        return [self._image_modality(n) for n in self.names]

    def textures(self) -> np.ndarray:
        """The ``(M, 56, 56)`` background textures ``T_m``."""
        s = self.TEXTURE
        return np.stack(
            [
                texture(
                    m,
                    self.seed,
                    s,
                    s,
                    freqs=(0.06, 0.1, 0.14),
                    max_value=self.BACKGROUND_MAX,
                    grid=4,
                    salt=0xFA,
                )
                for m in range(int(self.num_modalities))
            ]
        )

    def _built(self, split: str) -> dict[str, np.ndarray]:
        images, labels, pool = self._pool(split)

        def build() -> dict[str, np.ndarray]:
            M = int(self.num_modalities)
            rng = np.random.default_rng([int(self.seed), 0xFA5, SPLITS.index(split)])
            src = draw_same_class(
                pool, labels, M, int(self.rows_per_image), rng, NUM_CLASSES, "PolyFashion"
            )
            tex = self.textures()
            x = np.empty(src.shape + (28, 28), dtype=np.float32)
            corners = np.empty(src.shape + (2,), dtype=np.int64)
            for m in range(M):
                backs, corners[:, m] = random_crops(tex[m], len(src), 28, 28, rng)
                x[:, m] = composite(images[src[:, m]] / 255.0, backs)
            return {"images": x, "labels": labels[src[:, 0]], "source": src, "corners": corners}

        return _cached(self._cache_key(split), build)

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` split, fully observed, with class labels."""
        built = self._built(split)
        data = {n: torch.tensor(built["images"][:, m, None]) for m, n in enumerate(self.names)}
        return MultimodalDataset(self.modalities(), data, labels=torch.tensor(built["labels"]))

    def source_indices(self, split: str) -> np.ndarray:
        """``(N, M)`` indices into the split's idx files of the garment each entry shows."""
        return self._built(split)["source"].copy()

    def crop_corners(self, split: str) -> np.ndarray:
        """``(N, M, 2)`` top-left corners (row, column) in ``T_m`` of each entry's background."""
        return self._built(split)["corners"].copy()


@dataclass
class FashionText(_FashionSource):
    """A garment image and its class name as character-level text.

    Like the text modality of MNIST-SVHN-Text (Sutter, Daunhawer & Vogt, NeurIPS 2020),
    the text is the class name (lower case, e.g. ``"ankle boot"``) written at a random
    position in a sequence of ``text_length`` symbols padded with spaces.

    Modalities: ``image`` ``(1, 28, 28)`` in ``[0, 1]`` and ``text`` ``(text_length,)`` of
    symbol codes, a ``"categorical"`` likelihood over ``len(alphabet)`` symbols (the
    encoder sees one-hot rows).

    Parameters
    ----------
    text_length : int
        Symbols per text (at least 11, the longest name ``"t-shirt/top"``).
    alphabet : str
        The symbols; a symbol's code is its position. Must contain the space.
    text_encoder, text_decoder : str
        Networks of the text (``"mlp"`` on the one-hot symbols).
    root, seed, train_images, test_images, likelihood, likelihood_scale, encoder, decoder,
    hidden_dim
        As in :class:`PolyFashion` (``encoder``/``decoder`` are the image's).

    Notes
    -----
    Each image of the pool (a seeded class-stratified subset of the official split, all of it for
    ``*_images = 0``) is one row; its start position is drawn uniformly from
    ``0 .. text_length - len(name)`` with a generator seeded by ``seed`` and the split, and
    is fixed (the original redraws it at every access).
    """

    train_images: int = 0
    test_images: int = 0
    text_length: int = 16
    alphabet: str = FASHION_ALPHABET
    text_encoder: str = "mlp"
    text_decoder: str = "mlp"

    _name = "FashionText"

    @staticmethod
    def words() -> list[str]:
        """The class names as written in the text, in label order."""
        return [c.lower() for c in CLASS_NAMES]

    def check(self) -> None:
        super().check()
        check_alphabet(self.alphabet, self.words(), int(self.text_length), "FashionText")

    def modalities(self) -> list[Modality]:
        """The data set's modality specs (shape, likelihood, networks), after checking its files."""
        self.check()
        text = Modality(
            "text",
            (int(self.text_length),),
            likelihood="categorical",
            likelihood_kwargs={"num_categories": len(self.alphabet)},
            encoder=self._network(self.text_encoder),
            decoder=self._network(self.text_decoder),
        )
        return [self._image_modality("image"), text]

    def _built(self, split: str) -> dict[str, np.ndarray]:
        images, labels, pool = self._pool(split)

        def build() -> dict[str, np.ndarray]:
            rng = np.random.default_rng([int(self.seed), 0x7E7, SPLITS.index(split)])
            codes, starts = place_words(
                self.words(), labels[pool], int(self.text_length), self.alphabet, rng
            )
            return {
                "images": images[pool],  # bytes: decoded to / 255 batch by batch
                "text": codes,
                "labels": labels[pool],
                "source": pool,
                "starts": starts,
            }

        return _cached(self._cache_key(split), build)

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` split, fully observed, with class labels."""
        b = self._built(split)
        data = {"image": torch.tensor(b["images"][:, None]), "text": torch.tensor(b["text"])}
        # the image bytes stay bytes (a quarter of the memory); batches see image / 255 in float
        return StoredDataset(self.modalities(), data, scales={"image": 255.0}, labels=torch.tensor(b["labels"]))

    def source_indices(self, split: str) -> np.ndarray:
        """``(N,)`` indices into the split's idx files of each row's image."""
        return self._built(split)["source"].copy()


@dataclass
class NoisyFashion(_FashionSource):
    """Two views of a garment class: a rotated image and another image with noise.

    The "noisy MNIST" construction of deep multi-view CCA (Wang, Arora, Livescu & Bilmes,
    ICML 2015), also used by DVCCA (Wang, Yan, Lee & Livescu 2016), with Fashion-MNIST:

    - ``view1``: the row's image rotated by an angle uniform in ``[-max_angle, max_angle]``
      degrees (bilinear, zero fill);
    - ``view2``: a *different* image of the same class with independent uniform noise
      ``u ~ U[0, noise]`` added to every pixel, truncated: ``min(d + u, 1)``.

    The two views share only the class, so the shared latent should carry the class and the
    angle, the noise and the garment's details stay private.

    Parameters
    ----------
    max_angle : float
        Largest rotation, in degrees (45 in the papers).
    noise : float
        Upper end of the uniform pixel noise (1 in the papers).
    root, seed, train_images, test_images, likelihood, likelihood_scale, encoder, decoder,
    hidden_dim
        As in :class:`PolyFashion`.

    Notes
    -----
    Row ``i`` anchors on pool image ``i`` (view 1); view 2's image is drawn uniformly among
    the other pool images of its class. Angles, partners and noise come from a generator
    seeded by ``seed`` and the split.
    """

    train_images: int = 0
    test_images: int = 0
    max_angle: float = 45.0
    noise: float = 1.0

    _name = "NoisyFashion"

    def check(self) -> None:
        super().check()
        if not 0.0 <= float(self.max_angle) <= 180.0:
            raise ValueError(f"NoisyFashion: max_angle must be in [0, 180], got {self.max_angle}")
        if not float(self.noise) >= 0.0:
            raise ValueError(f"NoisyFashion: noise must be >= 0, got {self.noise}")

    def modalities(self) -> list[Modality]:
        """The data set's modality specs (shape, likelihood, networks), after checking its files."""
        self.check()
        return [self._image_modality("view1"), self._image_modality("view2")]

    def _built(self, split: str) -> dict[str, np.ndarray]:
        images, labels, pool = self._pool(split)

        def build() -> dict[str, np.ndarray]:
            rng = np.random.default_rng([int(self.seed), 0x2C, SPLITS.index(split)])
            src = draw_same_class(pool, labels, 2, 1, rng, NUM_CLASSES, "NoisyFashion")
            a = float(self.max_angle)
            angles = rng.uniform(-a, a, size=len(src))
            view1 = rotate(images[src[:, 0]] / 255.0, angles).clip(0.0, 1.0)
            u = rng.uniform(0.0, 1.0, size=(len(src), 28, 28)) * float(self.noise)
            view2 = np.minimum(images[src[:, 1]] / 255.0 + u, 1.0)
            return {
                "view1": view1.astype(np.float32),
                "view2": view2.astype(np.float32),
                "labels": labels[src[:, 0]],
                "source": src,
                "angles": angles,
            }

        return _cached(self._cache_key(split), build)

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` split, fully observed, with class labels."""
        b = self._built(split)
        data = {v: torch.tensor(b[v][:, None]) for v in ("view1", "view2")}
        return MultimodalDataset(self.modalities(), data, labels=torch.tensor(b["labels"]))

    def source_indices(self, split: str) -> np.ndarray:
        """``(N, 2)`` indices into the split's idx files: view 1's image, view 2's image."""
        return self._built(split)["source"].copy()

    def angles(self, split: str) -> np.ndarray:
        """``(N,)`` rotation of view 1, in degrees."""
        return self._built(split)["angles"].copy()
