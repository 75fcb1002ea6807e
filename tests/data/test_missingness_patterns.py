import math
from collections import Counter

import pytest
import torch

from pyromv.data import (
    Modality,
    MultimodalDataset,
    block,
    feature_mcar,
    feature_mnar,
    mcar,
    mnar,
    pattern_histogram,
)

NAMES = ["a", "b", "c"]


def _dataset(n: int, obs_mask=None) -> MultimodalDataset:
    mods = [Modality(m, (2, 3) if m == "a" else (3,)) for m in NAMES]
    g = torch.Generator().manual_seed(0)
    data = {mod.name: torch.randn(n, *mod.shape, generator=g) for mod in mods}
    return MultimodalDataset(mods, data, obs_mask, labels=torch.arange(n))


def _rows(ds: MultimodalDataset) -> torch.Tensor:
    batch = ds.batch()
    return torch.stack([batch.row_mask(m) for m in ds.names], 1)


# ---------------------------------------------------------------- block
def test_block_exact_disjoint_blocks():
    n = 200
    out = block(_dataset(n), {"b": 0.5, ("a", "c"): 0.25}, seed=3)
    rows = _rows(out)
    assert int((~rows[:, 1]).sum()) == 100
    miss_ac = ~rows[:, 0] & ~rows[:, 2]
    assert int(miss_ac.sum()) == 50 and int((~rows[:, 0]).sum()) == 50
    assert not bool((miss_ac & ~rows[:, 1]).any())  # the blocks are disjoint
    assert pattern_histogram(out) == {("a", "b", "c"): 50, ("a", "c"): 100, ("b",): 50}
    again = block(_dataset(n), {"b": 0.5, ("a", "c"): 0.25}, seed=3)
    assert torch.equal(_rows(again), rows)
    assert not torch.equal(_rows(block(_dataset(n), {"b": 0.5, ("a", "c"): 0.25}, seed=4)), rows)


def test_block_keeps_feature_masks_and_inputs():
    ds = _dataset(10, {"a": torch.rand(10, 2, 3) > 0.3})
    before = {m: v.clone() for m, v in ds.obs_mask.items()}
    out = block(ds, {"a": 0.3}, seed=0, drop_empty=True)
    assert out.obs_mask["a"].shape == (10, 2, 3)
    assert all(torch.equal(ds.obs_mask[m], before[m]) for m in NAMES)  # input untouched
    assert int((~out.obs_mask["a"].flatten(1).any(1)).sum()) >= 3


def test_block_errors():
    ds = _dataset(10)
    with pytest.raises(ValueError, match="unknown modality"):
        block(ds, {"z": 0.1})
    with pytest.raises(ValueError, match="sum to"):
        block(ds, {"a": 0.6, "b": 0.6})
    with pytest.raises(ValueError, match="every modality"):
        block(ds, {("a", "b", "c"): 0.1})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        block(ds, {"a": 1.5})
    partial = mcar(ds, {"a": 1.0, "b": 1.0})  # rows observe c only
    with pytest.raises(ValueError, match="observe no modality"):
        block(partial, {"c": 0.5})
    with pytest.warns(UserWarning, match="dropping 5 row"):
        assert len(block(partial, {"c": 0.5}, drop_empty=True)) == 5


