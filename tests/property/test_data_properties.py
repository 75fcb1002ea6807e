"""Property-based tests of the data layer (issue 16, item 6).

Random modality specs, shapes, dtypes, values (NaN, +-inf, values outside the likelihood's
support, image bytes, huge numbers) and masks (row-level, feature-level, 0/1, malformed) either
build a data set whose batches give a finite loss and finite gradients under a product-of-experts
model (MVAE) and a mixture model (MMVAE), or are refused by pyromv itself with a ValueError or
TypeError naming the modality: never a NaN loss, never an error raised inside torch or Pyro.
Deterministic (``derandomize=True``) so CI sees the same examples each run.
"""

from __future__ import annotations

import math
import traceback
import warnings

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyromv.data import Modality, MultimodalDataset, mcar
from pyromv.models import MMVAE, MVAE, MMVAEConfig, MVAEConfig

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [6]}}
NAN, INF = float("nan"), float("inf")
# values a hostile or careless user passes: outside [0, 1], non-codes, bytes, huge, non-finite
MESSY = [0.0, 1.0, 0.5, 2.0, 3.0, -1.0, 255.0, 1.5, 1e6, -1e6, 1e300, NAN, INF, -INF]
DTYPES = [torch.float32, torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8,
          torch.bool]


@st.composite
def modality(draw, name: str) -> Modality:
    likelihood = draw(st.sampled_from(
        ["normal", "laplace", "bernoulli", "continuous_bernoulli", "categorical", "tabular"]))
    kwargs: dict = {}
    if likelihood == "tabular":
        cards = draw(st.lists(st.sampled_from([0, 2, 3]), min_size=1, max_size=3))
        shape: tuple[int, ...] = (len(cards),)
        kwargs = {"cardinalities": cards}
    else:
        shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
        if likelihood == "categorical":
            kwargs = {"num_categories": draw(st.integers(2, 4))}
    return Modality(name, shape, likelihood, kwargs, encoder=MLP, decoder=MLP)


def _clean(spec: Modality) -> st.SearchStrategy:
    """Values inside the support of ``spec``'s likelihood (one entry; tabular: any column)."""
    if spec.likelihood in ("bernoulli", "continuous_bernoulli"):
        return st.floats(0.0, 1.0, width=32)
    if spec.likelihood == "categorical":
        return st.integers(0, spec.likelihood_kwargs["num_categories"] - 1).map(float)
    if spec.likelihood == "tabular":
        return st.integers(0, 1).map(float)  # a code of every column, a value of continuous ones
    return st.floats(-1e6, 1e6, width=32)


@st.composite
def values(draw, spec: Modality, n: int) -> torch.Tensor:
    size = n * math.prod(spec.shape)
    mode = draw(st.sampled_from(["clean", "messy"]))
    entry = _clean(spec) if mode == "clean" else st.sampled_from(MESSY)
    flat = draw(st.lists(entry, min_size=size, max_size=size))
    x = torch.tensor(flat, dtype=torch.float64).reshape(n, *spec.shape)
    dtype = draw(st.sampled_from(DTYPES)) if mode == "messy" else draw(st.sampled_from(DTYPES[:4]))
    if not dtype.is_floating_point:
        x = torch.nan_to_num(x, nan=0.0, posinf=1e9, neginf=-1e9).clamp(-1e9, 1e9)
        if dtype == torch.uint8:
            x = x.clamp(0, 255)
    return x.to(dtype)


@st.composite
def mask(draw, spec: Modality, n: int):
    kind = draw(st.sampled_from(["none"] * 4 + ["rows", "features"] * 2 + ["zero_one", "fraction", "wrong_shape"]))
    if kind == "none":
        return None
    if kind == "rows":
        return torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool)
    if kind == "zero_one":
        return torch.tensor(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=torch.int64)
    if kind == "fraction":
        return torch.full((n,), 0.5)
    if kind == "wrong_shape":
        return torch.ones(n + 1, dtype=torch.bool)
    size = n * math.prod(spec.shape)
    flat = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    return torch.tensor(flat, dtype=torch.bool).reshape(n, *spec.shape)


@st.composite
def raw_dataset(draw):
    n_mods = draw(st.integers(1, 3))
    specs = [draw(modality(f"m{i}")) for i in range(n_mods)]
    n = draw(st.sampled_from([1, 2, 3, 4] * 3 + [0]))
    data = {s.name: draw(values(s, n)) for s in specs}
    masks = {s.name: draw(mask(s, n)) for s in specs}
    return specs, data, {m: v for m, v in masks.items() if v is not None}


