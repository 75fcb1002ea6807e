"""A saved model is a folder: ``config.json`` (what to build) and ``model.safetensors`` (weights).

Loading runs no pickled code: the config names registered classes and networks, and
safetensors holds plain tensors.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ..data.modality import Modality
from .base import MultimodalVAE
from .registry import get_model_class

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def build_model(description: dict[str, Any]) -> MultimodalVAE:
    """Build an (untrained) model from :meth:`MultimodalVAE.describe`'s dictionary."""
    try:
        cls = get_model_class(description["model"])
        modalities = [Modality.from_dict(m) for m in description["modalities"]]
        config = cls.config_class(**description.get("config", {}))
    except KeyError as err:
        raise ValueError(f"model description lacks the key {err}") from err
    return cls(modalities, config)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(model: MultimodalVAE, folder: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (each file atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    description = {"format_version": FORMAT_VERSION, **model.describe()}
    text = json.dumps(description, indent=2, sort_keys=True)

    def write_config(tmp: str) -> None:
        Path(tmp).write_text(text)

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: safetensors.torch.save_file(state, tmp))
    atomic_write(folder / CONFIG_NAME, write_config)
    return folder


def load_model(folder: str | os.PathLike, map_location: str = "cpu") -> MultimodalVAE:
    """Rebuild a model saved by :func:`save_model` from its folder alone.

    ``folder`` may also be ``"hf://owner/name[@revision]"``: a Hugging Face Hub repository
    (:func:`pyromv.hub.hub_folder`: only ``config.json`` and ``model.safetensors`` are fetched,
    through the Hugging Face cache; needs ``pip install 'pyromv[hub]'``).
    """
    if isinstance(folder, str) and folder.startswith("hf://"):
        from ..hub import hub_folder  # the sharing layer sits above the models: imported on use

        folder = hub_folder(folder)
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: a saved model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    description = json.loads(config_path.read_text())
    version = description.pop("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ValueError(f"{config_path} has format version {version}; this pyromv reads <= {FORMAT_VERSION}")
    model = build_model(description)
    model.load_state_dict(load_weights(folder, map_location), strict=True)
    return model.to(map_location)


def load_weights(folder: str | os.PathLike, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """The state dict stored in ``folder/model.safetensors`` (a ValueError naming the file when
    it is missing or not a complete safetensors file, e.g. truncated)."""
    path = Path(folder) / WEIGHTS_NAME
    try:
        return safetensors.torch.load_file(str(path), device=map_location)
    except safetensors.SafetensorError as e:
        raise ValueError(f"{path} cannot be read as model weights ({e}): the folder is incomplete or "
                         "corrupt; save the model again or use an intact copy") from e