# ---------------------------------------------------------------- mnar
def test_mnar_rate_and_direction():
    n, rate = 4000, 0.3
    ds = _dataset(n)
    out = mnar(ds, "b", rate, strength=2.0, seed=1)
    miss = ~_rows(out)[:, 1]
    realised = float(miss.float().mean())
    # E[mean p] = rate by construction; the draw is Bernoulli per row
    assert abs(realised - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    value = ds.data["b"].mean(1)
    assert float(value[miss].mean()) > float(value[~miss].mean()) + 0.5  # large values go missing
    low = mnar(ds, "b", rate, strength=-2.0, seed=1)
    assert float(value[~_rows(low)[:, 1]].mean()) < float(value[_rows(low)[:, 1]].mean())
    # strength 0 is MCAR: the missing rows' values look like the rest
    flat = ~_rows(mnar(ds, "b", rate, strength=0.0, seed=1))[:, 1]
    assert abs(float(value[flat].mean()) - float(value[~flat].mean())) < 0.15


def test_mnar_threshold_and_mar():
    n = 1000
    ds = _dataset(n)
    value = ds.data["c"].mean(1)
    out = mnar(ds, "c", 0.2, strength=math.inf)
    miss = ~_rows(out)[:, 2]
    assert int(miss.sum()) == 200
    assert float(value[miss].min()) >= float(value[~miss].max())  # exactly the top 20%
    # MAR: c goes missing by the values of a (a custom statistic of the first entry)
    out = mnar(ds, "c", 0.2, strength=-math.inf, by="a", statistic=lambda x: x[:, 0, 0])
    miss = ~_rows(out)[:, 2]
    first = ds.data["a"][:, 0, 0]
    assert int(miss.sum()) == 200 and float(first[miss].max()) <= float(first[~miss].min())


def test_mnar_keeps_rows_observing_only_the_target():
    ds = mcar(_dataset(300), {"a": 1.0, "c": 1.0})  # every row observes only b
    out = mnar(ds, "b", 0.5)
    assert bool(_rows(out)[:, 1].all())
    with pytest.raises(ValueError, match="unknown modality"):
        mnar(ds, "z", 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mnar(ds, "b", -0.1)
    with pytest.raises(ValueError, match="shape"):
        mnar(_dataset(10), "b", 0.5, statistic=lambda x: x)


# ---------------------------------------------------------------- feature_mcar
def test_feature_mcar_rates_and_masks():
    n, rate = 3000, 0.25
    out = feature_mcar(_dataset(n), {"a": rate, "b": rate})
    assert out.obs_mask["a"].shape == (n, 2, 3) and out.obs_mask["b"].shape == (n, 3)
    assert out.obs_mask["c"].shape == (n,)
    for m, size in (("a", 6), ("b", 3)):
        realised = 1.0 - float(out.obs_mask[m].float().mean())
        assert abs(realised - rate) < 4 * math.sqrt(rate * (1 - rate) / (n * size))
    # masked entries are zero-filled in the data
    assert float(out.data["a"][~out.obs_mask["a"]].abs().sum()) == 0.0


def test_feature_mcar_keeps_one_entry_per_row():
    ds = mcar(_dataset(400), {"a": 1.0, "c": 1.0})  # only b (3 entries) observed
    out = feature_mcar(ds, 0.9, seed=2)
    kept = out.obs_mask["b"].sum(1)
    assert int(kept.min()) >= 1 and len(out) == 400
    # without the guarantee, rows that lose all 3 entries (probability 0.9^3) are dropped
    with pytest.warns(UserWarning, match="dropping"):
        dropped = feature_mcar(ds, 0.9, seed=2, keep_at_least_one=False)
    assert abs(len(dropped) - 400 * (1 - 0.9**3)) < 4 * math.sqrt(400 * 0.729 * 0.271)
    assert int(dropped.obs_mask["b"].sum(1).min()) >= 1


# ---------------------------------------------------------------- feature_mnar
def test_feature_mnar_self_masks_at_the_rate():
    """The mean probability over observed entries is the rate (so the realised rate is within
    binomial error of it), and the entries that go missing are the large ones (positive strength)
    or the small ones (negative)."""
    n, rate = 3000, 0.3
    ds = _dataset(n)
    for strength in (2.0, -2.0):
        out = feature_mnar(ds, {"a": rate, "b": rate}, strength=strength, seed=1)
        assert out.obs_mask["c"].shape == (n,)
        for m, size in (("a", 6), ("b", 3)):
            observed = out.obs_mask[m]
            realised = 1.0 - float(observed.float().mean())
            assert abs(realised - rate) < 4 * math.sqrt(rate * (1 - rate) / (n * size))
            x = ds.data[m]
            gap = float(x[~observed].mean() - x[observed].mean())  # standard normal data
            assert gap > 0.5 if strength > 0 else gap < -0.5, (m, strength, gap)
        assert float(out.data["a"][~out.obs_mask["a"]].abs().sum()) == 0.0


def test_feature_mnar_without_strength_is_feature_mcar():
    """``strength = 0``: every entry's probability is the rate, and the draws are those of
    :func:`feature_mcar` with the same seed (one code path for both)."""
    ds = mcar(_dataset(500), 0.3, seed=4)
    a = feature_mnar(ds, 0.4, strength=0.0, seed=3)
    b = feature_mcar(ds, 0.4, seed=3)
    for m in NAMES:
        assert torch.equal(a.obs_mask[m], b.obs_mask[m])
    with pytest.raises(ValueError, match="strength"):
        feature_mnar(ds, 0.4, strength=math.inf)


# ---------------------------------------------------------------- histogram
def test_pattern_histogram_counts():
    ds = mcar(_dataset(500), 0.4, seed=5)
    hist = pattern_histogram(ds)
    rows = _rows(ds).tolist()
    expected = Counter(tuple(m for m, o in zip(NAMES, r) if o) for r in rows)
    assert hist == dict(expected)
    assert list(hist.values()) == sorted(hist.values(), reverse=True)
    frac = pattern_histogram(ds, normalize=True)
    assert sum(frac.values()) == pytest.approx(1.0)
    assert frac[("a", "b", "c")] == pytest.approx(expected[("a", "b", "c")] / 500)
