"""Checks that turn user data into clean, zero-filled tensors with clear errors."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..distributions.likelihoods import LikelihoodHead, build_likelihood
from .modality import Modality


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


def likelihood_head(spec: Modality) -> LikelihoodHead:
    """The modality's likelihood head, built to read its support (errors name the modality)."""
    try:
        return build_likelihood(spec.likelihood, spec.shape, spec.likelihood_kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"modality {spec.name!r}: {err}") from err


def _entry(index: tuple[int, ...]) -> str:
    return str(index[0]) if len(index) == 1 else str(index)


def _first_bad(bad: Tensor) -> tuple[int, tuple[int, ...], int, int]:
    """``(row, entry index within the row, number of bad entries, number of bad rows)``."""
    rows = bad.flatten(1).any(1)
    row = int(rows.nonzero()[0])
    entry = tuple(int(i) for i in bad[row].nonzero()[0]) if bad.dim() > 1 else ()
    return row, entry, int(bad.sum()), int(rows.sum())


def _looks_like_bytes(x: Tensor, observed: Tensor, n_bad: int) -> bool:
    """Observed entries all whole numbers, many of them above 1: image bytes 0..255?"""
    observed = observed.expand_as(x)
    whole = bool(((x == x.round()) | ~observed).all()) if x.is_floating_point() else True
    return whole and n_bad > 0.1 * int(observed.sum())


def check_values(spec: Modality, x: Tensor, observed: Tensor, head: LikelihoodHead | None = None,
                 original: Tensor | None = None) -> None:
    """Refuse observed entries of ``x`` outside the support of the modality's likelihood.

    ``x`` ``(N, *shape)`` holds the data as the model will see them (after any dtype
    conversion), ``observed`` (broadcastable to ``x``) marks the observed entries; the others
    are not looked at. One vectorised pass (:meth:`LikelihoodHead.invalid`); the error names
    the modality, the first bad row, the entry within the row and its value (from
    ``original``, the caller's array, when given: a float64 value too large for float32
    shows as itself).
    """
    head = head if head is not None else likelihood_head(spec)
    bad = head.invalid(x) & observed
    if not bool(bad.any()):
        return
    original = x if original is None else original
    nan = torch.isnan(original) & bad if original.is_floating_point() else None
    if nan is not None and bool(nan.any()):
        row = int(nan.flatten(1).any(1).nonzero()[0])
        raise ValueError(
            f"modality {spec.name!r}: NaN in an observed entry (row {row}); mark missing "
            "entries False in obs_mask or use MultimodalDataset.from_nan"
        )
    row, entry, n_bad, n_rows = _first_bad(bad)
    value = original[(row, *entry)].item()
    where = f"row {row}" + (f", entry {_entry(entry)}" if entry else "")
    hint = ""
    if math.isfinite(value) and x.is_floating_point() and not math.isfinite(x[(row, *entry)].item()):
        hint = f" (too large for {x.dtype})"
    elif head.support == "values in [0, 1]" and value > 1 and _looks_like_bytes(original, observed, n_bad):
        hint = " (image bytes 0..255? divide by 255)"
    more = f"; {n_bad} observed entries in {n_rows} rows are outside" if n_bad > 1 else ""
    raise ValueError(
        f"modality {spec.name!r}: {where} holds {value}{hint}, outside the support of its "
        f"{spec.likelihood!r} likelihood ({head.support}){more}. Fix the data, or mark the "
        "entry missing (False in obs_mask)"
    )


def validate_data(
    modalities: Sequence[Modality],
    data: Mapping[str, Any],
    obs_mask: Mapping[str, Any] | None = None,
    labels: Any | None = None,
    drop_empty: bool = False,
    check_support: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]:
    """Validate data against its modality specs and fill missing entries with zeros.

    Returns ``(data, obs_mask, labels)`` as new tensors (the caller's are never changed).
    Raises ``ValueError`` naming the modality for an unknown or absent modality, a wrong
    shape, rows of different lengths, no rows at all, a mask that does not match, a NaN in
    an observed entry, an observed value outside the support of the modality's likelihood
    (:func:`check_values`: +-inf for every likelihood, values outside [0, 1] for the
    Bernoulli and continuous Bernoulli, codes that are not whole numbers in range for the
    categorical), or a row with nothing observed (such rows are dropped with a warning when
    ``drop_empty=True``).

    Dtypes: categorical data become ``int64`` codes; other data become the default float
    dtype (integers and booleans convert exactly), except ``uint8``, which is refused with a
    ``TypeError``: image bytes ``0..255`` are almost never the values meant, so the conversion
    must be written out (``x.float() / 255`` for intensities in [0, 1], ``x.float()`` to keep
    0..255). ``check_support=False`` skips the value check (for data already checked).
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
        head = likelihood_head(spec)
        x = _as_tensor(data[name], f"modality {name!r}")
        if tuple(x.shape[1:]) != spec.shape or x.dim() != len(spec.shape) + 1:
            raise ValueError(
                f"modality {name!r}: expected data of shape (N, {', '.join(map(str, spec.shape))})"
                f" i.e. rows of shape {spec.shape}, got {tuple(x.shape)}"
            )
        if n_rows is None:
            n_rows, first = x.shape[0], name
            if n_rows == 0:
                raise ValueError(
                    f"the data set is empty (modality {name!r} has 0 rows); a data set needs at least one row"
                )
        elif x.shape[0] != n_rows:
            raise ValueError(
                f"modality {name!r} has {x.shape[0]} rows but modality {first!r} has {n_rows}"
            )
        if x.is_complex():
            raise TypeError(f"modality {name!r}: complex data ({x.dtype}) cannot be modelled")
        if x.dtype == torch.uint8 and not head.integer_codes:
            raise TypeError(
                f"modality {name!r}: uint8 data (image bytes 0..255?) are not converted implicitly "
                f"for its {spec.likelihood!r} likelihood; pass x.float() / 255 for intensities in "
                "[0, 1], or x.float() to keep the values"
            )

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

        # the values the model will see: int64 codes, or floats of the default dtype
        original = x
        if not head.integer_codes:
            x = x.to(torch.get_default_dtype())
        if check_support:
            check_values(spec, x, full, head, original)
        all_observed = bool(full.all())
        if not all_observed:
            x = torch.where(full, x, torch.zeros((), dtype=x.dtype))
        if head.integer_codes:
            x = x.long()
        shares = x.untyped_storage().data_ptr() == original.untyped_storage().data_ptr()
        tensors[name] = x.clone() if shares else x  # never the caller's memory
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
        if len(empty) == n_rows:
            raise ValueError(
                f"every row ({n_rows}) observes no modality: dropping them would leave an empty data set"
            )
        keep = observed.nonzero().flatten()
        tensors = {m: v[keep] for m, v in tensors.items()}
        masks = {m: v[keep] for m, v in masks.items()}
        labels = None if labels is None else labels[keep]
    return tensors, masks, labels
