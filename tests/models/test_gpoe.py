"""gPoE: reference equality, the weighted product against hand formulas and the plain product,
masking = removing, and the ELBO against the linear-Gaussian oracle."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from pyromv.data import Modality, MultimodalBatch, MultimodalDataset, make_batch, mcar
from pyromv.distributions import ProductOfExperts
from pyromv.infer import importance_log_weights
from pyromv.models import GPoE, GPoEConfig, get_model_class, registered_models
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.gpoe import gpoe_reference_loss
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    mixed_row_masks,
    modalities,
    set_decoders,
    set_exact_encoders,
)

D = 3
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality("img", (1, 8, 8), "continuous_bernoulli", encoder="conv", decoder="conv"),
    Modality("vec", (5,), "normal", {"scale": 0.7}, encoder=MLP, decoder=MLP),
    Modality("tag", (3,), "categorical", {"num_categories": 4}, encoder=MLP, decoder=MLP),
]
LINEAR = [Modality(m, (d,), "normal", {"scale": 0.5}, encoder="linear", decoder="linear")
          for m, d in (("a", 3), ("b", 2), ("c", 4))]


def _batch(missing: float = 0.0):
    g = torch.Generator().manual_seed(3)
    data = {"img": torch.rand(24, 1, 8, 8, generator=g), "vec": torch.randn(24, 5, generator=g),
            "tag": torch.randint(0, 4, (24, 3), generator=g)}
    dataset = MultimodalDataset(MODS, data)
    return (mcar(dataset, missing, seed=1) if missing else dataset).batch()


def _linear_batch(n: int = 6, masks=None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return make_batch(LINEAR, {m.name: torch.randn(n, *m.shape, generator=g) for m in LINEAR}, masks)


def _shake_weights(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.weight_logits.add_(torch.randn(model.weight_logits.shape, generator=g))


def test_registered_and_initial_weights():
    assert "gpoe" in registered_models() and get_model_class("gpoe") is GPoE
    model = GPoE(MODS, GPoEConfig(latent_dim=D))
    a = model.modality_weights()
    assert a.shape == (3, D)
    torch.testing.assert_close(a, torch.full((3, D), 1 / 3))
    one = GPoE(MODS[:1], GPoEConfig(latent_dim=D)).modality_weights()
    assert ((one > 0.99) & (one < 1)).all()


# ---------------------------------------------------------------------- reference equality
CONFIGS = [
    {},
    {"prior_expert": True, "analytic_kl": False, "num_particles": 3, "beta": 2.0},
    {"likelihood_rescaling": "dims", "prior_scale": 0.5, "beta": 0.5},
]


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "prior-mc-K3", "dims"])
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    torch.manual_seed(0)
    model = GPoE(MODS, GPoEConfig(latent_dim=D, **cfg))
    _shake_weights(model)
    batch = _batch(missing)
    grads = assert_matches_reference(model, gpoe_reference_loss, batch, unreached=())
    assert grads["weight_logits"].abs().sum() > 0


# ---------------------------------------------------------------------- the weighted product
@pytest.mark.parametrize("prior_expert", [False, True])
def test_posterior_is_the_weighted_product(prior_expert):
    """``Lambda_d = [1/s0^2] + sum_{m in O} a_md / s_md^2``, precision-weighted mean, by hand;
    rows observing nothing are the prior."""
    torch.manual_seed(1)
    model = GPoE(LINEAR, GPoEConfig(latent_dim=D, prior_expert=prior_expert, prior_scale=1.5))
    _shake_weights(model)
    masks = {"a": torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool),
             "b": torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool),
             "c": torch.tensor([1, 0, 0, 0, 1, 1], dtype=torch.bool)}
    batch = _linear_batch(masks=masks).restrict(["a", "b"])  # rows 4 and 5 observe nothing
    q = model.encode(batch)
    a = torch.sigmoid(model.weight_logits)
    for row in range(6):
        lam = torch.full((D,), 1.5**-2) if prior_expert or row >= 4 else torch.zeros(D)
        num = torch.zeros(D)
        for j, m in enumerate("abc"):
            if m != "c" and masks[m][row]:
                enc = model.encoders[m]
                loc = enc.linear(batch.data[m][row])
                prec = a[j] * (2 * enc.log_scale).exp().reciprocal()
                lam, num = lam + prec, num + prec * loc
        torch.testing.assert_close(q.loc[row], num / lam)
        torch.testing.assert_close(q.scale[row], lam.rsqrt())
    torch.testing.assert_close(q.loc[4:], torch.zeros(2, D))
    torch.testing.assert_close(q.scale[4:], torch.full((2, D), 1.5))


@pytest.mark.parametrize("prior_expert", [False, True])
def test_unit_weights_give_the_plain_product(prior_expert):
    torch.manual_seed(2)
    model = GPoE(MODS, GPoEConfig(latent_dim=D, prior_expert=prior_expert))
    with torch.no_grad():
        model.weight_logits.fill_(60.0)  # sigmoid(60) == 1 in floating point
    assert (model.modality_weights() == 1).all()
    batch = _batch()
    loc, scale, mask = model.experts(batch)
    plain = ProductOfExperts(loc, scale, mask, include_prior=prior_expert)
    q = model.encode(batch)
    torch.testing.assert_close(q.loc, plain.loc, rtol=0, atol=0)
    torch.testing.assert_close(q.scale, plain.scale, rtol=0, atol=0)


@pytest.mark.parametrize("prior_expert", [False, True])
def test_masking_a_modality_equals_removing_it(prior_expert):
    """``c`` missing in every row vs a model built without ``c`` (same networks, same weights
    of ``a`` and ``b``): same posterior, same per-row ELBO terms under the same seed."""
    torch.manual_seed(3)
    full = GPoE(LINEAR, GPoEConfig(latent_dim=D, prior_expert=prior_expert))
    _shake_weights(full)
    reduced = GPoE(LINEAR[:2], GPoEConfig(latent_dim=D, prior_expert=prior_expert))
    state = {k: v for k, v in full.state_dict().items() if ".c." not in k}
    state["weight_logits"] = state["weight_logits"][:2]
    reduced.load_state_dict(state)
    masks = {"a": torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool),
             "b": torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.bool)}
    big = _linear_batch(masks={**masks, "c": torch.ones(6, dtype=torch.bool)}).restrict(["a", "b"])
    small = MultimodalBatch({m: big.data[m] for m in "ab"}, {m: big.obs_mask[m] for m in "ab"})
    q_full, q_small = full.encode(big), reduced.encode(small)
    torch.testing.assert_close(q_full.loc, q_small.loc, rtol=0, atol=0)
    torch.testing.assert_close(q_full.scale, q_small.scale, rtol=0, atol=0)
    lw = []
    for model, batch in ((full, big), (reduced, small)):
        torch.manual_seed(4)
        lw.append(importance_log_weights(model.model, model.guide, batch, num_particles=3, max_plate_nesting=1))
    torch.testing.assert_close(lw[0], lw[1])


# ---------------------------------------------------------------------- the oracle
DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT, N, REPS = 2, 70, 400


@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


def _oracle_model(prior_expert: bool) -> GPoE:
    lg = _lg()
    model = GPoE(modalities(lg), GPoEConfig(latent_dim=LATENT, prior_expert=prior_expert))
    set_decoders(model, lg)
    set_exact_encoders(model, lg)
    return model


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("prior_expert", [False, True])
def test_elbo_is_below_log_p_on_the_linear_gaussian_oracle(prior_expert):
    """The ELBO of the learned-weight posterior (weights 1/M, then shaken) per row: its closed
    form (tests/oracles/linear_gaussian.py) is below ``log p(X_O)`` on every row, and the Monte
    Carlo ELBO of the model (mean of ``REPS`` single-sample terms per row) matches it within 4
    standard errors."""
    lg = _lg()
    data, masks = lg.sample(N, seed=2), mixed_row_masks(lg.names, N, seed=3)
    log_p = lg.log_marginal(data, masks)
    model = _oracle_model(prior_expert)
    for step in range(2):
        if step:
            _shake_weights(model, seed=5)
        with torch.no_grad():
            q = model.encode(make_batch(model.modalities, data, masks))
            closed = lg.elbo(data, q.loc, q.scale, masks)
            assert (closed < log_p - 1e-6).all()
            batch = make_batch(model.modalities, {m: v.repeat(REPS, 1) for m, v in data.items()},
                               {m: v.repeat(REPS) for m, v in masks.items()})
            lw = importance_log_weights(model.model, model.guide, batch, num_particles=1,
                                        max_plate_nesting=1)[0].reshape(REPS, N)
        mean, se = lw.mean(0), lw.std(0) / math.sqrt(REPS)
        # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 per entry, summed over entries (normal approx.)
        assert ((mean - closed).abs() < 4 * se).all()
        # statistical check: 4 SE one-sided: false-alarm rate 3.2e-5 per entry, summed over entries (normal approx.)
        assert (mean - log_p < 4 * se).all()


@pytest.mark.usefixtures("float64")
def test_unit_weights_with_the_prior_expert_are_exact_on_the_oracle():
    """Weights 1 and the prior expert: the plain PoE of exact linear experts is ``p(z | X_O)``,
    so every single-sample ELBO term equals ``log p(X_O)``."""
    lg = _lg()
    data, masks = lg.sample(N, seed=2), mixed_row_masks(lg.names, N, seed=3)
    model = _oracle_model(prior_expert=True)
    with torch.no_grad():
        model.weight_logits.fill_(60.0)
        lw = importance_log_weights(model.model, model.guide, make_batch(model.modalities, data, masks),
                                    num_particles=5, max_plate_nesting=1)
    torch.testing.assert_close(lw, lg.log_marginal(data, masks).expand(5, N), rtol=0, atol=1e-9)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("cfg", [{"beta": -1.0}, {"latent_dim": 0}, {"num_particles": 0}])
def test_invalid_config(cfg):
    with pytest.raises(ValueError):
        GPoE(MODS, GPoEConfig(**cfg))


def test_wrong_config_type_and_batch():
    from pyromv.models import MVAEConfig

    with pytest.raises(TypeError, match="GPoEConfig"):
        GPoE(MODS, MVAEConfig())
    model = GPoE(MODS, GPoEConfig(latent_dim=D))
    wrong = MultimodalBatch({"vec": torch.zeros(2, 5)}, {"vec": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="modalities"):
        model.encode(wrong)
