"""Checks that turn user data into clean, zero-filled tensors with clear errors."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .modality import Modality

_INTEGER_LIKELIHOODS = {"categorical"}


def _as_tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{what}: expected a torch.Tensor or numpy array, got {type(value).__name__}")


def check_modalities(modalities: Sequence[Modality]) -> dict[str, Modality]:
    """Index modalities by name, refusing duplicates and non-Modality entries."""
    out: dict[str, Modality] = {}
    for mod in modalities:
        if not isinstance(mod, Modality):
            raise TypeError(f"expected Modality specs, got {type(mod).__name__}")
        if mod.name in out:
            raise ValueError(f"modality {mod.name!r} is listed twice")
        out[mod.name] = mod
    if not out:
        raise ValueError("at least one modality is needed")
    return out


def validate_data(
    modalities: Sequence[Modality],
    data: Mapping[str, Any],
    obs_mask: Mapping[str, Any] | None = None,
    labels: Any | None = None,
    drop_empty: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]:
    """Validate data against its modality specs and fill missing entries with zeros.

    Returns ``(data, obs_mask, labels)`` as new tensors (the caller's are never changed).
    Raises ``ValueError`` naming the modality for an unknown or absent modality, a wrong
    shape, rows of different lengths, a mask that does not match, a NaN in an observed
    entry, or a row with nothing observed (such rows are dropped with a warning when
    ``drop_empty=True``).
    """
    specs = check_modalities(modalities)
    unknown = set(data) - set(specs)
    if unknown:
        raise ValueError(
            f"unknown modality {sorted(unknown)}: the modalities are {list(specs)}"
        )
    absent = [m for m in specs if m not in data]
    if absent:
        raise ValueError(f"no data for modality {absent}; pass an array for each modality")
    obs_mask = dict(obs_mask or {})
    unknown = set(obs_mask) - set(specs)
    if unknown:
        raise ValueError(
            f"obs_mask names unknown modality {sorted(unknown)}: the modalities are {list(specs)}"
        )

    tensors: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    n_rows: int | None = None
    first = None
    for name, spec in specs.items():
        x = _as_tensor(data[name], f"modality {name!r}")
        if tuple(x.shape[1:]) != spec.shape or x.dim() != len(spec.shape) + 1:
            raise ValueError(
                f"modality {name!r}: expected data of shape (N, {', '.join(map(str, spec.shape))})"
                f" i.e. rows of shape {spec.shape}, got {tuple(x.shape)}"
            )
        if n_rows is None:
            n_rows, first = x.shape[0], name
        elif x.shape[0] != n_rows:
            raise ValueError(
                f"modality {name!r} has {x.shape[0]} rows but modality {first!r} has {n_rows}"
            )
        if spec.likelihood in _INTEGER_LIKELIHOODS:
            nan = torch.isnan(x) if x.is_floating_point() else torch.zeros_like(x, dtype=torch.bool)
            x = torch.where(nan, torch.zeros_like(x), x)
            if x.is_floating_point() and not bool((x == x.round()).all()):
                raise ValueError(f"modality {name!r}: categorical data must hold whole numbers")
            x = x.long()
        else:
            x = x.to(torch.get_default_dtype())
            nan = torch.isnan(x)

        if name in obs_mask and obs_mask[name] is not None:
            mask = _as_tensor(obs_mask[name], f"obs_mask of modality {name!r}")
            if mask.dtype != torch.bool:
                if not ((mask == 0) | (mask == 1)).all():
                    raise ValueError(f"obs_mask of modality {name!r} must be boolean (or 0/1)")
                mask = mask.bool()
            if tuple(mask.shape) not in {(n_rows,), tuple(x.shape)}:
                raise ValueError(
                    f"obs_mask of modality {name!r} has shape {tuple(mask.shape)}; expected "
                    f"({n_rows},) for whole-modality missingness or {tuple(x.shape)} for "
                    "feature-level missingness"
                )
        else:
            mask = torch.ones(n_rows, dtype=torch.bool)
        full = mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
        bad = nan & full
        if bad.any():
            row = int(bad.flatten(1).any(1).nonzero()[0])
            raise ValueError(
                f"modality {name!r}: NaN in an observed entry (row {row}); mark missing "
                "entries False in obs_mask or use MultimodalDataset.from_nan"
            )
        filled = torch.where(full, x, torch.zeros((), dtype=x.dtype)) if not bool(full.all()) else x
        tensors[name] = filled.clone() if filled is x else filled
        masks[name] = mask.clone()

    assert n_rows is not None
    if labels is not None:
        labels = _as_tensor(labels, "labels").clone()
        if labels.shape[:1] != (n_rows,):
            raise ValueError(f"labels have {tuple(labels.shape)} rows; the data has {n_rows}")

    observed = torch.zeros(n_rows, dtype=torch.bool)
    for name in specs:
        m = masks[name]
        observed |= m if m.dim() == 1 else m.flatten(1).any(1)
    if not bool(observed.all()):
        empty = (~observed).nonzero().flatten()
        if not drop_empty:
            raise ValueError(
                f"{len(empty)} row(s) observe no modality (first: row {int(empty[0])}); a row "
                "needs at least one observed modality (pass drop_empty=True to drop them)"
            )
        warnings.warn(f"dropping {len(empty)} row(s) that observe no modality", stacklevel=3)
        keep = observed.nonzero().flatten()
        tensors = {m: v[keep] for m, v in tensors.items()}
        masks = {m: v[keep] for m, v in masks.items()}
        labels = None if labels is None else labels[keep]
    return tensors, masks, labels
