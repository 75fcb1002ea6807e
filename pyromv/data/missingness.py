"""Seeded simulators that make a complete data set partially observed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from .dataset import MultimodalDataset


def _rates(names: list[str], rate: float | Mapping[str, float], default: float | None) -> dict[str, float]:
    """Per-modality rates in [0, 1] from one rate or a dict (unlisted modalities get ``default``,
    or are left out when it is ``None``)."""
    if isinstance(rate, Mapping):
        unknown = set(rate) - set(names)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)} in rate: the modalities are {names}")
        rates = {m: float(rate[m]) if m in rate else default for m in names}
        rates = {m: r for m, r in rates.items() if r is not None}
    else:
        rates = {m: float(rate) for m in names}
    for m, r in rates.items():
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"missing rate of modality {m!r} must be in [0, 1], got {r}")
    return rates


def mcar(
    dataset: MultimodalDataset,
    rate: float | Mapping[str, float],
    seed: int = 0,
    keep_at_least_one: bool = True,
) -> MultimodalDataset:
    """Drop whole modalities Missing Completely At Random.

    Each row loses modality ``m`` independently with probability ``rate[m]`` (or ``rate``
    for every modality), on top of what was already missing. With
    ``keep_at_least_one=True``, a row that would lose every observed modality keeps one of
    them, chosen uniformly; the realised rates are then slightly below ``rate``. With
    ``keep_at_least_one=False`` such rows are dropped (with a warning), so the result can
    have fewer rows than the input.

    Returns a new data set; the input is not changed.
    """
    names = dataset.names
    rates = _rates(names, rate, default=0.0)

    g = torch.Generator().manual_seed(seed)
    n = len(dataset)
    before = _row_matrix(dataset)  # (N, M)
    u = torch.rand(n, len(names), generator=g)
    drop = u < torch.tensor([rates[m] for m in names])
    after = before & ~drop
    if keep_at_least_one:
        lost_all = ~after.any(1) & before.any(1)
        if lost_all.any():
            # choose one previously observed modality uniformly for each such row
            scores = torch.rand(n, len(names), generator=g).masked_fill(~before, -1.0)
            pick = scores.argmax(1)
            restore = torch.zeros_like(after)
            restore[torch.arange(n), pick] = True
            after = after | (restore & lost_all[:, None])
    new_masks = {}
    for j, m in enumerate(names):
        mask = dataset.obs_mask[m]
        rows = after[:, j].reshape((n,) + (1,) * (mask.dim() - 1))
        new_masks[m] = mask & rows
    return dataset.with_obs_mask(new_masks, drop_empty=not keep_at_least_one)


def _row_matrix(dataset: MultimodalDataset) -> torch.Tensor:
    """``(N, M)``: does row ``i`` observe anything of modality ``j`` (from the masks alone: a
    memory-mapped data set is not read)."""
    masks = [dataset.obs_mask[m] for m in dataset.names]
    return torch.stack([v if v.dim() == 1 else v.flatten(1).any(1) for v in masks], 1)


def _apply_rows(
    dataset: MultimodalDataset, keep: torch.Tensor, drop_empty: bool
) -> MultimodalDataset:
    """Intersect each modality's mask with the ``(N, M)`` row matrix ``keep``."""
    n = len(dataset)
    masks = {}
    for j, m in enumerate(dataset.names):
        mask = dataset.obs_mask[m]
        masks[m] = mask & keep[:, j].reshape((n,) + (1,) * (mask.dim() - 1))
    return dataset.with_obs_mask(masks, drop_empty=drop_empty)


