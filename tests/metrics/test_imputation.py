"""``impute`` on every registered model, on tabular data, and its refusals of bad input.
(The closed-form checks of its estimates are in tests/oracles/test_imputation_oracle.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from pyromv.data import Modality, MultimodalDataset
from pyromv.data.sources.tabular import tabular_modality
from pyromv.metrics import Imputation, imputation_error, impute
from pyromv.models import MVAE, MVAEConfig
from tests.models.test_common_surface import CASES, MODS, PARTIAL, _data, _model

# the models here are built from plain specs before the data (encoders without the mask): imputation must
# work for them too; the warning that says so is tested in tests/nn/test_mask_aware.py
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:modality .* the data miss single entries:UserWarning")]


def _partial_dataset(seed: int = 0) -> MultimodalDataset:
    """Rows missing whole modalities (PARTIAL) and, in vec, single entries."""
    data = _data(seed=seed)
    masks = {k: torch.tensor(v, dtype=torch.bool) for k, v in PARTIAL.items()}
    vec = masks["vec"][:, None].expand(-1, 5).clone()
    vec[0, :2] = False  # row 0 misses two entries of vec
    masks["vec"] = vec
    return MultimodalDataset(MODS, data, masks)


@pytest.mark.parametrize("name, cfg", CASES)
def test_every_model_imputes(name, cfg):
    model = _model(name, cfg)
    ds = _partial_dataset()
    if name == "mcvae" and cfg.get("sparse"):  # improper prior: no importance weights, a clear error
        with pytest.raises(ValueError, match="sparse"):
            model.impute(ds, num_samples=4)
        return
    out = model.impute(ds, num_samples=4, num_imputations=2, seed=0, batch_size=4, particle_chunk=3)
    assert isinstance(out, Imputation)
    gen = list(model.generated_modalities)
    for m in ds.names:
        x, new = ds.data[m], out.data[m]
        assert new.shape == x.shape and new.dtype == x.dtype
        if m not in gen:  # a conditional model's inputs stay as they are
            assert torch.equal(new, x) and torch.equal(out.dataset.obs_mask[m], ds.obs_mask[m])
            continue
        miss = out.missing[m]
        assert torch.equal(new[~miss], x[~miss])
        assert bool(out.dataset.obs_mask[m].all())
        if new.is_floating_point():
            assert bool(torch.isfinite(new).all()) and bool(torch.isfinite(out.std[m][miss]).all())
        else:  # categorical codes: valid codes, std undefined
            assert bool(((new >= 0) & (new < 4)).all()) and bool(torch.isnan(out.std[m][miss]).all())
        assert out.imputations[m].shape == (2,) + x.shape
        assert torch.equal(out.imputations[m][:, ~miss], x[~miss].expand(2, -1))
    assert bool((out.ess >= 1 - 1e-9).all()) and bool((out.ess <= 4 + 1e-9).all())


def test_tabular_columns_mixed():
    torch.manual_seed(0)
    mod = tabular_modality("t", [0, 3, 0], hidden_dims=(8,))
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.randn(10, generator=g), torch.randint(0, 3, (10,), generator=g).float(),
                     torch.randn(10, generator=g)], 1)
    mask = torch.rand(10, 3, generator=g) > 0.4
    mask[:, 0] = True
    ds = MultimodalDataset([mod], {"t": x}, {"t": mask})
    model = MVAE([mod], MVAEConfig(latent_dim=2, objective="iwae"))
    out = model.impute(ds, num_samples=30, seed=0)
    new = out.data["t"]
    assert torch.equal(new[mask], x[mask])
    codes = new[:, 1]
    assert bool((codes == codes.round()).all()) and bool(((codes >= 0) & (codes < 3)).all())
    miss = ~mask
    assert bool(torch.isnan(out.std["t"][:, 1][miss[:, 1]]).all())
    assert bool((out.std["t"][:, 2][miss[:, 2]] > 0).all())
    assert out.khat.shape == (10,)  # K = 30 >= 25: k-hat computed for rows with something missing
    assert bool(torch.isfinite(out.khat[miss.any(1)]).all())


def test_nothing_missing_returns_the_data():
    ds = MultimodalDataset(MODS, _data())
    model = _model("mvae", {})
    out = model.impute(ds, num_samples=3)
    for m in ds.names:
        assert torch.equal(out.data[m], ds.data[m]) and not bool(out.missing[m].any())
    assert out.imputations is None


def test_input_does_not_change():
    ds = _partial_dataset()
    before = {m: (ds.data[m].clone(), ds.obs_mask[m].clone()) for m in ds.names}
    _model("mvae", {}).impute(ds, num_samples=3, num_imputations=1)
    for m in ds.names:
        assert torch.equal(ds.data[m], before[m][0]) and torch.equal(ds.obs_mask[m], before[m][1])


def test_bad_input_is_refused():
    model = _model("mvae", {})
    ds = _partial_dataset()
    with pytest.raises(ValueError, match="unknown modality 'nope'"):
        impute(model, ds, 3, targets=["nope"])
    other = MultimodalDataset([Modality("vec", (5,), "normal")], {"vec": torch.randn(4, 5)})
    with pytest.raises(ValueError, match="modalities"):
        impute(model, other, 3)
    with pytest.raises(TypeError, match="MultimodalDataset"):
        impute(model, ds.batch(), 3)
    with pytest.raises(TypeError, match="MultimodalVAE"):
        impute(object(), ds, 3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            impute(model, ds, bad)
    with pytest.raises(ValueError, match="num_imputations"):
        impute(model, ds, 3, num_imputations=-1)
    shapes = [Modality(m.name, (1, 8, 9) if m.name == "img" else m.shape, m.likelihood, m.likelihood_kwargs)
              for m in MODS]
    wrong = MultimodalDataset(shapes, {**_data(), "img": torch.rand(6, 1, 8, 9)})
    with pytest.raises(ValueError, match="img"):
        impute(model, wrong, 3)


def test_conditional_model_cannot_fill_its_inputs():
    model = _model("cvae", {})
    cond = [m for m in model.names if m not in model.generated_modalities]
    with pytest.raises(ValueError, match="cannot generate"):
        impute(model, _partial_dataset(), 3, targets=cond)


def test_imputation_error_closed_form():
    truth = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    imputed = torch.tensor([[1.0, 5.0], [3.0, 0.0]])
    entries = torch.tensor([[False, True], [False, True]])
    err = imputation_error(imputed, truth, entries)
    assert err["rmse"] == pytest.approx(math.sqrt((9 + 16) / 2)) and err["mae"] == pytest.approx(3.5)
    assert err["entries"] == 2
    with pytest.raises(ValueError, match="no entry"):
        imputation_error(imputed, truth, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="one shape"):
        imputation_error(imputed, truth[:1], entries)
