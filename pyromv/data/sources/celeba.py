"""CelebA: aligned face images and their 40 binary attributes, from the release's files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..dataset import MultimodalDataset
from ..modality import Modality, NetworkSpec
from ..stored import StoredDataset
from ._files import cached, missing_files, read_image, resolve_root, seeded_subset
from ._specs import likelihood_kwargs, network_spec

SPLITS = ("train", "val", "test")
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_FOLDER = "img_align_celeba"


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt``: a count line, the attribute names, then
    ``<file> v_1 ... v_40`` with ``v`` in ``{-1, 1}``. Returns file names, attribute names
    and the ``(N, A)`` 0/1 matrix."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and an attribute-name line")
    try:
        count = int(lines[0].split()[0])
    except ValueError as err:
        raise ValueError(f"{path}: the first line must be the number of images") from err
    names = lines[1].split()
    rows = lines[2:]
    if len(rows) != count:
        raise ValueError(f"{path}: declares {count} images but lists {len(rows)}")
    files, values = [], np.empty((len(rows), len(names)), dtype=np.int64)
    for i, row in enumerate(rows):
        parts = row.split()
        if len(parts) != len(names) + 1:
            raise ValueError(
                f"{path}: line {i + 3} has {len(parts) - 1} values for {len(names)} attributes"
            )
        try:
            values[i] = [int(v) for v in parts[1:]]
        except ValueError as err:
            raise ValueError(f"{path}: line {i + 3} holds a value that is not an integer") from err
        files.append(parts[0])
    if not np.isin(values, (-1, 1)).all():
        raise ValueError(f"{path}: attribute values must be -1 or 1")
    return files, names, (values > 0).astype(np.int64)


def read_partition(path: Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt``: ``<file> <0|1|2>`` (train, validation, test)."""
    out = {}
    for i, row in enumerate(path.read_text().splitlines()):
        if not row.strip():
            continue
        parts = row.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}: line {i + 1} must read '<file> <0|1|2>', got {row!r}")
        out[parts[0]] = int(parts[1])
    return out


