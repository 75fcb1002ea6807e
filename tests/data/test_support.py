"""Issue 16, items 1 and 2: observed values checked against each modality's likelihood (once per
data set, vectorised, whatever Pyro's validation setting), integer image data, and the edges of
size (empty data sets refused, one row trains, batches larger than the data set)."""

import time
import warnings

import numpy as np
import pytest
import torch

import pyromv.data.dataset as dataset_module
import pyromv.data.validation as validation_module
from pyromv.data import Modality, MultimodalDataset, make_batch, mcar
from pyromv.metrics.reconstruction import reconstruction_error
from pyromv.models import MMVAE, MVAE, MMVAEConfig, MVAEConfig
from pyromv.training import Trainer, TrainerConfig

MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
INF = float("inf")

# one modality per registered likelihood, and data inside its support
SPECS = {
    "normal": Modality("x", (2, 3), "normal"),
    "laplace": Modality("x", (2, 3), "laplace"),
    "bernoulli": Modality("x", (2, 3), "bernoulli"),
    "continuous_bernoulli": Modality("x", (2, 3), "continuous_bernoulli"),
    "categorical": Modality("x", (2, 3), "categorical", {"num_categories": 4}),
    "tabular": Modality("x", (3,), "tabular", {"cardinalities": [0, 3, 2]}),
}