def block(
    dataset: MultimodalDataset,
    patterns: Mapping[str | tuple[str, ...], float],
    seed: int = 0,
    drop_empty: bool = False,
) -> MultimodalDataset:
    """Block-wise missingness: disjoint blocks of rows, each missing a fixed set of modalities.

    ``patterns`` maps a modality name, or a tuple of names, to the fraction of rows that miss
    exactly those modalities (on top of what was already missing), e.g. ``{"m2": 0.5}``
    ("modality m2 missing for 50% of rows") or ``{("m0", "m1"): 0.2, "m2": 0.3}``. Blocks
    are disjoint sets of rows drawn by a seeded permutation, with exact sizes: block ``k``
    holds ``round(c_k N) - round(c_{k-1} N)`` rows, ``c_k`` the cumulative fraction (so
    the fractions must sum to at most 1). This is the monotone/block pattern of multi-source
    data, where a whole source is absent for a group of rows.

    A row left with no observed modality is a ``ValueError`` (dropped with a warning when
    ``drop_empty=True``). Returns a new data set; the input is not changed.
    """
    names = dataset.names
    if not isinstance(patterns, Mapping) or not patterns:
        raise TypeError("block patterns must be a non-empty mapping {modality or tuple: fraction}")
    sets, fractions = [], []
    for key, frac in patterns.items():
        group = (key,) if isinstance(key, str) else tuple(key)
        unknown = sorted(set(group) - set(names))
        if unknown or not group:
            raise ValueError(
                f"unknown modality {unknown} in block pattern {key!r}: the modalities are {names}"
            )
        if set(group) == set(names):
            raise ValueError(f"block pattern {key!r} misses every modality; rows need one observed")
        frac = float(frac)
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"block fraction of {key!r} must be in [0, 1], got {frac}")
        sets.append(group)
        fractions.append(frac)
    total = sum(fractions)
    if total > 1.0 + 1e-9:
        raise ValueError(
            f"block fractions sum to {total:.6g} > 1; blocks are disjoint sets of rows"
        )
    n = len(dataset)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    cumulative = torch.tensor(fractions, dtype=torch.float64).cumsum(0).tolist()
    bounds = [0] + [min(n, int(round(c * n))) for c in cumulative]
    keep = torch.ones(n, len(names), dtype=torch.bool)
    for group, lo, hi in zip(sets, bounds[:-1], bounds[1:]):
        rows = perm[lo:hi]
        for m in group:
            keep[rows, names.index(m)] = False
    return _apply_rows(dataset, keep, drop_empty)


