import numpy as np
import pytest
import torch

from pyromv.data import Modality, MultimodalBatch, MultimodalDataset, collate, make_batch
from pyromv.data.validation import validate_data

N = 6
MODS = [Modality("img", (2, 3)), Modality("vec", (4,))]


def _data(n: int = N) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"img": torch.randn(n, 2, 3, generator=g), "vec": torch.randn(n, 4, generator=g)}


def _masks(n: int = N) -> dict[str, torch.Tensor]:
    return {"img": torch.ones(n, dtype=torch.bool), "vec": torch.ones(n, dtype=torch.bool)}


# ---------------------------------------------------------------- errors name problem and modality


def test_unknown_modality_in_data():
    data = {**_data(), "audio": torch.zeros(N, 3)}
    with pytest.raises(ValueError, match=r"unknown modality \['audio'\]"):
        MultimodalDataset(MODS, data)


def test_unknown_modality_in_mask():
    with pytest.raises(ValueError, match=r"obs_mask.*unknown modality \['audio'\]"):
        MultimodalDataset(MODS, _data(), {"audio": torch.ones(N, dtype=torch.bool)})


def test_absent_modality():
    data = _data()
    del data["vec"]
    with pytest.raises(ValueError, match=r"no data for modality \['vec'\]"):
        MultimodalDataset(MODS, data)


@pytest.mark.parametrize("shape", [(N, 3, 2), (N, 6), (N, 2, 3, 1), (2, 3)])
def test_wrong_row_shape(shape):
    data = {**_data(), "img": torch.zeros(shape)}
    with pytest.raises(ValueError, match=r"modality 'img': expected data of shape \(N, 2, 3\)"):
        MultimodalDataset(MODS, data)


def test_row_count_mismatch():
    data = {**_data(), "vec": torch.zeros(N + 1, 4)}
    match = f"modality 'vec' has {N + 1} rows but modality 'img' has {N}"
    with pytest.raises(ValueError, match=match):
        MultimodalDataset(MODS, data)


def test_not_an_array():
    data = {**_data(), "vec": [[0.0] * 4] * N}
    with pytest.raises(TypeError, match="modality 'vec'.*list"):
        MultimodalDataset(MODS, data)


def test_nan_in_observed_entry():
    data = _data()
    data["vec"][3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"modality 'vec': NaN in an observed entry \(row 3\)"):
        MultimodalDataset(MODS, data)


def test_nan_in_observed_feature_entry():
    data = _data()
    data["img"][2, 1, 0] = float("nan")
    mask = torch.ones(N, 2, 3, dtype=torch.bool)
    mask[2, 0, 0] = False  # a different entry is missing: the NaN one is observed
    with pytest.raises(ValueError, match=r"modality 'img': NaN in an observed entry \(row 2\)"):
        MultimodalDataset(MODS, data, {"img": mask})


def test_nan_in_missing_entry_becomes_zero():
    data = _data()
    data["vec"][3] = float("nan")
    masks = _masks()
    masks["vec"][3] = False
    ds = MultimodalDataset(MODS, data, masks)
    assert not any(torch.isnan(v).any() for v in ds.data.values())
    assert torch.equal(ds.data["vec"][3], torch.zeros(4))
    assert torch.equal(ds.data["vec"][:3], data["vec"][:3])


@pytest.mark.parametrize("shape", [(N + 1,), (N, 2), (N, 3, 2), (N, 1)])
def test_mask_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"obs_mask of modality 'img' has shape"):
        MultimodalDataset(MODS, _data(), {"img": torch.ones(shape, dtype=torch.bool)})


def test_mask_non_boolean():
    mask = torch.full((N,), 0.5)
    with pytest.raises(ValueError, match="obs_mask of modality 'vec' must be boolean"):
        MultimodalDataset(MODS, _data(), {"vec": mask})