def _valid(spec: Modality, n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if spec.likelihood == "categorical":
        return torch.randint(0, 4, (n, *spec.shape), generator=g).float()
    if spec.likelihood == "tabular":
        return torch.stack([torch.randn(n, generator=g), torch.randint(0, 3, (n,), generator=g).float(),
                            torch.randint(0, 2, (n,), generator=g).float()], 1)
    if spec.likelihood in ("bernoulli", "continuous_bernoulli"):
        return torch.rand(n, *spec.shape, generator=g)
    return torch.randn(n, *spec.shape, generator=g)


def _mods(likelihood_b: str = "bernoulli") -> list[Modality]:
    return [Modality("a", (3,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
            Modality("b", (4,), likelihood_b, encoder=MLP, decoder=MLP)]


def _data(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(n, 3, generator=g), "b": (torch.rand(n, 4, generator=g) > 0.5).float()}


# ---------------------------------------------------------------- values against the likelihood


@pytest.mark.parametrize("likelihood", sorted(SPECS))
@pytest.mark.parametrize("value", [INF, -INF])
def test_infinite_observed_entry_is_refused_for_every_likelihood(likelihood, value):
    spec = SPECS[likelihood]
    x = _valid(spec)
    x.view(5, -1)[3, 1] = value
    entry = "1" if len(spec.shape) == 1 else r"\(0, 1\)"
    with pytest.raises(ValueError, match=rf"modality 'x': row 3, entry {entry} holds {value}, outside the support "
                                         rf"of its '{likelihood}' likelihood"):
        MultimodalDataset([spec], {"x": x})


@pytest.mark.parametrize("likelihood", sorted(SPECS))
def test_valid_data_and_garbage_in_missing_entries_are_accepted(likelihood):
    spec = SPECS[likelihood]
    x = _valid(spec)
    mask = torch.ones(x.shape, dtype=torch.bool)
    x.view(5, -1)[2, 0] = INF  # missing entries may hold anything: they become zeros
    x.view(5, -1)[4, -1] = -7.5
    mask.view(5, -1)[2, 0] = False
    mask.view(5, -1)[4, -1] = False
    ds = MultimodalDataset([spec], {"x": x}, {"x": mask})
    out = ds.data["x"]
    assert out.dtype == (torch.long if likelihood == "categorical" else torch.get_default_dtype())
    assert torch.equal(out[~mask], torch.zeros(2, dtype=out.dtype))
    assert torch.equal(out[mask], x[mask].to(out.dtype))


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("value", [3.0, -0.25, 1.5])
def test_unit_interval_likelihoods_refuse_values_outside_0_1(likelihood, value):
    x = torch.rand(6, 4)
    x[4, 2] = value
    with pytest.raises(ValueError, match=rf"modality 'b': row 4, entry 2 holds {value}, outside the support of its "
                                         rf"'{likelihood}' likelihood \(values in \[0, 1\]\)"):
        MultimodalDataset(_mods(likelihood), {"a": torch.randn(6, 3), "b": x})
    x[4, 2] = 1.0  # the end points are inside
    x[0, 0] = 0.0
    MultimodalDataset(_mods(likelihood), {"a": torch.randn(6, 3), "b": x})


def test_error_counts_the_bad_entries_and_rows():
    x = torch.rand(6, 4)
    x[1, 0], x[1, 3], x[5, 2] = 2.0, 4.0, -1.0
    match = r"row 1, entry 0 holds 2\.0, outside .*; 3 observed entries in 2 rows are outside"
    with pytest.raises(ValueError, match=match):
        MultimodalDataset(_mods(), {"a": torch.randn(6, 3), "b": x})


@pytest.mark.parametrize("bad, dtype", [(4, torch.int64), (-1, torch.int64), (4.0, torch.float32),
                                        (1.5, torch.float32), (float("nan"), torch.float32)])
def test_categorical_codes_must_be_whole_numbers_in_range(bad, dtype):
    spec = Modality("c", (3,), "categorical", {"num_categories": 4})
    x = torch.tensor([[0, 1, 2], [3, 2, 1], [1, 1, 1]]).to(dtype)
    x[2, 1] = bad
    what = "NaN in an observed entry" if bad != bad else rf"row 2, entry 1 holds {bad}, outside"
    with pytest.raises(ValueError, match=rf"modality 'c': {what}"):
        MultimodalDataset([spec], {"c": x})
    x[2, 1] = 3
    assert MultimodalDataset([spec], {"c": x}).data["c"].tolist() == [[0, 1, 2], [3, 2, 1], [1, 3, 1]]


def test_tabular_columns_are_checked_by_their_kind():
    spec = SPECS["tabular"]
    ok = torch.tensor([[1e9, 2.0, 1.0], [-3.5, 0.0, 0.0]])  # a large continuous value is in the support
    assert torch.equal(MultimodalDataset([spec], {"x": ok}).data["x"], ok)
    for column, value in [(1, 3.0), (2, 0.5), (1, -1.0)]:
        bad = ok.clone()
        bad[1, column] = value
        with pytest.raises(ValueError, match=rf"modality 'x': row 1, entry {column} holds {value}, outside .*"
                                             r"'tabular' likelihood \(finite values in continuous columns"):
            MultimodalDataset([spec], {"x": bad})


def test_value_too_large_for_the_default_dtype_is_named():
    x = torch.randn(4, 3, dtype=torch.float64)
    x[2, 0] = 1e300  # finite in float64, inf once converted to float32
    with pytest.raises(ValueError, match=r"modality 'a': row 2, entry 0 holds 1e\+300 \(too large for torch.float32\)"):
        MultimodalDataset(_mods(), {"a": x, "b": torch.rand(4, 4)})


def test_integer_and_boolean_data_convert_exactly():
    ds = MultimodalDataset(_mods(), {"a": torch.arange(12).reshape(4, 3), "b": torch.rand(4, 4) > 0.5})
    assert ds.data["a"].dtype == ds.data["b"].dtype == torch.get_default_dtype()
    assert ds.data["a"].tolist() == torch.arange(12.0).reshape(4, 3).tolist()


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "normal", "laplace"])
def test_uint8_image_data_need_an_explicit_conversion(likelihood):
    img = torch.randint(0, 256, (5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = {"a": torch.randn(5, 3), "b": img}
    with pytest.raises(TypeError, match=rf"modality 'b': uint8 data .* for its '{likelihood}' likelihood; pass "
                                        r"x\.float\(\) / 255"):
        MultimodalDataset(_mods(likelihood), data)
    with pytest.raises(TypeError, match="modality 'b': uint8"):  # numpy arrays alike
        MultimodalDataset(_mods(likelihood), {"a": data["a"].numpy(), "b": img.numpy()})
    ds = MultimodalDataset(_mods(likelihood), {**data, "b": img.float() / 255})  # the documented conversion
    assert torch.equal(ds.data["b"], img.float() / 255)


def test_uint8_category_codes_are_accepted():
    spec = Modality("c", (2,), "categorical", {"num_categories": 3})
    ds = MultimodalDataset([spec], {"c": torch.tensor([[0, 2], [1, 1]], dtype=torch.uint8)})
    assert ds.data["c"].dtype == torch.long and ds.data["c"].tolist() == [[0, 2], [1, 1]]


def test_image_bytes_under_a_unit_likelihood_get_a_hint():
    x = torch.randint(0, 256, (3, 4), generator=torch.Generator().manual_seed(1)).float()
    x[0, 0] = 255.0
    with pytest.raises(ValueError, match=r"row 0, entry 0 holds 255\.0 \(image bytes 0\.\.255\? divide by 255\)"):
        MultimodalDataset(_mods(), {"a": torch.randn(3, 3), "b": x})
    x = torch.rand(3, 4)
    x[0, 0] = 3.0  # one stray value among intensities: no hint
    with pytest.raises(ValueError, match=r"row 0, entry 0 holds 3\.0, outside"):
        MultimodalDataset(_mods(), {"a": torch.randn(3, 3), "b": x})


def test_unknown_likelihood_or_bad_options_name_the_modality_when_the_data_set_is_built():
    with pytest.raises(ValueError, match=r"modality 'q': unknown likelihood 'nosuch'"):
        MultimodalDataset([Modality("q", (2,), "nosuch")], {"q": torch.zeros(3, 2)})
    with pytest.raises(TypeError, match=r"modality 'q': likelihood 'categorical' rejected its kwargs"):
        MultimodalDataset([Modality("q", (2,), "categorical")], {"q": torch.zeros(3, 2)})


@pytest.mark.parametrize("validate_pyro", [False, True])
def test_the_check_does_not_depend_on_pyro_validation(validate_pyro):
    """Before: the data set accepted a Bernoulli 3.0 and the Trainer (Pyro validation off by
    default) trained on it. Now the data set refuses it whatever the setting."""
    data = _data(8)
    data["b"][5, 1] = 3.0
    import pyro

    with pyro.validation_enabled(validate_pyro), pytest.raises(ValueError, match=r"modality 'b': row 5, entry 1"):
        MultimodalDataset(_mods(), data)
    with pyro.validation_enabled(validate_pyro), pytest.raises(ValueError, match=r"modality 'b': row 5"):
        make_batch(_mods(), data)  # the batches of a plain SVI script are checked alike


def _count_checks(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = validation_module.check_values

    def counting(spec, *args, **kwargs):
        calls.append(spec.name)
        return original(spec, *args, **kwargs)

    monkeypatch.setattr(validation_module, "check_values", counting)
    monkeypatch.setattr(dataset_module, "check_values", counting)
    return calls


def test_values_are_checked_once_per_data_set_not_per_step(monkeypatch):
    calls = _count_checks(monkeypatch)
    torch.manual_seed(0)
    ds = MultimodalDataset(_mods(), _data(20))
    assert calls == ["a", "b"]
    partial = mcar(ds, 0.3, seed=0)  # new masks on checked data: no second pass
    model = MVAE(_mods(), MVAEConfig(latent_dim=2))
    trainer = Trainer(model, config=TrainerConfig(epochs=3, batch_size=4, progress=False))
    trainer.fit(partial)
    trainer.evaluate(ds)
    reconstruction_error(model, ds)
    assert calls == ["a", "b"]


def test_a_model_with_another_likelihood_checks_the_values_once_when_it_meets_the_data(monkeypatch):
    """The data set was checked against its own specs; a model whose likelihood for a modality
    differs checks the values against its own, in Trainer.fit, Trainer.evaluate and the metrics."""
    data = _data(10)
    data["b"][7, 3] = 3.0  # fine for a normal likelihood, not for the model's Bernoulli
    ds = MultimodalDataset(_mods("normal"), data)
    model = MVAE(_mods("bernoulli"), MVAEConfig(latent_dim=2))
    trainer = Trainer(model, config=TrainerConfig(epochs=1, batch_size=4, progress=False))
    match = r"modality 'b': row 7, entry 3 holds 3\.0, outside the support of its 'bernoulli' likelihood"
    with pytest.raises(ValueError, match=match):
        trainer.fit(ds)
    with pytest.raises(ValueError, match=match):
        trainer.evaluate(ds)
    with pytest.raises(ValueError, match=match):
        reconstruction_error(model, ds)
    # values inside both supports: checked once against the model's likelihood, then remembered
    calls = _count_checks(monkeypatch)
    good = MultimodalDataset(_mods("normal"), _data(10))
    assert calls == ["a", "b"]
    trainer.fit(good)
    trainer.evaluate(good)
    trainer.evaluate(good)
    assert calls == ["a", "b", "b"]


def test_a_model_with_other_modalities_is_refused_by_name_or_shape():
    ds = MultimodalDataset(_mods(), _data(4))
    with pytest.raises(ValueError, match=r"the data has modalities \['a', 'b'\]; the model expects \['a'\]"):
        ds.check_against(_mods()[:1])
    with pytest.raises(ValueError, match=r"modality 'b': the data have rows of shape \(4,\); the model expects \(5,\)"):
        ds.check_against([_mods()[0], Modality("b", (5,), "bernoulli")])
    codes = MultimodalDataset([Modality("c", (2,), "categorical", {"num_categories": 3})], {"c": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"modality 'c': the data set holds category codes"):
        codes.check_against([Modality("c", (2,), "normal")])


def test_the_check_is_vectorised():
    """A million rows are checked in well under the time a loop over rows would take."""
    n = 1_000_000
    x = torch.rand(n, 8)
    x[n - 3, 5] = 1.5
    spec = Modality("b", (8,), "bernoulli")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"row {n - 3}, entry 5 holds 1\.5"):
        MultimodalDataset([spec], {"b": x})
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------- edges of size


def test_an_empty_data_set_is_refused_where_it_is_built():
    """Before: accepted, and Trainer.fit with val_fraction=0 died with ZeroDivisionError."""
    with pytest.raises(ValueError, match=r"the data set is empty \(modality 'a' has 0 rows\)"):
        MultimodalDataset(_mods(), _data(0))
    with pytest.raises(ValueError, match="the data set is empty"):
        make_batch(_mods(), {"a": np.zeros((0, 3)), "b": np.zeros((0, 4))})
    ds = MultimodalDataset(_mods(), _data(4))
    with pytest.raises(ValueError, match="subset of no rows"):
        ds.subset([])
    nothing = {"a": torch.zeros(4, dtype=torch.bool), "b": torch.zeros(4, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"every row \(4\) observes no modality"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.with_obs_mask(nothing, drop_empty=True)


@pytest.mark.parametrize("model_class, config", [(MVAE, MVAEConfig(latent_dim=2)), (MMVAE, MMVAEConfig(latent_dim=2))])
def test_one_row_trains_under_the_default_validation_split(model_class, config):
    """Before: ValueError 'cannot split 1 rows with fraction 0.1'. Now it trains without
    validation and says why."""
    torch.manual_seed(0)
    ds = MultimodalDataset(_mods(), _data(1))
    trainer = Trainer(model_class(_mods(), config), config=TrainerConfig(epochs=2, progress=False))
    with pytest.warns(UserWarning, match=r"1 row: too few to hold out a validation set \(val_fraction=0\.1 "
                                         r"needs at least 2 rows\)"):
        history = trainer.fit(ds)
    assert len(history) == 2 and trainer.step == 2
    assert all("val_loss" not in r and np.isfinite(r["train_loss"]) for r in history)
    assert np.isfinite(trainer.evaluate(ds))


def test_one_row_without_validation_trains_silently():
    ds = MultimodalDataset(_mods(), _data(1))
    trainer = Trainer(MVAE(_mods(), MVAEConfig(latent_dim=2)), config=TrainerConfig(epochs=1, val_fraction=0,
                                                                                    progress=False))
    assert np.isfinite(trainer.fit(ds)[0]["train_loss"])


def test_holdout_clamps_the_validation_part_and_keeps_the_split_where_it_worked():
    ds = MultimodalDataset(_mods(), _data(10), labels=torch.arange(10))
    train, val = ds.holdout(0.1, seed=3)
    a, b = ds.split(0.1, seed=3)  # the same rows as before the change, so old runs resume alike
    assert torch.equal(train.labels, a.labels) and torch.equal(val.labels, b.labels)
    two = MultimodalDataset(_mods(), _data(2), labels=torch.arange(2))
    for fraction in (0.01, 0.5, 0.99):
        train, val = two.holdout(fraction)
        assert len(train) == len(val) == 1
    assert two.holdout(0) == (two, None)
    with pytest.raises(ValueError, match="validation fraction"):
        two.holdout(1.0)


def test_batch_size_above_the_data_set_size_gives_one_batch_per_epoch():
    torch.manual_seed(0)
    ds = MultimodalDataset(_mods(), _data(5))
    assert [len(b) for b in ds.batches(1000, shuffle=True, generator=torch.Generator().manual_seed(0))] == [5]
    trainer = Trainer(MVAE(_mods(), MVAEConfig(latent_dim=2)),
                      config=TrainerConfig(epochs=3, batch_size=1000, val_fraction=0.2, progress=False))
    history = trainer.fit(ds)
    assert trainer.step == 3 and all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in history)


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "4"])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused(size):
    ds = MultimodalDataset(_mods(), _data(5))
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {size!r}"):
        next(ds.batches(size))
    assert [len(b) for b in ds.batches(np.int64(2))] == [2, 2, 1]
