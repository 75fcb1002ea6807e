"""Missingness not at random (not-MIWAE) against numerical integration.

A one-dimensional latent and one modality of three features, ``x_j = W_j z + b_j + s e_j``, with
a self-masking missingness model ``P(x_j missing | x) = sigmoid(w_j x_j + c_j)`` set by hand.
Given ``z`` the features are independent, so

    p(x_obs, s) = ∫ N(z; 0, 1) prod_{j obs} N(x_j | z) (1 - sigmoid(l_j(x_j)))
                               prod_{j miss} ∫ N(x | z) sigmoid(l_j(x)) dx  dz

is a one-dimensional integral of one-dimensional integrals, computed on grids (float64, error far
below the tolerances). The model's importance-sampling log-likelihood is an unbiased estimate of
``p(x_obs, s)`` (one draw of the missing entries per particle) and its imputation the
self-normalised estimate of ``E[x_miss | x_obs, s]``: both must match the integrals, and differ
from the ignorable model's answers (which is what a missingness model is for).
"""

from __future__ import annotations

import math

import pytest
import torch
from linear_gaussian import DTYPE, LinearGaussian, set_decoders, set_exact_mask_aware_encoders

from pyromv.data import Modality, MultimodalDataset
from pyromv.metrics import annealed_log_likelihood, impute, inference_gaps, log_likelihood
from pyromv.models.mvae import MVAE, MVAEConfig

SCALE = 0.6
SLOPE = torch.tensor([2.0, -1.5, 0.0], dtype=DTYPE)  # w_j: high x_0 and low x_1 go missing; x_2 at random
OFFSET = torch.tensor([-0.5, 0.3, -1.0], dtype=DTYPE)  # c_j
MASKS = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)


def _lg() -> LinearGaussian:
    return LinearGaussian.axis_aligned({"a": 3}, 1, {"a": SCALE}, seed=0)


def _model(missingness: str) -> MVAE:
    lg = _lg()
    spec = Modality("a", (3,), "normal", {"scale": SCALE}, mask_aware="on", missingness=missingness,
                    encoder={"name": "linear", "kwargs": {"head": "natural", "head_kwargs": {"knee": 1e-6}}},
                    decoder="linear")
    model = MVAE([spec], MVAEConfig(latent_dim=1))
    set_decoders(model, lg)
    set_exact_mask_aware_encoders(model, lg)  # q(z | x_obs) = p(z | x_obs): close to, not, p(z | x_obs, s)
    if missingness != "ignorable":
        with torch.no_grad():
            model.missingness["a"].weight.copy_(SLOPE)
            model.missingness["a"].bias.copy_(OFFSET)
    return model


def _data() -> MultimodalDataset:
    x = _lg().sample(len(MASKS), seed=1)["a"]
    return MultimodalDataset(_model("ignorable").modalities, {"a": x}, {"a": MASKS})


def _normal(x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * ((x - loc) / SCALE) ** 2) / (SCALE * math.sqrt(2 * math.pi))


