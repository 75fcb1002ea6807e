"""PolyDigits: a small, offline PolyMNIST built from scikit-learn's 8x8 digits."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..dataset import MultimodalDataset
from ..modality import Modality, NetworkSpec
from ._poly import composite, draw_same_class, texture
from ._specs import likelihood_kwargs, network_spec

SPLITS = ("train", "test")
IMAGE_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
BACKGROUND_MAX = 0.4


@dataclass
class PolyDigits:
    """Configuration and loader of PolyDigits, a miniature PolyMNIST.

    PolyMNIST (Sutter, Daunhawer & Vogt, "Generalized Multimodal ELBO", ICLR 2021) shows
    the same digit class in ``M`` modalities, each modality a different handwritten image
    of that class drawn on a background texture of its own. PolyDigits does the same with
    the 1,797 8x8 digits shipped with scikit-learn (:func:`sklearn.datasets.load_digits`),
    so it needs no download and trains in seconds on a CPU.

    The fields are plain values, so the class doubles as a Hydra structured config.

    Parameters
    ----------
    num_modalities : int
        Number of modalities ``M``, named ``m0 ... m{M-1}``.
    seed : int
        Seed of the split, the draws and the backgrounds.
    test_fraction : float
        Fraction of each class's images that goes to the test pool, in ``(0, 1)``.
    rows_per_image : int
        How many rows anchor on each image of a pool.
    likelihood : str
        Likelihood head of every modality (values are in ``[0, 1]``).
    likelihood_scale : float
        Fixed scale (standard deviation for ``"normal"``) of the ``"normal"``/``"laplace"`` heads.
    encoder, decoder : str
        Registered network names (``"mlp"``, ``"conv"``, ``"linear"`` ...).
    hidden_dim : int
        Width of the hidden layers (two layers for ``"mlp"``, the dense layer of ``"conv"``).

    Notes
    -----
    Construction:

    1. Pixel values ``0..16`` are scaled to ``d`` in ``[0, 1]``.
    2. The images (not the rows) are split into train and test pools, stratified by class
       and seeded by ``seed``; ``test_fraction`` of each class goes to test. No test row
       ever shows an image of the train pool.
    3. Row ``i`` of a split (``i < n``, the pool size) anchors on image ``i`` of the pool:
       its class ``c`` is the label and modality ``m0`` shows the anchor. Each other
       modality shows a different image of class ``c`` from the same pool (the images of
       one row are distinct), drawn with a generator seeded by ``seed`` and the split.
       With ``rows_per_image = r > 1`` the anchors are repeated ``r`` times, each time
       with new draws for the other modalities, giving ``r * n`` rows.
    4. Modality ``m`` has a fixed background ``b_m`` (8x8, values in ``[0, 0.4]``): stripes
       at angle ``pi * frac(m * 0.618...)`` (well spread for every ``M``), at a frequency that
       cycles with ``m``, mixed with a smooth random texture seeded by ``(seed, m)``.
       The digit is composited as in PolyMNIST, strokes in the inverted background colour:
       ``x = b_m * (1 - d) + (1 - b_m) * d``, so ``x`` stays in ``[0, 1]`` and the digit
       can be recovered as ``d = (x - b_m) / (1 - 2 b_m)``.

    The built arrays are cached in memory per configuration, so repeated :meth:`load`
    calls are cheap.

    References
    ----------
    .. [1] T. M. Sutter, I. Daunhawer and J. E. Vogt, "Generalized Multimodal ELBO",
       International Conference on Learning Representations (ICLR), 2021.

    Examples
    --------
    >>> cfg = PolyDigits(num_modalities=3)
    >>> train = cfg.load("train")
    >>> train.names
    ['m0', 'm1', 'm2']
    """

    num_modalities: int = 3
    seed: int = 0
    test_fraction: float = 0.2
    rows_per_image: int = 1
    likelihood: str = "laplace"
    likelihood_scale: float = 0.1
    encoder: str = "mlp"
    decoder: str = "mlp"
    hidden_dim: int = 128

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a field outside its range."""
        if int(self.num_modalities) < 1:
            raise ValueError(f"PolyDigits: num_modalities must be >= 1, got {self.num_modalities}")
        if not 0.0 < float(self.test_fraction) < 1.0:
            raise ValueError(
                f"PolyDigits: test_fraction must be in (0, 1), got {self.test_fraction}"
            )
        if int(self.rows_per_image) < 1:
            raise ValueError(f"PolyDigits: rows_per_image must be >= 1, got {self.rows_per_image}")
        if int(self.hidden_dim) < 1:
            raise ValueError(f"PolyDigits: hidden_dim must be >= 1, got {self.hidden_dim}")

    @property
    def names(self) -> list[str]:
        """Modality names, in order."""
        return [f"m{m}" for m in range(int(self.num_modalities))]

    def _network(self, name: str) -> NetworkSpec:
        return network_spec(name, self.hidden_dim)

    def modalities(self) -> list[Modality]:
        """One :class:`Modality` of shape ``(1, 8, 8)`` per modality, in order."""
        self.check()
        return [
            Modality(
                name,
                IMAGE_SHAPE,
                likelihood=self.likelihood,
                likelihood_kwargs=self._likelihood_kwargs(),
                encoder=self._network(self.encoder),
                decoder=self._network(self.decoder),
            )
            for name in self.names
        ]

    def _likelihood_kwargs(self) -> dict[str, Any]:
        return likelihood_kwargs(self.likelihood, self.likelihood_scale)

    def _built(self) -> dict[str, Any]:
        self.check()
        return _build(
            int(self.num_modalities), int(self.seed), float(self.test_fraction),
            int(self.rows_per_image),
        )

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` split as a fully observed data set, with labels."""
        if split not in SPLITS:
            raise ValueError(f"unknown PolyDigits split {split!r}; choose from {list(SPLITS)}")
        built = self._built()[split]
        dtype = torch.get_default_dtype()
        data = {
            name: torch.tensor(built["images"][:, m], dtype=dtype)
            for m, name in enumerate(self.names)
        }
        labels = torch.tensor(built["labels"], dtype=torch.int64)
        return MultimodalDataset(self.modalities(), data, labels=labels)

    def backgrounds(self) -> np.ndarray:
        """The backgrounds ``b_m``, an ``(M, 8, 8)`` array with values in ``[0, 0.4]``."""
        return self._built()["backgrounds"].copy()

    def source_indices(self, split: str) -> np.ndarray:
        """``(N, M)`` indices into ``load_digits().images`` of the image each entry shows."""
        if split not in SPLITS:
            raise ValueError(f"unknown PolyDigits split {split!r}; choose from {list(SPLITS)}")
        return self._built()[split]["source"].copy()


def background(m: int, seed: int) -> np.ndarray:
    """The 8x8 background of modality ``m`` (values in ``[0, 0.4]``), fixed by ``(m, seed)``."""
    return texture(m, seed, 8, 8, freqs=(0.12, 0.22, 0.32), max_value=BACKGROUND_MAX)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = (np.asarray(raw.images, dtype=np.float64) / 16.0).clip(0.0, 1.0)
    labels = np.asarray(raw.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _split_images(labels: np.ndarray, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Stratified, seeded split of image indices; each part sorted by index."""
    rng = np.random.default_rng([int(seed), 0x5B1])
    train, test = [], []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(max(1, int(round(test_fraction * len(idx)))), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def _draw_rows(
    pool: np.ndarray, labels: np.ndarray, num_modalities: int, rows_per_image: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(rows_per_image * len(pool), M)`` source indices; column 0 is the anchor."""
    return draw_same_class(
        pool, labels, num_modalities, rows_per_image, rng, NUM_CLASSES, "PolyDigits"
    )


@functools.lru_cache(maxsize=8)
def _build(
    num_modalities: int, seed: int, test_fraction: float, rows_per_image: int
) -> dict[str, Any]:
    images, labels = _digits()
    backs = np.stack([background(m, seed) for m in range(num_modalities)])
    backs.setflags(write=False)
    out: dict[str, Any] = {"backgrounds": backs}
    for k, (split, pool) in enumerate(_split_images(labels, test_fraction, seed).items()):
        rng = np.random.default_rng([int(seed), 0xD4A, k])
        source = _draw_rows(pool, labels, num_modalities, rows_per_image, rng)
        digits = images[source]  # (N, M, 8, 8)
        x = composite(digits, backs[None]).astype(np.float32)[:, :, None]  # (N, M, 1, 8, 8)
        row_labels = labels[source[:, 0]]
        for arr in (source, x, row_labels):
            arr.setflags(write=False)
        out[split] = {"images": x, "labels": row_labels, "source": source}
    return out