def test_mask_zero_one_is_accepted():
    mask = torch.tensor([1, 0, 1, 1, 1, 1])
    ds = MultimodalDataset(MODS, _data(), {"vec": mask})
    assert ds.obs_mask["vec"].dtype == torch.bool
    assert ds.obs_mask["vec"].tolist() == [True, False, True, True, True, True]


def test_row_with_nothing_observed():
    masks = _masks()
    masks["img"][4] = False
    masks["vec"][4] = False
    with pytest.raises(ValueError, match=r"1 row\(s\) observe no modality \(first: row 4\)"):
        MultimodalDataset(MODS, _data(), masks)


def test_feature_mask_all_false_counts_as_unobserved():
    masks = {"img": torch.ones(N, 2, 3, dtype=torch.bool), "vec": _masks()["vec"]}
    masks["img"][1] = False
    masks["vec"][1] = False
    with pytest.raises(ValueError, match=r"row\(s\) observe no modality \(first: row 1\)"):
        MultimodalDataset(MODS, _data(), masks)


def test_drop_empty_drops_with_warning():
    data = _data()
    labels = torch.arange(N)
    masks = _masks()
    for m in masks:
        masks[m][[1, 4]] = False
    with pytest.warns(UserWarning, match=r"dropping 2 row\(s\)"):
        ds = MultimodalDataset(MODS, data, masks, labels=labels, drop_empty=True)
    assert len(ds) == N - 2
    assert ds.labels.tolist() == [0, 2, 3, 5]
    assert torch.equal(ds.data["vec"], data["vec"][[0, 2, 3, 5]])


def test_labels_wrong_length():
    with pytest.raises(ValueError, match=rf"labels .*{N}"):
        MultimodalDataset(MODS, _data(), labels=torch.arange(N - 1))


def test_duplicate_modality_names():
    mods = [Modality("img", (2, 3)), Modality("img", (4,))]
    with pytest.raises(ValueError, match="modality 'img' is listed twice"):
        MultimodalDataset(mods, {"img": torch.zeros(N, 2, 3)})


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "x y", "_hidden"])
def test_invalid_modality_name(name):
    with pytest.raises(ValueError, match=f"modality name {name!r}"):
        Modality(name, (3,))


def test_bad_modality_shape_and_rescale():
    with pytest.raises(ValueError, match=r"modality 'a': shape \(3, 0\)"):
        Modality("a", (3, 0))
    with pytest.raises(ValueError, match="modality 'a': rescale"):
        Modality("a", (3,), rescale=0.0)


def test_no_modalities_and_non_modality_specs():
    with pytest.raises(ValueError, match="at least one modality"):
        MultimodalDataset([], {})
    with pytest.raises(TypeError, match="expected Modality specs"):
        MultimodalDataset(["img"], {"img": torch.zeros(N, 2)})


# ---------------------------------------------------------------- behaviour


def test_callers_arrays_are_not_mutated():
    data = _data()
    data["vec"][2] = float("nan")
    masks = {"img": torch.ones(N, 2, 3, dtype=torch.bool), "vec": _masks()["vec"]}
    masks["img"][0, 1, 2] = False
    masks["vec"][2] = False
    labels = torch.arange(N)
    before = {m: v.clone() for m, v in data.items()}
    mask_before = {m: v.clone() for m, v in masks.items()}
    ds = MultimodalDataset(MODS, data, masks, labels=labels)
    assert torch.equal(data["img"], before["img"])
    assert torch.isnan(data["vec"][2]).all() and torch.equal(data["vec"][:2], before["vec"][:2])
    for m in masks:
        assert torch.equal(masks[m], mask_before[m])
    # and the data set owns its tensors: changing it does not reach the caller
    ds.data["img"].zero_()
    ds.obs_mask["vec"].zero_()
    ds.labels.zero_()
    assert torch.equal(data["img"], before["img"])
    assert torch.equal(masks["vec"], mask_before["vec"])
    assert torch.equal(labels, torch.arange(N))


