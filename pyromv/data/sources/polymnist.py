"""PolyMNIST and Translated-PolyMNIST from the folders of their releases.

The MoPoE release (Sutter, Daunhawer & Vogt, ICLR 2021) stores PolyMNIST as PNG files,
``<root>/{train,test}/m<k>/<i>.<digit>.png``: one folder per modality, RGB 28x28 images, and
the same file name in every folder for the images of one row (the creation script draws,
per digit, one permutation per modality and names the ``i``-th image of it ``i.digit.png``).
Translated-PolyMNIST (Daunhawer et al., ICLR 2022) uses the same layout with the digits
scaled down and translated.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dataset import MultimodalDataset
from ..modality import Modality, NetworkSpec
from ._files import cached, missing_files, read_image, resolve_root, seeded_subset
from ._specs import likelihood_kwargs, network_spec

SPLITS = ("train", "test")
_NAME = re.compile(r"^(\d+)\.(\d)\.png$")


def _parse(path: Path) -> tuple[int, int]:
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(
            f"{path}: PolyMNIST file names must read '<index>.<digit>.png' (e.g. '17.3.png')"
        )
    return int(match.group(1)), int(match.group(2))


@dataclass
class PolyMNIST:
    """PolyMNIST: ``M`` modalities of the same digit, each on its own background (MoPoE release).

    Modalities ``m0 ... m{M-1}``, RGB images ``(3, 28, 28)`` in ``[0, 1]``. Labels: the digit.

    Parameters
    ----------
    root : str
        Folder holding ``train/`` and ``test/`` (each with ``m0/ ... m{M-1}/``); ``""`` means
        ``$PYROMV_DATA/PolyMNIST`` (else ``./data/PolyMNIST``).
    num_modalities : int
        ``M`` (5 in the release).
    max_rows : int
        Keep a seeded uniform subset of this many rows (``0``: all 60,000 / 10,000).
    seed : int
        Seed of ``max_rows``.
    likelihood, likelihood_scale
        Likelihood head of the images and the fixed scale of ``"laplace"``/``"normal"``
        (Laplace of scale 0.75 as in MMVAE+'s PolyMNIST code).
    encoder, decoder, hidden_dim
        Registered networks and their width.

    Notes
    -----
    Rows are the file names present in every ``m<k>`` folder, ordered by ``(digit, index)``;
    a file name missing from one folder, a name that does not read ``<index>.<digit>.png``,
    or an image of another size is a ``ValueError`` naming the file. The release pairs rows
    by the position of each file in an unsorted directory listing; pairing by file name is
    what its creation script intended (the same ``i.digit.png`` was written in every folder),
    and it keeps the digit the same across modalities.

    References
    ----------
    .. [1] T. M. Sutter, I. Daunhawer and J. E. Vogt, "Generalized Multimodal ELBO", ICLR 2021.
    """

    root: str = ""
    num_modalities: int = 5
    max_rows: int = 0
    seed: int = 0
    likelihood: str = "laplace"
    likelihood_scale: float = 0.75
    encoder: str = "conv"
    decoder: str = "conv"
    hidden_dim: int = 128

    _name = "PolyMNIST"
    _folder = "PolyMNIST"
    IMAGE_SHAPE = (3, 28, 28)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a field outside its range."""
        if int(self.num_modalities) < 1:
            raise ValueError(
                f"{self._name}: num_modalities must be >= 1, got {self.num_modalities}"
            )
        if int(self.max_rows) < 0:
            raise ValueError(f"{self._name}: max_rows must be >= 0 (0: all), got {self.max_rows}")
        if int(self.hidden_dim) < 1:
            raise ValueError(f"{self._name}: hidden_dim must be >= 1, got {self.hidden_dim}")

    @property
    def names(self) -> list[str]:
        """Modality names, in order."""
        return [f"m{m}" for m in range(int(self.num_modalities))]

    @property
    def root_path(self) -> Path:
        """The folder the data set's files are read from (``root`` or the default data folder)."""
        return resolve_root(self.root, self._folder)

    def _network(self, name: str) -> NetworkSpec:
        return network_spec(name, self.hidden_dim)

    def modalities(self) -> list[Modality]:
        """The data set's modality specs (shape, likelihood, networks), after checking its files."""
        self.check()
        kwargs = likelihood_kwargs(self.likelihood, self.likelihood_scale)
        return [
            Modality(
                n,
                self.IMAGE_SHAPE,
                likelihood=self.likelihood,
                likelihood_kwargs=kwargs,
                encoder=self._network(self.encoder),
                decoder=self._network(self.decoder),
            )
            for n in self.names
        ]

    def split_folder(self, split: str) -> Path:
        """The folder of ``split`` (holding ``m0/ ... m{M-1}/``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown {self._name} split {split!r}; choose from {list(SPLITS)}")
        return self.root_path / split

    def _files(self, split: str) -> tuple[list[str], np.ndarray, list[Path]]:
        """Row file names (sorted by digit, index), their digits, and the modality folders."""
        folder = self.split_folder(split)
        dirs = [folder / n for n in self.names]
        absent = [d for d in dirs if not d.is_dir()]
        if absent:
            raise missing_files(
                f"{self._name} ({split})",
                folder,
                [f"{n}/<index>.<digit>.png" for n in self.names],
                hint=f"(missing folders: {', '.join(str(d) for d in absent)})",
            )
        listings = [sorted(p.name for p in d.glob("*.png")) for d in dirs]
        if not listings[0]:
            raise missing_files(f"{self._name} ({split})", dirs[0], ["<index>.<digit>.png"])
        keys = {name: _parse(dirs[0] / name) for name in listings[0]}
        first = set(listings[0])
        for d, names in zip(dirs[1:], listings[1:]):
            other = set(names)
            if other != first:
                odd = sorted(first ^ other)[0]
                where = d if odd in first else dirs[0]
                raise ValueError(
                    f"{self._name}: the folders {dirs[0]} and {d} hold different file names "
                    f"({odd} is missing from {where}); each row needs one image per modality"
                )
        order = sorted(first, key=lambda n: (keys[n][1], keys[n][0]))
        return order, np.array([keys[n][1] for n in order], dtype=np.int64), dirs

    def _built(self, split: str) -> dict[str, Any]:
        self.check()
        names, digits, dirs = self._files(split)
        keep = seeded_subset(len(names), int(self.max_rows), self.seed, 0x90 + SPLITS.index(split))
        names = [names[i] for i in keep]
        stamps = tuple((str(d), d.stat().st_mtime_ns) for d in dirs)

        def build() -> dict[str, Any]:
            c, h, w = self.IMAGE_SHAPE
            x = np.empty((len(names), len(dirs), c, h, w), dtype=np.uint8)
            for m, d in enumerate(dirs):
                for i, n in enumerate(names):
                    img = read_image(d / n, "RGB" if c == 3 else "L")
                    if img.shape != (c, h, w):
                        raise ValueError(
                            f"{d / n}: expected a {h}x{w} image with {c} channels, got {img.shape}"
                        )
                    x[i, m] = img
            return {"images": x, "labels": digits[keep], "files": np.array(names)}

        return cached((self._name, split, dataclasses.astuple(self), stamps, tuple(names)), build)

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` split, fully observed, with digit labels."""
        b = self._built(split)
        x = b["images"]
        data = {n: torch.tensor(x[:, m]).float().div_(255.0) for m, n in enumerate(self.names)}
        return MultimodalDataset(
            self.modalities(), data, labels=torch.from_numpy(b["labels"].copy())
        )

    def file_names(self, split: str) -> list[str]:
        """The file name of each row (the same in every modality folder)."""
        return [str(n) for n in self._built(split)["files"]]


@dataclass
class TranslatedPolyMNIST(PolyMNIST):
    """Translated-PolyMNIST (Daunhawer et al., ICLR 2022): PolyMNIST with the digits scaled down
    and placed at random positions, read from the same folder layout.

    ``root`` is the folder holding ``train/`` and ``test/``; when it lacks them but holds
    ``Translated_MMNIST_scale_<100 scale>_translated_<translated>/`` (the folder name used by
    MultiVae's generator of this data set), that sub-folder is used. ``""`` means
    ``$PYROMV_DATA/TranslatedPolyMNIST``.

    Parameters
    ----------
    scale : float
        Digit scale of the sub-folder name (0.75 in the paper).
    translated : bool
        Translation flag of the sub-folder name.
    root, num_modalities, max_rows, seed, likelihood, likelihood_scale, encoder, decoder, hidden_dim
        As in :class:`PolyMNIST`.

    References
    ----------
    .. [1] I. Daunhawer, T. M. Sutter, K. Chin-Cheong, E. Palumbo and J. E. Vogt, "On the
       Limitations of Multimodal VAEs", ICLR 2022.
    """

    scale: float = 0.75
    translated: bool = True

    _name = "Translated-PolyMNIST"
    _folder = "TranslatedPolyMNIST"

    @property
    def root_path(self) -> Path:
        """The folder the data set's files are read from (``root`` or the default data folder)."""
        base = resolve_root(self.root, self._folder)
        sub = (
            base
            / f"Translated_MMNIST_scale_{int(round(float(self.scale) * 100))}"
            f"_translated_{bool(self.translated)}"
        )
        if not (base / "train").is_dir() and sub.is_dir():
            return sub
        return base
