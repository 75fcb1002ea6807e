import math

import numpy as np
import pyro
import pytest
import torch

from pyromv.data import Diabetes, Linnerud, feature_mcar, tabular_modality
from pyromv.data.sources import check_tabular
from pyromv.distributions import MixedColumns, build_likelihood
from pyromv.models import get_model_class

CARDS = [0, 3, 0, 2]


def _dist(batch=(5,), seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(*batch, 2, generator=g)
    scale = torch.rand(2, generator=g) + 0.5
    logits = torch.randn(*batch, 5, generator=g)
    return MixedColumns(CARDS, loc, scale, logits), loc, scale, logits


def _values(n=5, seed=1):
    rng = np.random.default_rng(seed)
    return torch.tensor(
        np.stack(
            [rng.normal(size=n), rng.integers(0, 3, n), rng.normal(size=n), rng.integers(0, 2, n)],
            1,
        ),
        dtype=torch.float32,
    )


def test_log_prob_per_column_is_the_closed_form():
    d, loc, scale, logits = _dist()
    x = _values()
    lp = d.log_prob(x)
    assert lp.shape == (5, 4) == d.batch_shape and d.event_shape == ()
    xn, ln, sn, gn = (t.double().numpy() for t in (x, loc, scale, logits))
    for i in range(5):
        for j, c in ((0, 0), (2, 1)):  # continuous columns: Gaussian density by hand
            z = (xn[i, j] - ln[i, c]) / sn[c]
            assert lp[i, j].item() == pytest.approx(
                -0.5 * z * z - math.log(sn[c]) - 0.5 * math.log(2 * math.pi), abs=1e-5
            )
        for j, (lo, k) in ((1, (0, 3)), (3, (3, 2))):  # categorical: log softmax by hand
            row = gn[i, lo : lo + k]
            expected = row[int(xn[i, j])] - math.log(np.exp(row).sum())
            assert lp[i, j].item() == pytest.approx(expected, abs=1e-5)


def test_masked_columns_contribute_zero():
    d, _, _, _ = _dist()
    x = _values()
    mask = torch.tensor(
        [
            [True, False, True, True],
            [False, False, False, False],
            [True] * 4,
            [False, True, False, True],
            [True, True, False, False],
        ]
    )
    total = d.mask(mask).to_event(1).log_prob(x)
    np.testing.assert_allclose(total.numpy(), (d.log_prob(x) * mask).sum(1).numpy(), rtol=1e-6)
    assert total[1].item() == 0.0


def test_sampling_mode_expand_and_validation():
    d, loc, _, logits = _dist(batch=(3,))
    s = d.sample((2000,))
    assert s.shape == (2000, 3, 4)
    assert set(s[..., 1].unique().tolist()) <= {0.0, 1.0, 2.0}
    # the empirical frequency of category 0 in column 1 matches softmax(logits)
    p0 = torch.softmax(logits[0, :3], -1)[0].item()
    assert abs((s[:, 0, 1] == 0).float().mean().item() - p0) < 4 * math.sqrt(p0 * (1 - p0) / 2000)
    mode = d.mode
    torch.testing.assert_close(mode[:, [0, 2]], loc)
    torch.testing.assert_close(mode[:, 1], logits[:, :3].argmax(-1).float())
    e = d.expand((7, 3, 4))
    assert e.batch_shape == (7, 3, 4) and e.log_prob(_values(3)).shape == (7, 3, 4)
    with pytest.raises(ValueError, match="column 1 is categorical with 3 categories"):
        MixedColumns(CARDS, loc, torch.ones(2), logits, validate_args=True).log_prob(
            torch.tensor([[0.0, 3.0, 0.0, 1.0]] * 3)
        )
    with pytest.raises(ValueError, match="cardinality"):
        MixedColumns([0, 1], loc, torch.ones(2), logits)


def test_tabular_head_and_modality():
    mod = tabular_modality("t", CARDS, scale=0.5, learn_scale=False)
    head = build_likelihood(mod.likelihood, mod.shape, mod.likelihood_kwargs)
    assert head.param_shape == head.input_shape == (2 + 5,)
    x = _values(4)
    enc = head.encoder_input(x)
    torch.testing.assert_close(enc[:, :2], x[:, [0, 2]])
    torch.testing.assert_close(enc[:, 2:5], torch.nn.functional.one_hot(x[:, 1].long(), 3).float())
    torch.testing.assert_close(enc[:, 5:], torch.nn.functional.one_hot(x[:, 3].long(), 2).float())
    d = head(torch.zeros(4, 7))
    torch.testing.assert_close(d.scale, torch.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="cardinalities for 3 columns"):
        build_likelihood("tabular", (3,), {"cardinalities": CARDS})
    with pytest.raises(ValueError, match="1-D"):
        build_likelihood("tabular", (2, 2), {"cardinalities": CARDS})
    with pytest.raises(ValueError, match="codes must be 0..2"):
        check_tabular(np.array([[0.0, 3.0, 0.0, 1.0]]), CARDS, "t")
    check_tabular(np.array([[0.0, np.nan, 0.0, 1.0]]), CARDS, "t")  # missing entries pass


def test_linnerud_views_split_and_standardisation():
    cfg = Linnerud()
    train, test = cfg.load("train"), cfg.load("test")
    assert train.names == ["exercise", "physiology"]
    assert (len(train), len(test)) == (15, 5)
    for m in train.names:
        x = train.data[m]
        torch.testing.assert_close(x.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    from sklearn.datasets import load_linnerud

    raw = load_linnerud().data
    plain = Linnerud(standardize=False)
    rows = torch.cat([plain.load("train").data["exercise"], plain.load("test").data["exercise"]])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, raw.astype(np.float32).tolist()))
    assert train.labels is None
    assert cfg.column_names()["physiology"] == ["Weight", "Waist", "Pulse"]


def test_diabetes_mixed_columns_and_labels():
    cfg = Diabetes()
    train = cfg.load("train")
    sex = train.data["clinical"][:, 1]
    assert set(sex.unique().tolist()) == {0.0, 1.0}  # categorical column, not standardised
    assert train.modality("clinical").likelihood_kwargs["cardinalities"] == [0, 2, 0, 0]
    labels = torch.cat([train.labels, cfg.load("test").labels])
    assert np.abs(np.bincount(labels.numpy()) - 442 / 3).max() <= 2


def test_mvae_trains_on_feature_level_missing_tabular_data():
    pyro.set_rng_seed(0)
    cfg = Diabetes(hidden_dim=16)
    train = feature_mcar(cfg.load("train"), 0.3, seed=0)
    assert train.obs_mask["clinical"].shape == train.data["clinical"].shape
    model = get_model_class("mvae")(cfg.modalities())
    loss = model.default_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = train.batch()
    with torch.no_grad():
        start = float(loss.differentiable_loss(model.model, model.guide, batch))
    for _ in range(30):
        opt.zero_grad()
        value = loss.differentiable_loss(model.model, model.guide, batch)
        value.backward()
        opt.step()
    assert math.isfinite(value.item()) and value.item() < start


def test_linnerud_example_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[3] / "examples" / "tabular_linnerud.py"
    spec = importlib.util.spec_from_file_location("tabular_linnerud", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(epochs=3)
    assert all(math.isfinite(v) for v in out.values())
    assert "test ELBO" in capsys.readouterr().out
