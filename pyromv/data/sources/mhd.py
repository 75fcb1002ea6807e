"""MHD, the Multimodal Handwritten Digits data set (Vasco et al. 2022), from its release files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dataset import MultimodalDataset
from ..modality import Modality, NetworkSpec
from ._files import cached, file_stamp, missing_files, resolve_root, seeded_subset
from ._specs import likelihood_kwargs, network_spec

SPLITS = ("train", "test")


def _tensor(value: Any, path: Path, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{path}: the {what} entry must be a tensor, got {type(value).__name__}")
    return value


@dataclass
class MHD:
    """MHD: a digit as an image, a spoken sound, a pen trajectory and a label (Vasco et al.).

    The release is one file per split, ``mhd_train.pt`` and ``mhd_test.pt``, each a tuple
    saved with ``torch.save``: ``(labels (N,), images (N, 1, 28, 28), trajectories (N, 200),
    sounds (N, 3, 32, 32), trajectory normalisation, sound normalisation)``. It is read
    with ``torch.load(weights_only=True)``, so no pickled code ever runs; the two
    normalisation entries are not used.

    Modalities: ``image`` ``(1, 28, 28)``, ``sound`` (a mel spectrogram, ``(1, 32, 96)``:
    the stored 3 chunks of 32 frames laid side by side as the Nexus code does, or
    ``(3, 32, 32)`` as stored with ``unstack_sound=False``), ``trajectory`` ``(200,)`` and,
    with ``label_modality``, ``label`` ``(1,)`` (a ``"categorical"`` over 10 digits; Nexus
    treats the symbol as a fourth modality). Labels: the digit.

    Parameters
    ----------
    root : str
        Folder of the two files; ``""`` means ``$PYROMV_DATA/MHD`` (else ``./data/MHD``).
    label_modality, unstack_sound
        See above.
    max_rows, seed
        Keep a seeded uniform subset of ``max_rows`` rows (``0``: all).
    likelihood, likelihood_scale
        Head of the image, sound and trajectory and its fixed scale (the stored values are
        used as they are; the Nexus code min-max normalises them).
    image_network, sound_network, trajectory_network, hidden_dim
        Registered networks and their width.

    Notes
    -----
    The tuple layout follows the data-set classes of the Nexus code and of MultiVae; it
    could not be checked against the files themselves here. A file of another layout is a
    ``ValueError`` naming it.

    References
    ----------
    .. [1] M. Vasco, H. Yin, F. S. Melo and A. Paiva, "Leveraging hierarchy in multimodal
       generative models for effective cross-modality inference", Neural Networks 146, 2022.
    """

    root: str = ""
    label_modality: bool = True
    unstack_sound: bool = True
    max_rows: int = 0
    seed: int = 0
    likelihood: str = "normal"
    likelihood_scale: float = 0.1
    image_network: str = "conv"
    sound_network: str = "mlp"
    trajectory_network: str = "mlp"
    hidden_dim: int = 128

    TRAJECTORY_DIM = 200

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a field outside its range."""
        if int(self.max_rows) < 0:
            raise ValueError(f"MHD: max_rows must be >= 0 (0: all), got {self.max_rows}")
        if int(self.hidden_dim) < 1:
            raise ValueError(f"MHD: hidden_dim must be >= 1, got {self.hidden_dim}")
        if not float(self.likelihood_scale) > 0:
            raise ValueError(f"MHD: likelihood_scale must be positive, got {self.likelihood_scale}")

    @property
    def root_path(self) -> Path:
        """The folder the data set's files are read from (``root`` or the default data folder)."""
        return resolve_root(self.root, "MHD")

    @property
    def sound_shape(self) -> tuple[int, int, int]:
        """Shape of the sound spectrogram modality: ``(1, 32, 96)`` unstacked, else ``(3, 32, 32)``."""
        return (1, 32, 96) if self.unstack_sound else (3, 32, 32)

    def _network(self, name: str) -> NetworkSpec:
        return network_spec(name, self.hidden_dim)

    def modalities(self) -> list[Modality]:
        """The data set's modality specs (shape, likelihood, networks), after checking its files."""
        self.check()
        kw = likelihood_kwargs(self.likelihood, self.likelihood_scale)

        def mod(name: str, shape: tuple[int, ...], net: str) -> Modality:
            return Modality(
                name,
                shape,
                likelihood=self.likelihood,
                likelihood_kwargs=kw,
                encoder=self._network(net),
                decoder=self._network(net),
            )

        mods = [
            mod("image", (1, 28, 28), self.image_network),
            mod("sound", self.sound_shape, self.sound_network),
            mod("trajectory", (self.TRAJECTORY_DIM,), self.trajectory_network),
        ]
        if self.label_modality:
            mods.append(
                Modality(
                    "label",
                    (1,),
                    likelihood="categorical",
                    likelihood_kwargs={"num_categories": 10},
                    encoder=self._network("mlp"),
                    decoder=self._network("mlp"),
                )
            )
        return mods

    def file(self, split: str) -> Path:
        """Path of the stored file of ``split``; a clear error when it is missing."""
        if split not in SPLITS:
            raise ValueError(f"unknown MHD split {split!r}; choose from {list(SPLITS)}")
        path = self.root_path / f"mhd_{split}.pt"
        if not path.is_file():
            raise missing_files(f"MHD ({split})", self.root_path, ["mhd_train.pt", "mhd_test.pt"])
        return path

    def _built(self, split: str) -> dict[str, np.ndarray]:
        self.check()
        path = self.file(split)

        def build() -> dict[str, np.ndarray]:
            try:
                content = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001  (any unpickling failure is a malformed file)
                raise ValueError(
                    f"{path}: not a file torch.load(weights_only=True) can read ({err})"
                ) from err
            if not isinstance(content, (tuple, list)) or len(content) < 4:
                raise ValueError(
                    f"{path}: expected a tuple (labels, images, trajectories, sounds, ...), got "
                    f"{type(content).__name__}"
                    + (f" of length {len(content)}" if isinstance(content, (tuple, list)) else "")
                )
            labels, images, traj, sound = (
                _tensor(v, path, w)
                for v, w in zip(content[:4], ("labels", "images", "trajectories", "sounds"))
            )
            n = labels.shape[0] if labels.dim() == 1 else -1
            if n < 0 or labels.is_floating_point():
                raise ValueError(
                    f"{path}: labels must be a 1-D integer tensor, got "
                    f"{tuple(labels.shape)} {labels.dtype}"
                )
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
                raise ValueError(f"{path}: labels must be digits 0..9")
            if images.dim() == 3:
                images = images.unsqueeze(1)
            checks = (
                ("images", images, (1, 28, 28)),
                ("trajectories", traj, (self.TRAJECTORY_DIM,)),
                ("sounds", sound, (3, 32, 32)),
            )
            for what, t, shape in checks:
                if tuple(t.shape) != (n, *shape):
                    raise ValueError(
                        f"{path}: {what} must have shape {(n, *shape)}, got {tuple(t.shape)}"
                    )
                if not bool(torch.isfinite(t.double()).all()):
                    raise ValueError(f"{path}: {what} hold non-finite values")
            if self.unstack_sound:
                # (N, 3, 32, 32): chunks of 32 frames x 32 mel bands -> (N, 1, 32 bands, 96 frames)
                sound = sound.reshape(n, 96, 32).transpose(1, 2).unsqueeze(1)
            keep = seeded_subset(n, int(self.max_rows), self.seed, 0x3D + SPLITS.index(split))
            return {
                "labels": labels.numpy().astype(np.int64)[keep],
                "image": images.float().numpy()[keep],
                "sound": np.ascontiguousarray(sound.float().numpy()[keep]),
                "trajectory": traj.float().numpy()[keep],
            }

        return cached(("MHD", split, dataclasses.astuple(self), file_stamp(path)), build)

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` split, fully observed, with digit labels."""
        b = self._built(split)
        data = {k: torch.tensor(b[k]) for k in ("image", "sound", "trajectory")}
        labels = torch.tensor(b["labels"])
        if self.label_modality:
            data["label"] = labels[:, None].clone()
        return MultimodalDataset(self.modalities(), data, labels=labels)