def test_numpy_input_not_mutated_and_converted():
    arr = np.arange(N * 4, dtype=np.float64).reshape(N, 4)
    arr[1] = np.nan
    copy = arr.copy()
    img = np.zeros((N, 2, 3), dtype=np.float32)
    ds = MultimodalDataset(
        MODS, {"img": img, "vec": arr}, {"vec": np.array([True, False] + [True] * 4)}
    )
    np.testing.assert_array_equal(arr, copy)
    assert ds.data["img"].dtype == torch.float32
    assert torch.equal(ds.data["vec"][1], torch.zeros(4, dtype=ds.data["vec"].dtype))


def test_integer_data_becomes_default_float():
    ds = MultimodalDataset([Modality("vec", (4,))], {"vec": torch.ones(N, 4, dtype=torch.int64)})
    assert ds.data["vec"].dtype == torch.get_default_dtype()


def test_feature_level_mask_zero_fills_only_missing_entries():
    data = _data()
    mask = torch.rand(N, 2, 3, generator=torch.Generator().manual_seed(2)) > 0.4
    mask[:, 0, 0] = True  # every row observes something
    data["img"] = torch.where(mask, data["img"], torch.tensor(float("nan")))
    ds = MultimodalDataset(MODS, data, {"img": mask})
    assert torch.equal(ds.obs_mask["img"], mask)
    assert torch.equal(ds.data["img"][mask], data["img"][mask])
    assert torch.equal(ds.data["img"][~mask], torch.zeros(int((~mask).sum())))
    batch = ds.batch()
    assert torch.equal(batch.feature_mask("img"), mask)
    assert batch.feature_mask("vec") is None
    assert batch.row_mask("img").all()


def test_from_nan_infers_row_and_feature_masks():
    data = _data()
    data["vec"][2] = float("nan")  # whole modality missing in row 2: row-level mask
    data["img"][1, 0, 2] = float("nan")  # one entry missing: feature-level mask
    data["img"][3] = float("nan")
    ds = MultimodalDataset.from_nan(MODS, data)
    assert ds.obs_mask["vec"].shape == (N,)
    assert ds.obs_mask["vec"].tolist() == [True, True, False, True, True, True]
    assert ds.obs_mask["img"].shape == (N, 2, 3)
    expected = ~torch.isnan(data["img"])
    assert torch.equal(ds.obs_mask["img"], expected)
    assert not any(torch.isnan(v).any() for v in ds.data.values())
    assert ds.batch().row_mask("img").tolist() == [True, True, True, False, True, True]


def test_from_nan_empty_row():
    data = _data()
    data["vec"][0] = float("nan")
    data["img"][0] = float("nan")
    with pytest.raises(ValueError, match="observe no modality"):
        MultimodalDataset.from_nan(MODS, data)
    with pytest.warns(UserWarning, match="dropping 1 row"):
        ds = MultimodalDataset.from_nan(MODS, data, drop_empty=True)
    assert len(ds) == N - 1


@pytest.mark.parametrize("batch_size, drop_last", [(4, False), (3, False), (4, True), (50, False)])
def test_batches_cover_every_row_once(batch_size, drop_last):
    n = 10
    ds = MultimodalDataset(MODS, _data(n), labels=torch.arange(n))
    seen = [
        b.labels
        for b in ds.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                            drop_last=drop_last)
    ]
    assert all(len(b) == batch_size for b in seen[:-1])
    seen_all = torch.cat(seen)
    if drop_last:
        assert len(seen_all) == n - n % batch_size
        assert len(set(seen_all.tolist())) == len(seen_all)
    else:
        assert sorted(seen_all.tolist()) == list(range(n))
    # seeded: the same generator seed gives the same order; no shuffle keeps the order
    again = torch.cat([
        b.labels
        for b in ds.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                            drop_last=drop_last)
    ])
    assert torch.equal(seen_all, again)
    plain = torch.cat([b.labels for b in ds.batches(batch_size)])
    assert torch.equal(plain, torch.arange(n))


