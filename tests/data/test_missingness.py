import math

import pytest
import torch

from pyromv.data import Modality, MultimodalDataset, mcar

NAMES = ["a", "b", "c"]


def _dataset(n: int, obs_mask=None, feature_level: bool = False) -> MultimodalDataset:
    mods = [Modality(m, (2, 2) if feature_level and m == "a" else (3,)) for m in NAMES]
    g = torch.Generator().manual_seed(0)
    data = {mod.name: torch.randn(n, *mod.shape, generator=g) for mod in mods}
    return MultimodalDataset(mods, data, obs_mask, labels=torch.arange(n))


def _rows(ds: MultimodalDataset) -> torch.Tensor:
    """``(N, M)`` row-level observation matrix."""
    batch = ds.batch()
    return torch.stack([batch.row_mask(m) for m in ds.names], 1)


def _tolerance(p: float, n: int, sigmas: float = 4.0) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n)


def test_realised_rate_matches_requested_rate():
    # with one modality always kept, no row can lose everything: each drop is Bernoulli(rate)
    n, rate = 4000, 0.3
    out = mcar(_dataset(n), {"a": rate, "b": rate, "c": 0.0}, seed=1)
    missing = 1.0 - _rows(out).float().mean(0)
    for j in range(2):
        assert abs(float(missing[j]) - rate) < _tolerance(rate, n)
    assert float(missing[2]) == 0.0


def test_realised_rate_with_keep_at_least_one():
    # a row that loses all M modalities (probability r^M) gets one back, chosen uniformly,
    # so each modality is missing with probability r - r^M / M
    n, rate, m = 4000, 0.6, len(NAMES)
    out = mcar(_dataset(n), rate, seed=2)
    expected = rate - rate**m / m
    missing = 1.0 - _rows(out).float().mean(0)
    for j in range(m):
        assert abs(float(missing[j]) - expected) < _tolerance(expected, n)


def test_seeded_reproducibility():
    ds = _dataset(200)
    a = mcar(ds, 0.5, seed=7)
    b = mcar(ds, 0.5, seed=7)
    c = mcar(ds, 0.5, seed=8)
    assert torch.equal(_rows(a), _rows(b))
    assert not torch.equal(_rows(a), _rows(c))


@pytest.mark.parametrize("rate", [0.5, 0.9, 1.0])
def test_keep_at_least_one(rate):
    out = mcar(_dataset(300), rate, seed=0)
    assert len(out) == 300
    assert _rows(out).any(1).all()
    if rate == 1.0:
        assert (_rows(out).sum(1) == 1).all()


def test_without_keep_at_least_one_empty_rows_are_dropped_with_warning():
    ds = _dataset(300)
    with pytest.warns(UserWarning, match="observe no modality"):
        out = mcar(ds, 0.9, seed=0, keep_at_least_one=False)
    assert 0 < len(out) < 300
    assert _rows(out).any(1).all()


def test_zero_rate_modality_stays_observed():
    out = mcar(_dataset(500), {"a": 0.0, "b": 0.8}, seed=3)
    rows = _rows(out)
    assert rows[:, 0].all()
    assert rows[:, 2].all()  # absent from the dict: rate 0
    assert not rows[:, 1].all()


def test_zero_rate_is_identity():
    ds = _dataset(50)
    out = mcar(ds, 0.0, seed=0)
    for m in ds.names:
        assert torch.equal(out.obs_mask[m], ds.obs_mask[m])
        assert torch.equal(out.data[m], ds.data[m])


def test_unknown_modality_in_rate():
    with pytest.raises(ValueError, match=r"unknown modality \['z'\]"):
        mcar(_dataset(10), {"a": 0.5, "z": 0.1})


@pytest.mark.parametrize("rate", [-0.1, 1.5, {"b": 2.0}])
def test_rate_outside_unit_interval(rate):
    with pytest.raises(ValueError, match=r"missing rate of modality '[abc]' must be in \[0, 1\]"):
        mcar(_dataset(10), rate)


def test_only_removes_observations():
    n = 400
    g = torch.Generator().manual_seed(4)
    rows = torch.rand(n, 3, generator=g) < 0.7
    rows[:, 1] |= ~rows.any(1)  # every row observes something
    feature = torch.rand(n, 2, 2, generator=g) < 0.8
    feature[:, 0, 0] = rows[:, 0]
    feature &= rows[:, 0, None, None]
    masks = {"a": feature, "b": rows[:, 1], "c": rows[:, 2]}
    ds = _dataset(n, masks, feature_level=True)
    out = mcar(ds, 0.6, seed=5)
    assert len(out) == n
    for m in NAMES:
        before, after = ds.obs_mask[m], out.obs_mask[m]
        assert after.shape == before.shape
        assert not (after & ~before).any()  # nothing added back
        # a kept feature-level modality keeps its feature pattern unchanged
        kept = out.batch().row_mask(m)
        assert torch.equal(after[kept], before[kept])
    assert _rows(out).any(1).all()
    # newly missing entries are zero-filled; observed ones keep their values
    for m in NAMES:
        mask = out.obs_mask[m]
        mask = mask.reshape(mask.shape + (1,) * (out.data[m].dim() - mask.dim()))
        assert torch.equal(out.data[m] * mask, out.data[m])
        assert torch.equal(torch.where(mask, ds.data[m], 0.0), out.data[m])


def test_input_dataset_not_mutated():
    ds = _dataset(100)
    data = {m: v.clone() for m, v in ds.data.items()}
    masks = {m: v.clone() for m, v in ds.obs_mask.items()}
    rate = {"a": 0.5, "b": 0.5}
    mcar(ds, rate, seed=0)
    assert rate == {"a": 0.5, "b": 0.5}
    for m in ds.names:
        assert torch.equal(ds.data[m], data[m])
        assert torch.equal(ds.obs_mask[m], masks[m])