def _sigmoid_offset(t: torch.Tensor, strength: float, rate: float) -> float:
    """``a`` with ``mean(sigmoid(a + strength * t)) = rate`` (bisection; monotone in ``a``)."""
    lo, hi = -60.0, 60.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(torch.sigmoid(mid + strength * t).mean()) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mnar(
    dataset: MultimodalDataset,
    modality: str,
    rate: float,
    strength: float = 2.0,
    by: str | None = None,
    statistic: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    keep_at_least_one: bool = True,
) -> MultimodalDataset:
    r"""Drop ``modality`` with a probability that depends on a modality's values.

    With ``by = None`` (or ``by = modality``) the probability depends on the values that go
    missing: Missing Not At Random (self-masking, Little & Rubin 2019). With ``by`` another
    modality it depends on observed values: Missing At Random.

    A per-row statistic ``s_i`` of ``by`` (default: the mean of the row's observed entries;
    or ``statistic(data)``, ``(N, *shape) -> (N,)``, on the zero-filled data) is
    standardised to ``t_i`` over the eligible rows, and

    .. math:: P(\text{missing}_i) = \sigma(a + \beta t_i),

    ``beta = strength``, with ``a`` solved so that the mean probability over eligible rows
    is ``rate``. ``strength = +inf`` drops exactly ``round(rate n)`` eligible rows with the
    largest ``t`` (``-inf``: the smallest); ``strength = 0`` is MCAR.

    Eligible rows observe ``modality`` (rows that already miss it stay missing). A row
    whose ``by`` is missing gets ``t = 0``. With ``keep_at_least_one`` rows that observe
    nothing else are not eligible; otherwise rows left empty are dropped with a warning.
    Returns a new data set; the input is not changed.
    """
    names = dataset.names
    by = modality if by is None else by
    for m in (modality, by):
        if m not in names:
            raise ValueError(f"unknown modality {m!r}: the modalities are {names}")
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"missing rate of modality {modality!r} must be in [0, 1], got {rate}")
    strength = float(strength)
    if math.isnan(strength):
        raise ValueError("mnar strength must be a number (or +-inf), got nan")
    batch = dataset.batch()
    rows = _row_matrix(dataset)
    j = names.index(modality)
    eligible = rows[:, j].clone()
    if keep_at_least_one:
        others = torch.cat([rows[:, :j], rows[:, j + 1:]], 1).any(1)
        eligible &= others
    x = batch.data[by].to(torch.float64)
    if statistic is None:
        feat = batch.feature_mask(by)
        w = torch.ones_like(x) if feat is None else feat.to(torch.float64)
        s = (x * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)
    else:
        s = torch.as_tensor(statistic(batch.data[by]), dtype=torch.float64)
        if s.shape != (len(dataset),):
            raise ValueError(
                f"mnar statistic must return shape ({len(dataset)},), got {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()):
            raise ValueError("mnar statistic returned non-finite values")
    known = rows[:, names.index(by)] & eligible
    t = torch.zeros(len(dataset), dtype=torch.float64)
    if bool(known.any()):
        mu = s[known].mean()
        sd = s[known].std(unbiased=False) if int(known.sum()) > 1 else s.new_zeros(())
        t[known] = (s[known] - mu) / (sd if float(sd) > 0 else 1.0)
    g = torch.Generator().manual_seed(seed)
    idx = eligible.nonzero().flatten()
    drop = torch.zeros(len(dataset), dtype=torch.bool)
    if len(idx) and rate > 0:
        te = t[idx]
        u = torch.rand(len(idx), generator=g, dtype=torch.float64)
        if math.isinf(strength):
            k = int(round(rate * len(idx)))
            # rank by t (random tie-break), largest first for +inf
            key = (te if strength > 0 else -te) + 1e-9 * u
            chosen = idx[torch.argsort(key, descending=True)[:k]]
            drop[chosen] = True
        else:
            a = _sigmoid_offset(te, strength, rate)
            drop[idx] = u < torch.sigmoid(a + strength * te)
    keep = torch.ones_like(rows)
    keep[:, j] = ~drop
    return _apply_rows(dataset, keep, drop_empty=not keep_at_least_one)


def feature_mcar(
    dataset: MultimodalDataset,
    rate: float | Mapping[str, float],
    seed: int = 0,
    keep_at_least_one: bool = True,
) -> MultimodalDataset:
    """Drop single entries (features) Missing Completely At Random.

    Each observed entry of modality ``m`` goes missing independently with probability
    ``rate[m]`` (or ``rate`` for every modality); the masks of the touched modalities become
    feature-level, ``(N, *shape)``. With ``keep_at_least_one`` a row that would lose every
    entry gets one of its previously observed entries back, chosen uniformly; otherwise
    such rows are dropped with a warning. Returns a new data set.
    """
    rates = _rates(dataset.names, rate, default=None)
    return _drop_entries(dataset, lambda m, observed: torch.full(observed.shape, rates[m]), rates, seed,
                         keep_at_least_one)


def feature_mnar(
    dataset: MultimodalDataset,
    rate: float | Mapping[str, float],
    strength: float = 2.0,
    seed: int = 0,
    keep_at_least_one: bool = True,
) -> MultimodalDataset:
    r"""Drop single entries Missing Not At Random, by self-masking: large values go missing.

    Each entry's value is standardised over the rows observing it (``t_{ij}``, per entry
    position ``j``; a constant entry gets ``t = 0``), and it goes missing with probability

    .. math:: P(\text{missing}_{ij}) = \sigma(a_m + \beta t_{ij}),

    ``beta = strength`` (negative: small values go missing; 0: MCAR), with ``a_m`` solved so
    that modality ``m``'s mean probability over its observed entries is ``rate[m]`` — the
    self-masking mechanism of Ipsen, Frellsen & Mattei (2021) that ``Modality(missingness=
    "self_masking")`` models. ``keep_at_least_one`` as in :func:`feature_mcar`. Returns a new
    data set.
    """
    rates = _rates(dataset.names, rate, default=None)
    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"feature_mnar strength must be a finite number, got {strength}")

    def probabilities(m: str, observed: torch.Tensor) -> torch.Tensor:
        x = dataset.data[m].to(torch.float64)
        w = observed.to(torch.float64)
        count = w.sum(0).clamp_min(1.0)
        mean = (x * w).sum(0) / count
        sd = (((x - mean) ** 2 * w).sum(0) / count).sqrt()
        t = torch.where(sd > 0, (x - mean) / torch.where(sd > 0, sd, 1.0), torch.zeros_like(x))
        a = _sigmoid_offset(t[observed], strength, rates[m]) if bool(observed.any()) else 0.0
        return torch.sigmoid(a + strength * t).to(torch.float32)

    return _drop_entries(dataset, probabilities, rates, seed, keep_at_least_one)