def _raised_by_pyromv(err: BaseException) -> bool:
    """The error was raised in pyromv's code, not deep inside torch or Pyro."""
    last = traceback.extract_tb(err.__traceback__)[-1]
    return "/pyromv/" in last.filename.replace("\\", "/") and "/site-packages/" not in last.filename


def _assert_finite_loss_and_gradients(model, batch) -> None:
    loss = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    assert torch.isfinite(loss), f"{type(model).__name__}: loss {loss} on a batch the data layer accepted"
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{type(model).__name__}: gradient of {name}"


@SETTINGS
@given(raw_dataset())
def test_random_data_build_a_valid_data_set_or_are_refused_naming_the_modality(example):
    specs, data, masks = example
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # drop_empty is not used: no warning expected anyway
            ds = MultimodalDataset(specs, data, masks)
    except (ValueError, TypeError) as err:
        message = str(err)
        assert _raised_by_pyromv(err), f"raised inside a dependency: {message}"
        named = any(f"'{s.name}'" in message for s in specs)
        assert named or "observe no modality" in message, message
        kinds = ["outside the support", "NaN", "uint8", "empty", "observe no modality", "obs_mask"]
        event(f"refused: {next((k for k in kinds if k in message), 'other')}")
        return
    event("built, loss checked")
    assert len(ds) >= 1
    for s in specs:
        x, m = ds.data[s.name], ds.obs_mask[s.name]
        assert m.dtype == torch.bool and m.shape in {(len(ds),), x.shape}
        if s.likelihood == "categorical":
            k = s.likelihood_kwargs["num_categories"]
            assert x.dtype == torch.long and bool(((x >= 0) & (x < k)).all())
        else:
            assert x.dtype == torch.get_default_dtype() and bool(torch.isfinite(x).all())
            if s.likelihood in ("bernoulli", "continuous_bernoulli"):
                assert bool(((x >= 0) & (x <= 1)).all())
    assert bool(ds.batch().observed_counts().ge(1).all())
    torch.manual_seed(0)
    batch = ds.batch()
    _assert_finite_loss_and_gradients(MVAE(specs, MVAEConfig(latent_dim=2)), batch)
    _assert_finite_loss_and_gradients(MMVAE(specs, MMVAEConfig(latent_dim=2)), batch)


@SETTINGS
@given(n=st.integers(1, 30), batch_size=st.integers(1, 70), shuffle=st.booleans(), drop_last=st.booleans(),
       seed=st.integers(0, 2**16))
def test_batches_cover_every_row_at_most_once_whatever_the_batch_size(n, batch_size, shuffle, drop_last, seed):
    ds = MultimodalDataset([Modality("a", (2,))], {"a": torch.randn(n, 2)}, labels=torch.arange(n))
    got = [b.labels for b in ds.batches(batch_size, shuffle=shuffle,
                                        generator=torch.Generator().manual_seed(seed), drop_last=drop_last)]
    rows = torch.cat(got).tolist() if got else []
    assert len(rows) == len(set(rows))
    assert len(rows) == (n - n % batch_size if drop_last else n)
    assert all(len(b) == batch_size for b in got[:-1]) and all(len(b) <= batch_size for b in got)


@SETTINGS
@given(n=st.integers(1, 12), rate=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       fraction=st.floats(0.01, 0.99))
def test_missingness_and_holdout_keep_a_valid_data_set(n, rate, seed, fraction):
    g = torch.Generator().manual_seed(seed)
    specs = [Modality("a", (2,), encoder=MLP, decoder=MLP),
             Modality("b", (3,), "bernoulli", encoder=MLP, decoder=MLP)]
    ds = MultimodalDataset(specs, {"a": torch.randn(n, 2, generator=g), "b": torch.rand(n, 3, generator=g)})
    partial = mcar(ds, rate, seed=seed)
    assert len(partial) == n and bool(partial.batch().observed_counts().ge(1).all())
    if n == 1:
        with pytest.warns(UserWarning, match="too few to hold out a validation set"):
            train, val = partial.holdout(fraction, seed=seed)
        assert val is None and train is partial
    else:
        train, val = partial.holdout(fraction, seed=seed)
        assert len(train) >= 1 and len(val) >= 1 and len(train) + len(val) == n
    torch.manual_seed(seed)
    _assert_finite_loss_and_gradients(MVAE(specs, MVAEConfig(latent_dim=2)), train.batch())
