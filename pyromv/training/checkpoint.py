"""Checkpoints that are atomic, verified when read, and survive a corrupt copy.

A checkpoint is a folder: ``config.json`` and ``model.safetensors`` (a saved model), for the
training checkpoint ``training_state.pt`` (optimiser, RNG states, epoch, history), and
``checksums.json``: the size and SHA-256 of every file, recorded when it was written.

- **Atomic**: everything is written to a temporary sibling folder first, which then replaces
  the checkpoint; an interruption leaves the previous checkpoint or the new one, never a mix.
- **Verified**: :func:`load_checkpoint` checks every file against ``checksums.json`` and the
  safetensors header against the file's length before it loads anything, and names the file
  that fails (a truncated or overwritten file, a missing one).
- **A previous one kept**: with ``keep_previous=True`` (the trainer's ``last/``) the checkpoint
  being replaced moves to ``<name>.previous`` (only when it is intact), and
  :func:`load_checkpoint` falls back to it, with a :class:`CheckpointWarning` naming the
  corrupt files, when the newer one fails verification.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from ..models.base import MultimodalVAE
from ..models.io import CONFIG_NAME, WEIGHTS_NAME, save_model

STATE_NAME = "training_state.pt"
MANIFEST_NAME = "checksums.json"
MANIFEST_VERSION = 1
PREVIOUS_SUFFIX = ".previous"
_CHUNK = 1 << 20
# bytes per element of the safetensors dtypes (header check: shape times size = the byte range)
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


class CorruptCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or altered since it was written.

    Attributes
    ----------
    problems : list of (Path, str)
        Each failing file and what is wrong with it.
    """

    def __init__(self, message: str, problems: list[tuple[Path, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class CheckpointWarning(UserWarning):
    """A corrupt checkpoint was skipped (the previous intact one is used instead) or discarded."""


# ====================================================================== RNG state


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


# ====================================================================== writing


def previous_checkpoint(folder: str | os.PathLike) -> Path:
    """Where ``write_checkpoint(folder, ..., keep_previous=True)`` keeps the replaced checkpoint."""
    folder = Path(folder)
    return folder.with_name(folder.name + PREVIOUS_SUFFIX)


def _interrupted(folder: Path) -> Path:
    """The name a checkpoint has during a swap without ``keep_previous`` (kept for old runs)."""
    return folder.with_name(f".{folder.name}.old")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(folder: Path, info: dict[str, Any] | None) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {"format_version": MANIFEST_VERSION, "files": files, "info": dict(info or {})}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def write_checkpoint(
    folder: str | os.PathLike,
    model: MultimodalVAE,
    state: dict[str, Any] | None = None,
    *,
    keep_previous: bool = False,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write the model (and a training state) to ``folder`` atomically, with checksums.

    Parameters
    ----------
    folder : path
    model : MultimodalVAE
    state : dict, optional
        The training state, saved as ``training_state.pt`` (``torch.save``; read back with
        ``weights_only=True``).
    keep_previous : bool
        Move the checkpoint being replaced to :func:`previous_checkpoint` (if it verifies;
        a corrupt one is discarded with a :class:`CheckpointWarning`) instead of deleting it.
    info : dict, optional
        JSON-serialisable facts stored in ``checksums.json`` (the trainer: epoch, stage,
        validation loss), read back by :func:`read_manifest`.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    tmp.chmod(0o755)
    try:
        save_model(model, tmp)
        if state is not None:
            torch.save(state, tmp / STATE_NAME)
        _write_manifest(tmp, info)
        if keep_previous:
            _swap_keeping_previous(tmp, folder)
        else:
            _swap(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _swap(tmp: Path, folder: Path) -> None:
    old = _interrupted(folder)
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    # until this rename, `folder` or `.old` holds the previous complete checkpoint
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def _swap_keeping_previous(tmp: Path, folder: Path) -> None:
    previous, old = previous_checkpoint(folder), _interrupted(folder)
    if not folder.exists() and old.exists():  # a swap without keep_previous was interrupted
        os.replace(old, folder)
    if folder.exists():
        problems = _problems(folder, require_state=(tmp / STATE_NAME).exists())
        if problems:
            warnings.warn(f"discarding the corrupt checkpoint {folder} ({_describe(problems)}); "
                          f"{previous} stays the previous checkpoint", CheckpointWarning, stacklevel=3)
            shutil.rmtree(folder)
        else:
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(folder, previous)
    # until this rename, `previous` holds the latest complete checkpoint
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


# ====================================================================== verification


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise :class:`CorruptCheckpointError` unless ``path`` is a complete safetensors file.

    The file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON giving each
    tensor's dtype, shape and byte range, then the tensor data; the ranges must tile the data
    exactly, so a truncated (or padded) file fails.
    """
    path = Path(path)

    def bad(reason: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{path}: {reason}", [(path, reason)])

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"truncated: {size} bytes, shorter than the 8-byte safetensors header length")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise bad(f"truncated: the safetensors header claims {n} bytes, the file has {size - 8} after the length")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise bad("the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise bad("the safetensors header is not a JSON object")
    data = size - 8 - n
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in entry["data_offsets"])
            count = math.prod(int(s) for s in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"the safetensors header entry of {name!r} lacks a shape or byte range") from None
        width = _DTYPE_BYTES.get(entry.get("dtype"))
        if not 0 <= begin <= stop or (width is not None and stop - begin != count * width):
            raise bad(f"the safetensors header entry of {name!r} is inconsistent")
        end = max(end, stop)
    if end != data:
        what = "truncated" if end > data else "longer than its header says"
        raise bad(f"{what}: the header describes {end} bytes of tensor data, the file holds {data}")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``checksums.json`` of a checkpoint (None if it has none or it does not parse)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _problems(folder: Path, require_state: bool) -> list[tuple[Path, str]]:
    """What is wrong with the checkpoint at ``folder`` (empty: it verifies). Reads every file once."""
    problems: list[tuple[Path, str]] = []
    required = [CONFIG_NAME, WEIGHTS_NAME] + ([STATE_NAME] if require_state else [])
    manifest_path = folder / MANIFEST_NAME
    recorded: dict[str, Any] = {}
    if manifest_path.exists():  # checkpoints written before checksums were recorded have none
        try:
            manifest = json.loads(manifest_path.read_text())
            recorded = dict(manifest["files"])
            for entry in recorded.values():
                int(entry["bytes"]), str(entry["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return [(manifest_path, "the checksum list is unreadable")]
    for name in sorted(set(required) | set(recorded)):
        path = folder / name
        if not path.is_file():
            problems.append((path, "missing"))
            continue
        if name in recorded:
            size, expected = path.stat().st_size, recorded[name]["bytes"]
            if size != expected:
                what = "truncated" if size < expected else "longer than written"
                problems.append((path, f"{what}: {size} bytes, {expected} were written"))
                continue
            if _sha256(path) != recorded[name]["sha256"]:
                problems.append((path, "its SHA-256 differs from the one recorded when it was written"))
                continue
        if name == WEIGHTS_NAME:
            try:
                check_safetensors(path)
            except CorruptCheckpointError as err:
                problems.extend(err.problems)
    return problems


def _describe(problems: list[tuple[Path, str]]) -> str:
    return "; ".join(f"{path}: {reason}" for path, reason in problems)


def verify_checkpoint(folder: str | os.PathLike, require_state: bool = False) -> None:
    """Raise :class:`CorruptCheckpointError` naming every file of ``folder`` that fails.

    Checks the files against the sizes and SHA-256 recorded in ``checksums.json`` (when the
    checkpoint has one), that ``config.json``, ``model.safetensors`` (and, with
    ``require_state``, ``training_state.pt``) exist, and the safetensors header.
    """
    folder = Path(folder)
    problems = _problems(folder, require_state)
    if problems:
        raise CorruptCheckpointError(f"corrupt checkpoint {folder}: {_describe(problems)}", problems)


# ====================================================================== reading


@dataclass
class Checkpoint:
    """A verified checkpoint, read into memory.

    Attributes
    ----------
    path : Path
        The folder it was read from (the requested one, or the previous one it fell back to).
    description : dict
        ``config.json`` without its format version (:meth:`MultimodalVAE.describe`).
    weights : dict of str to Tensor
    state : dict or None
        The training state (None for a model-only checkpoint such as ``best/``).
    info : dict
        What the writer recorded in ``checksums.json`` (empty for older checkpoints).
    skipped : list of (Path, str)
        The corrupt files of newer candidates that were passed over.
    """

    path: Path
    description: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, Any] | None
    info: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _read(folder: Path, require_state: bool, map_location: str) -> Checkpoint:
    verify_checkpoint(folder, require_state)

    def load(path: Path, what, reader):
        try:
            return reader()
        except Exception as err:  # any failure to parse a verified file is corruption
            reason = f"cannot be read as {what} ({type(err).__name__}: {err})"
            raise CorruptCheckpointError(f"corrupt checkpoint {folder}: {path}: {reason}", [(path, reason)]) from err

    config_path, weights_path, state_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME, folder / STATE_NAME
    description = load(config_path, "JSON", lambda: json.loads(config_path.read_text()))
    if not isinstance(description, dict):
        raise CorruptCheckpointError(f"corrupt checkpoint {folder}: {config_path}: not a JSON object",
                                     [(config_path, "not a JSON object")])
    description.pop("format_version", None)
    weights = load(weights_path, "safetensors",
                   lambda: safetensors.torch.load_file(str(weights_path), device=map_location))
    state = None
    if require_state or state_path.exists():
        state = load(state_path, "a training state", lambda: torch.load(state_path, weights_only=True))
    manifest = read_manifest(folder) or {}
    info = manifest.get("info") if isinstance(manifest.get("info"), dict) else {}
    return Checkpoint(folder, description, weights, state, info)


def _candidates(folder: Path) -> list[Path]:
    return [folder, _interrupted(folder), previous_checkpoint(folder)]


def load_checkpoint(
    folder: str | os.PathLike, require_state: bool = True, map_location: str = "cpu",
) -> Checkpoint | None:
    """Read and verify the checkpoint at ``folder``, falling back to the previous intact one.

    The candidates, newest first: ``folder``, the folder left by an interrupted swap, and
    :func:`previous_checkpoint`. The first that verifies (:func:`verify_checkpoint`) and loads
    is returned; skipping a corrupt one issues a :class:`CheckpointWarning` naming its files
    (a candidate that is simply absent, as after an interrupted swap, is skipped silently).

    Returns
    -------
    Checkpoint or None
        None when there is no checkpoint at all.

    Raises
    ------
    CorruptCheckpointError
        When checkpoints exist but none is intact; the message names every failing file.
    """
    folder = Path(folder)
    skipped: list[tuple[Path, str]] = []
    for candidate in _candidates(folder):
        if not candidate.is_dir() or not any(candidate.iterdir()):
            continue
        try:
            checkpoint = _read(candidate, require_state, map_location)
        except CorruptCheckpointError as err:
            skipped.extend(err.problems)
            continue
        if skipped:
            epoch = checkpoint.info.get("epoch", (checkpoint.state or {}).get("epoch"))
            at = f" (epoch {epoch})" if epoch is not None else ""
            warnings.warn(f"corrupt checkpoint skipped: {_describe(skipped)}; using the previous checkpoint "
                          f"{candidate}{at} instead", CheckpointWarning, stacklevel=2)
        checkpoint.skipped = skipped
        return checkpoint
    if skipped:
        raise CorruptCheckpointError(
            f"no intact checkpoint is left at {folder}: {_describe(skipped)}. Delete the checkpoint "
            "folders to start over (or train with resume=False)", skipped)
    return None


def checkpoint_exists(folder: str | os.PathLike) -> bool:
    """Is there anything :func:`load_checkpoint` would look at (intact or not)?"""
    return any(c.is_dir() and any(c.iterdir()) for c in _candidates(Path(folder)))


def find_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder with a training state at ``folder``, after an interrupted
    swap, or at :func:`previous_checkpoint` (found by name only: :func:`load_checkpoint` verifies)."""
    for candidate in _candidates(Path(folder)):
        if (candidate / STATE_NAME).is_file():
            return candidate
    return None


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The training state of a checkpoint folder (unverified: see :func:`load_checkpoint`)."""
    return torch.load(Path(folder) / STATE_NAME, weights_only=True)
