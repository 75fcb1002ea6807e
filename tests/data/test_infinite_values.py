"""+inf / -inf in an observed entry is refused like NaN, naming the modality; a missing entry may
hold anything (NaN and inf included) and becomes a zero."""

from __future__ import annotations

import pytest
import torch

from pyromv.data import Modality, MultimodalDataset, make_batch

MODS = [Modality("img", (2, 2), "bernoulli"), Modality("vec", (3,), "normal")]


def _data():
    return {"img": torch.ones(4, 2, 2) * 0.5, "vec": torch.randn(4, 3)}


CASES = [(build, value) for build in (MultimodalDataset, make_batch, MultimodalDataset.from_nan)
         for value in (float("inf"), float("-inf"), float("nan"))
         if not (build.__name__ == "from_nan" and value != value)]  # from_nan reads NaN as missing


@pytest.mark.parametrize(("build", "value"), CASES)
def test_non_finite_observed_entries_are_refused(build, value):
    data = _data()
    data["vec"][2, 1] = value
    with pytest.raises(ValueError, match="modality 'vec'.*row 2"):
        build(MODS, data)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e30])
def test_missing_entries_may_hold_anything(value):
    data = _data()
    data["vec"][2, 1] = value
    data["img"][1] = value
    mask = {"vec": torch.ones(4, 3, dtype=torch.bool), "img": torch.tensor([True, False, True, True])}
    mask["vec"][2, 1] = False
    ds = MultimodalDataset(MODS, data, mask)
    assert ds.data["vec"][2, 1] == 0 and bool((ds.data["img"][1] == 0).all())
    assert all(bool(torch.isfinite(v).all()) for v in ds.data.values())