@dataclass
class CelebA:
    """CelebA faces and their attributes (Liu et al. 2015) as two modalities.

    Files (the release, as torchvision's ``CelebA`` lays it out in ``<root>/celeba``):
    ``img_align_celeba/*.jpg``, ``list_attr_celeba.txt`` and ``list_eval_partition.txt``.

    Modalities: ``image`` ``(3, image_size, image_size)`` in ``[0, 1]`` (a centred
    ``crop x crop`` square resized bilinearly) and ``attributes`` ``(40,)`` 0/1 with a
    ``"bernoulli"`` likelihood. Labels: the 0/1 value of ``label_attribute``.

    Parameters
    ----------
    root : str
        The folder of the files, or its parent holding ``celeba/``; ``""`` means
        ``$PYROMV_DATA/celeba`` (else ``./data/celeba``).
    image_size, crop : int
        64 and 148 are the usual choices for multimodal VAEs on CelebA.
    label_attribute : str
        The attribute used as the class label (plots, coherence).
    max_rows, seed
        Keep a seeded uniform subset of ``max_rows`` rows (``0``: all 162,770 training
        images, 7.9 GB as float32 at 64x64).
    likelihood, likelihood_scale, image_network, attribute_network, hidden_dim
        The image's head and fixed scale, the registered networks and their width.

    Notes
    -----
    Splits follow ``list_eval_partition.txt``: 0 train, 1 ``"val"``, 2 test. torchvision's
    ``CelebA`` class reads the same files but insists on the release's checksums, so the
    files are parsed here; a malformed line is a ``ValueError`` naming the file and line.

    References
    ----------
    .. [1] Z. Liu, P. Luo, X. Wang and X. Tang, "Deep Learning Face Attributes in the Wild",
       ICCV 2015.
    """

    root: str = ""
    image_size: int = 64
    crop: int = 148
    label_attribute: str = "Smiling"
    max_rows: int = 0
    seed: int = 0
    likelihood: str = "laplace"
    likelihood_scale: float = 0.1
    image_network: str = "conv"
    attribute_network: str = "mlp"
    hidden_dim: int = 256

    NUM_ATTRIBUTES = 40

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a field outside its range."""
        for f in ("image_size", "hidden_dim"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"CelebA: {f} must be >= 1, got {getattr(self, f)}")
        if int(self.crop) < 0 or int(self.max_rows) < 0:
            raise ValueError("CelebA: crop and max_rows must be >= 0 (0: no crop / all rows)")

    @property
    def root_path(self) -> Path:
        """The folder the data set's files are read from (``root`` or the default data folder)."""
        base = resolve_root(self.root, "celeba")
        if not (base / ATTRIBUTE_FILE).is_file() and (base / "celeba" / ATTRIBUTE_FILE).is_file():
            return base / "celeba"
        return base

    def _network(self, name: str) -> NetworkSpec:
        return network_spec(name, self.hidden_dim)

    def modalities(self) -> list[Modality]:
        """The data set's modality specs (shape, likelihood, networks), after checking its files."""
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
                "attributes",
                (self.NUM_ATTRIBUTES,),
                likelihood="bernoulli",
                encoder=self._network(self.attribute_network),
                decoder=self._network(self.attribute_network),
            ),
        ]

    def _paths(self) -> tuple[Path, Path, Path]:
        root = self.root_path
        attr, part, images = root / ATTRIBUTE_FILE, root / PARTITION_FILE, root / IMAGE_FOLDER
        if not (attr.is_file() and part.is_file() and images.is_dir()):
            raise missing_files(
                "CelebA", root, [f"{IMAGE_FOLDER}/000001.jpg ...", ATTRIBUTE_FILE, PARTITION_FILE]
            )
        return attr, part, images

    def attribute_names(self) -> list[str]:
        """Names of the 40 binary attributes, in the order of the attribute modality."""
        return [str(n) for n in self._table()["names"]]

    def _table(self) -> dict[str, np.ndarray]:
        attr, part, _ = self._paths()
        stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (attr, part))

        def build() -> dict[str, np.ndarray]:
            files, names, values = read_attributes(attr)
            if len(names) != self.NUM_ATTRIBUTES:
                raise ValueError(
                    f"{attr}: expected {self.NUM_ATTRIBUTES} attributes, found {len(names)}"
                )
            partition = read_partition(part)
            absent = [f for f in files if f not in partition]
            if absent:
                raise ValueError(
                    f"{part}: no partition for {len(absent)} image(s), e.g. {absent[0]}"
                )
            return {
                "files": np.array(files),
                "names": np.array(names),
                "values": values,
                "partition": np.array([partition[f] for f in files], dtype=np.int64),
            }

        return cached(("CelebA-table", stamp), build)

    def _built(self, split: str) -> dict[str, np.ndarray]:
        if split not in SPLITS:
            raise ValueError(f"unknown CelebA split {split!r}; choose from {list(SPLITS)}")
        self.check()
        table = self._table()
        names = [str(n) for n in table["names"]]
        if self.label_attribute not in names:
            raise ValueError(
                f"CelebA: unknown label_attribute {self.label_attribute!r}; choose from {names}"
            )
        rows = np.flatnonzero(table["partition"] == SPLITS.index(split))
        rows = rows[
            seeded_subset(len(rows), int(self.max_rows), self.seed, 0xCE + SPLITS.index(split))
        ]
        attr, part, folder = self._paths()
        stamp = tuple((str(p), p.stat().st_mtime_ns) for p in (attr, part, folder))

        def build() -> dict[str, np.ndarray]:
            s = int(self.image_size)
            images = np.empty((len(rows), 3, s, s), dtype=np.uint8)
            for i, r in enumerate(rows):
                path = folder / str(table["files"][r])
                if not path.is_file():
                    raise missing_files("CelebA", folder, [path.name])
                images[i] = read_image(path, "RGB", size=(s, s), crop=int(self.crop))
            values = table["values"][rows]
            return {
                "images": images,
                "attributes": values,
                "labels": values[:, names.index(self.label_attribute)],
                "rows": rows,
            }

        return cached(
            ("CelebA", split, dataclasses.astuple(self), stamp, tuple(rows.tolist())), build
        )

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"``, ``"val"`` or ``"test"`` split, with ``label_attribute`` as labels."""
        b = self._built(split)
        data = {  # the image bytes stay bytes (a quarter of the memory); batches see image / 255
            "image": torch.tensor(b["images"]),
            "attributes": torch.tensor(b["attributes"]).float(),
        }
        return StoredDataset(
            self.modalities(), data, scales={"image": 255.0}, labels=torch.from_numpy(b["labels"].copy())
        )
