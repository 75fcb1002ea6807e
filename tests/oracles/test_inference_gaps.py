"""Inference gaps against the closed forms of the linear-Gaussian oracle with feature masks.

For a row with feature mask ``m`` the posterior is ``N(mu, Sigma)`` (closed form). The ELBO of
any diagonal Gaussian ``q`` is closed form too, so every quantity of
:func:`~pyromv.metrics.inference_gaps` has an exact value:

- the amortised ELBO: the closed-form ELBO of the model's fused guide ``q_phi``;
- the best diagonal Gaussian: mean ``mu`` and variances ``1 / diag(Sigma^{-1})`` (the
  minimiser of ``KL(q || p(z | x))``), so ``L[q*] = log p - KL(q* || p(z | x))``; with
  axis-aligned loadings ``Sigma`` is diagonal for every mask and ``L[q*] = log p``.

A zero-filled encoder reads missing entries as observed zeros: its amortisation gap is large
and the per-row fit must close it (which is what the issue's mask-aware encoders are for).
"""

from __future__ import annotations

import pytest
import torch
from linear_gaussian import (
    LinearGaussian,
    set_decoders,
    set_exact_encoders,
    set_exact_mask_aware_encoders,
)

from pyromv.data import Modality, MultimodalDataset, feature_mcar
from pyromv.metrics import LogLikelihood, inference_gaps
from pyromv.models.mvae import MVAE, MVAEConfig

D = 2
DIMS = {"a": 6, "b": 4}
SCALES = {"a": 0.5, "b": 0.6}
EXACT_LINEAR = {"name": "linear", "kwargs": {"head": "natural", "head_kwargs": {"knee": 1e-6}}}


def _problem(lg: LinearGaussian, encoder, mask_aware: str, n: int = 16):
    data = lg.sample(n, seed=1)
    mods = [Modality(m, (lg.dim(m),), "normal", {"scale": lg.s[m]}, encoder=encoder, decoder="linear",
                     mask_aware=mask_aware) for m in lg.names]
    ds = feature_mcar(MultimodalDataset(mods, data), 0.5, seed=2)
    model = MVAE(ds.modalities, MVAEConfig(latent_dim=D))
    set_decoders(model, lg)
    return model, ds.batch()


def _closed_forms(model, lg: LinearGaussian, batch):
    """``(log p, L[q_phi], L[q*])`` of each row."""
    with torch.no_grad():
        q = model.encode(batch)
    mu, sigma = lg.posterior(batch.data, batch.obs_mask)
    best_scale = torch.linalg.inv(sigma).diagonal(dim1=-2, dim2=-1).rsqrt()
    return (lg.log_marginal(batch.data, batch.obs_mask), lg.elbo(batch.data, q.mean, q.stddev, batch.obs_mask),
            lg.elbo(batch.data, mu, best_scale, batch.obs_mask))


def _exact_likelihood(log_p, targets) -> LogLikelihood:
    return LogLikelihood(values=log_p, khat=torch.full_like(log_p, float("nan")), rows=torch.arange(len(log_p)),
                         num_particles=1, given=None, targets=tuple(targets), method="exact")


def test_exact_mask_aware_encoder_has_no_gap():
    """The mask-aware encoder set to the exact posterior: IWAE, the amortised ELBO and the per-row
    fit all equal ``log p`` (every gap zero, to the fit's round-off)."""
    lg = LinearGaussian.axis_aligned(DIMS, D, SCALES, seed=0)
    model, batch = _problem(lg, EXACT_LINEAR, "on")
    set_exact_mask_aware_encoders(model, lg)
    log_p, _, _ = _closed_forms(model, lg, batch)
    gaps = inference_gaps(model, batch, K=16, seed=0, likelihood_options={"khat": False})
    for value in (gaps.log_p, gaps.elbo, gaps.local_elbo):
        torch.testing.assert_close(value, log_p, atol=1e-4, rtol=0)
    assert float(gaps.gap.abs().max()) < 1e-4 and float(gaps.amortisation_gap.abs().max()) < 1e-4


