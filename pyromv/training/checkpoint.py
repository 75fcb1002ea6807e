"""Atomic checkpoints: a folder swapped into place only once it is complete."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.base import MultimodalVAE
from ..models.io import save_model

STATE_NAME = "training_state.pt"


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The states of torch's, numpy's and Python's global RNGs (and a torch generator).

    Stored as tensors and plain Python values, so ``torch.load(weights_only=True)`` reads them.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global RNG is what we restore)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    legacy = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def write_checkpoint(folder: str | os.PathLike, model: MultimodalVAE, state: dict[str, Any] | None = None) -> Path:
    """Write the model (and a training state) to ``folder`` atomically.

    Everything goes to a temporary sibling folder first, which then replaces ``folder``;
    an interruption leaves either the previous checkpoint or the new one, never a mix.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    tmp.chmod(0o755)
    try:
        save_model(model, tmp)
        if state is not None:
            torch.save(state, tmp / STATE_NAME)
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        # until this rename, `folder` or `.old` holds the previous complete checkpoint
        os.replace(tmp, folder)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def find_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The complete checkpoint at ``folder``, or the previous one if a swap was interrupted."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(f".{folder.name}.old")):
        if (candidate / STATE_NAME).is_file():
            return candidate
    return None


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_NAME, weights_only=True)