def _drop_entries(
    dataset: MultimodalDataset,
    probabilities: Callable[[str, torch.Tensor], torch.Tensor],
    rates: Mapping[str, float],
    seed: int,
    keep_at_least_one: bool,
) -> MultimodalDataset:
    """Each observed entry of a modality ``m`` in ``rates`` goes missing with its probability
    ``probabilities(m, observed)`` (``(N, *shape)``); rows left with nothing get one entry back."""
    names = dataset.names
    g = torch.Generator().manual_seed(seed)
    n = len(dataset)
    before, after = {}, {}
    for m in names:
        mask = dataset.obs_mask[m]
        full = mask.reshape((n,) + (1,) * (dataset.data[m].dim() - 1)).expand(dataset.data[m].shape)
        before[m] = full
        if m in rates:
            u = torch.rand(full.shape, generator=g)
            after[m] = full & ~(u < probabilities(m, full))
        else:
            after[m] = mask
    if keep_at_least_one:
        had = torch.zeros(n, dtype=torch.bool)
        has = torch.zeros(n, dtype=torch.bool)
        for m in names:
            had |= before[m].flatten(1).any(1)
            a = after[m]
            has |= a if a.dim() == 1 else a.flatten(1).any(1)
        lost = (had & ~has).nonzero().flatten()
        if len(lost):
            flat = torch.cat([before[m][lost].flatten(1) for m in names], 1)
            scores = torch.rand(flat.shape, generator=g).masked_fill(~flat, -1.0)
            pick = scores.argmax(1)
            start = 0
            for m in names:
                size = before[m][0].numel()
                hit = (pick >= start) & (pick < start + size)
                if bool(hit.any()):
                    a = after[m]
                    if a.dim() == 1:
                        a = a.clone()
                        a[lost[hit]] = True
                    else:
                        a = a.clone()
                        a.view(n, -1)[lost[hit], pick[hit] - start] = True
                    after[m] = a
                start += size
    return dataset.with_obs_mask(after, drop_empty=not keep_at_least_one)


def pattern_histogram(
    dataset: MultimodalDataset, normalize: bool = False
) -> dict[tuple[str, ...], float]:
    """How many rows observe each set of modalities.

    Keys are the observed modality names of a pattern, in the data set's order (a row with
    a feature-level mask observes a modality when it observes any of its entries); values
    are row counts (fractions with ``normalize=True``), most frequent pattern first.
    """
    rows = _row_matrix(dataset)
    names = dataset.names
    patterns, counts = torch.unique(rows, dim=0, return_counts=True)
    out = []
    for p, c in zip(patterns.tolist(), counts.tolist()):
        out.append((tuple(m for m, o in zip(names, p) if o), c))
    out.sort(key=lambda kv: (-kv[1], [names.index(m) for m in kv[0]]))
    total = max(len(dataset), 1)
    return {k: (c / total if normalize else c) for k, c in out}