def test_zero_filled_encoder_gap_is_all_amortisation():
    """Axis-aligned loadings: the posterior is diagonal for every mask, so ``L[q*] = log p``;
    the zero-filled encoder's whole gap is its amortisation gap, which matches the closed form
    within its Monte Carlo error, and the per-row fit closes it."""
    lg = LinearGaussian.axis_aligned(DIMS, D, SCALES, seed=0)
    model, batch = _problem(lg, "linear", "off")
    log_p, amortised, best = _closed_forms(model, lg, batch)
    torch.testing.assert_close(best, log_p, atol=1e-9, rtol=0)  # the oracle's premise
    gaps = inference_gaps(model, batch, local_steps=300, seed=0, likelihood=_exact_likelihood(log_p, model.names))
    assert bool(((gaps.elbo - amortised).abs() <= 4 * gaps.elbo_stderr + 1e-6).all())
    torch.testing.assert_close(gaps.local_elbo, log_p, atol=1e-4, rtol=0)
    assert float(gaps.approximation_gap.abs().max()) < 1e-4
    assert float(gaps.amortisation_gap.mean()) > 5  # the zero-filled encoder is far off
    torch.testing.assert_close(gaps.amortisation_gap + gaps.approximation_gap, gaps.gap)
    summary = gaps.summary()
    assert summary["rows"] == len(log_p) and summary["likelihood_method"] == "exact"


def test_correlated_posterior_has_an_approximation_gap():
    """Orthogonal but not axis-aligned loadings with feature masks: the posterior is correlated,
    the best diagonal Gaussian is ``KL(q* || p)`` below ``log p``, and the per-row fit reaches it
    (and never beats it beyond its Monte Carlo error)."""
    lg = LinearGaussian.random(DIMS, D, SCALES, seed=0)
    model, batch = _problem(lg, "linear", "off")
    set_exact_encoders(model, lg)  # exact on complete rows; zero-filled on these
    log_p, _, best = _closed_forms(model, lg, batch)
    assert float((log_p - best).mean()) > 0.02  # a correlated posterior, so a real approximation gap
    gaps = inference_gaps(model, batch, local_steps=400, local_samples=32, elbo_samples=1024, seed=0,
                          likelihood=_exact_likelihood(log_p, model.names))
    err = gaps.local_elbo - best
    assert float(err.abs().mean()) < 0.01, err
    assert bool((err <= 4 * gaps.local_elbo_stderr + 1e-3).all()), err
    torch.testing.assert_close(gaps.approximation_gap.mean(), (log_p - best).mean(), atol=0.01, rtol=0)


@pytest.mark.parametrize(("option", "value"), [
    ("local_steps", -1), ("local_samples", 1), ("elbo_samples", 1.5), ("batch_size", 0), ("K", 0),
    ("lr", 0), ("lr", float("nan")), ("local_steps", True),
])
def test_argument_errors(option, value):
    lg = LinearGaussian.axis_aligned(DIMS, D, SCALES, seed=0)
    model, batch = _problem(lg, "linear", "off", n=4)
    with pytest.raises(ValueError, match=option):
        inference_gaps(model, batch, **{option: value})


def test_a_likelihood_of_other_rows_is_refused():
    lg = LinearGaussian.axis_aligned(DIMS, D, SCALES, seed=0)
    model, batch = _problem(lg, "linear", "off", n=4)
    wrong = _exact_likelihood(torch.zeros(3, dtype=torch.float64), model.names)
    with pytest.raises(ValueError, match="same rows"):
        inference_gaps(model, batch, likelihood=wrong)
    with pytest.raises(TypeError, match="LogLikelihood"):
        inference_gaps(model, batch, likelihood=[0.0] * 4)
    with pytest.raises(TypeError, match="MultimodalVAE"):
        inference_gaps(torch.nn.Linear(2, 2), batch)