def _integrals(x: torch.Tensor, mask: torch.Tensor, mnar: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(x_obs, s)`` (``log p(x_obs)`` if not ``mnar``) and ``E[x_j | x_obs, s]`` of one row."""
    lg = _lg()
    W, b = lg.W["a"][:, 0], lg.b["a"]
    z = torch.linspace(-9, 9, 3001, dtype=DTYPE)
    dz = z[1] - z[0]
    density = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)  # (Z,)
    moments = []  # per missing feature: (∫ p(x|z) P(miss|x) dx, ∫ x p(x|z) P(miss|x) dx), each (Z,)
    for j in range(3):
        loc = W[j] * z + b[j]
        if mask[j]:
            keep = 1 - torch.sigmoid(SLOPE[j] * x[j] + OFFSET[j]) if mnar else 1.0
            density = density * _normal(x[j], loc) * keep
            moments.append(None)
        else:
            grid = loc[:, None] + SCALE * torch.linspace(-10, 10, 2001, dtype=DTYPE)[None, :]  # (Z, X)
            dx = grid[:, 1] - grid[:, 0]
            weight = _normal(grid, loc[:, None]) * (torch.sigmoid(SLOPE[j] * grid + OFFSET[j]) if mnar else 1.0)
            zeroth, first = (weight.sum(1) * dx), ((grid * weight).sum(1) * dx)
            density = density * zeroth
            moments.append((zeroth, first))
    evidence = density.sum() * dz
    means = torch.full((3,), math.nan, dtype=DTYPE)
    for j, mom in enumerate(moments):
        if mom is not None:
            means[j] = (density / mom[0] * mom[1]).sum() * dz / evidence
    return evidence.log(), means


def _exact(data: MultimodalDataset, mnar: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out = [_integrals(x, m, mnar) for x, m in zip(data.data["a"], data.obs_mask["a"])]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def test_integrals_reduce_to_the_closed_form_without_a_missingness_model():
    """The quadrature itself, checked where a closed form exists (the ignorable marginal)."""
    data = _data()
    log_p, _ = _exact(data, mnar=False)
    batch = data.batch()
    torch.testing.assert_close(log_p, _lg().log_marginal(batch.data, batch.obs_mask), atol=1e-8, rtol=0)


def test_log_likelihood_is_that_of_the_values_and_the_mask():
    """IWAE with one draw of the missing entries per particle estimates ``log p(x_obs, s)``; the
    ignorable model's ``log p(x_obs)`` is a different number (the mask carries information)."""
    data = _data()
    exact, _ = _exact(data, mnar=True)
    est = log_likelihood(_model("self_masking"), data, K=20000, seed=0)
    assert float((est.values - exact).abs().max()) < 0.01, est.values - exact
    ignorable, _ = _exact(data, mnar=False)
    assert float((ignorable - exact).abs().min()) > 0.3


def test_imputation_is_the_conditional_mean_given_the_mask():
    """``impute`` weighs the draws of the missing entries the weights scored (not ``E[x | z]``):
    its mean is ``E[x_miss | x_obs, s]`` within Monte Carlo error, away from the ignorable
    ``E[x_miss | x_obs]`` where the entry's own value decides whether it goes missing."""
    data = _data()
    _, exact = _exact(data, mnar=True)
    _, ignorable = _exact(data, mnar=False)
    result = impute(_model("self_masking"), data, num_samples=20000, num_imputations=400, seed=0)
    missing = ~data.obs_mask["a"]
    got = result.dataset.data["a"].to(DTYPE)
    tolerance = 5 * result.std["a"].to(DTYPE) / result.ess.to(DTYPE)[:, None].sqrt() + 1e-3
    err = (got - exact).abs()[missing]
    assert bool((err <= tolerance[missing]).all()), (err, tolerance[missing])
    # multiple imputations resample the same draws: their mean agrees with the single imputation
    # within the resampling error, and their spread with the reported std
    draws = result.imputations["a"].to(DTYPE)
    resampled = (draws.mean(0) - got).abs()[missing]
    assert bool((resampled <= 5 * result.std["a"].to(DTYPE)[missing] / 20 + 1e-3).all()), resampled
    torch.testing.assert_close(draws.std(0)[missing], result.std["a"].to(DTYPE)[missing], rtol=0.2, atol=0.02)
    # the self-masked entries: most move by many tolerances (how far depends on the row)
    self_masked = missing & (SLOPE != 0)
    shifted = (exact - ignorable).abs()[self_masked]
    assert int((shifted > 10 * tolerance[self_masked]).sum()) >= 4, (shifted, tolerance[self_masked])


def test_a_zero_missingness_model_adds_a_constant():
    """Logits 0: ``p(s | x) = 2^-d`` whatever ``x``, so ``log p(x_obs, s) = log p(x_obs) - d log 2``
    row by row (an exact guide makes both estimates exact)."""
    data = _data()
    model = _model("self_masking")
    with torch.no_grad():
        model.missingness["a"].weight.zero_()
        model.missingness["a"].bias.zero_()
    est = log_likelihood(model, data, K=8, khat=False, seed=0)
    plain = log_likelihood(_model("ignorable"), data, K=8, khat=False, seed=0)
    torch.testing.assert_close(est.values, plain.values - 3 * math.log(2), atol=1e-6, rtol=0)


def test_samplers_that_replay_latents_refuse_it():
    """AIS and the per-row fits need ``log p(X, z)`` as a function of ``z``; with a missingness
    model it also depends on the draws of the missing entries, so both refuse (clearly)."""
    model, data = _model("self_masking"), _data()
    with pytest.raises(ValueError, match="randomness outside its sample sites"):
        annealed_log_likelihood(model, data, num_steps=2, num_chains=2, warmup=2)
    with pytest.raises(ValueError, match="randomness outside its sample sites"):
        inference_gaps(model, data, K=4, local_steps=1, likelihood_options={"khat": False})