def test_batches_data_follow_labels():
    n = 10
    data = _data(n)
    ds = MultimodalDataset(MODS, data, labels=torch.arange(n))
    for b in ds.batches(3, shuffle=True, generator=torch.Generator().manual_seed(5)):
        assert torch.equal(b.data["vec"], data["vec"][b.labels])


def test_split_disjoint_and_reproducible():
    n = 20
    ds = MultimodalDataset(MODS, _data(n), labels=torch.arange(n))
    a, b = ds.split(0.25, seed=3)
    assert (len(a), len(b)) == (15, 5)
    assert not set(a.labels.tolist()) & set(b.labels.tolist())
    assert sorted(a.labels.tolist() + b.labels.tolist()) == list(range(n))
    a2, b2 = ds.split(0.25, seed=3)
    assert torch.equal(a.labels, a2.labels) and torch.equal(b.labels, b2.labels)
    _, b3 = ds.split(0.25, seed=4)
    assert not torch.equal(b.labels, b3.labels)
    with pytest.raises(ValueError, match="fraction"):
        ds.split(1.0)


def test_collate_of_rows_equals_batch():
    masks = {"img": torch.ones(N, 2, 3, dtype=torch.bool), "vec": _masks()["vec"]}
    masks["img"][1, 0] = False
    masks["vec"][[0, 3]] = False
    ds = MultimodalDataset(MODS, _data(), masks, labels=torch.arange(N))
    idx = [4, 0, 3]
    got = collate([ds[i] for i in idx])
    want = ds.batch(torch.tensor(idx))
    for m in ds.names:
        assert torch.equal(got.data[m], want.data[m])
        assert torch.equal(got.obs_mask[m], want.obs_mask[m])
    assert torch.equal(got.labels, want.labels)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    first = next(iter(loader))
    assert isinstance(first, MultimodalBatch) and torch.equal(first.labels, torch.arange(4))


def test_make_batch_validates():
    batch = make_batch(MODS, _data())
    assert batch.batch_size == N and batch.names == ["img", "vec"]
    with pytest.raises(ValueError, match="modality 'vec'"):
        make_batch(MODS, {**_data(), "vec": torch.zeros(N, 5)})


def test_restrict_and_with_row_masks_do_not_mutate():
    masks = {"img": torch.ones(N, 2, 3, dtype=torch.bool), "vec": _masks()["vec"]}
    batch = MultimodalDataset(MODS, _data(), masks).batch()
    snapshot = {m: v.clone() for m, v in batch.obs_mask.items()}

    only_img = batch.restrict(["img"])
    assert not only_img.row_mask("vec").any()
    assert torch.equal(only_img.obs_mask["img"], snapshot["img"])
    with pytest.raises(ValueError, match=r"unknown modality \['txt'\]"):
        batch.restrict(["txt"])

    rows = torch.tensor([True, False, True, False, True, False])
    masked = batch.with_row_masks({"img": rows, "vec": ~rows})
    assert torch.equal(masked.row_mask("img"), rows)
    assert torch.equal(masked.row_mask("vec"), ~rows)
    assert masked.obs_mask["img"].shape == (N, 2, 3)

    for m in batch.names:
        assert torch.equal(batch.obs_mask[m], snapshot[m])
    assert batch.observed_counts().tolist() == [2] * N
    assert masked.observed_counts().tolist() == [1] * N


def test_batch_index_and_to():
    batch = MultimodalDataset(MODS, _data(), labels=torch.arange(N)).batch()
    sub = batch.index(torch.tensor([1, 3]))
    assert len(sub) == 2 and sub.labels.tolist() == [1, 3]
    moved = sub.to("cpu")
    assert torch.equal(moved.data["img"], sub.data["img"])


def test_validate_data_returns_new_tensors():
    data = _data()
    out, masks, labels = validate_data(MODS, data)
    assert labels is None
    assert out["img"].data_ptr() != data["img"].data_ptr()
    assert all(m.dtype == torch.bool and m.shape == (N,) for m in masks.values())
