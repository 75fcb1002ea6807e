"""Every estimator of ``log_likelihood`` (and ``inference_gaps``) on every registered model: a finite
estimate or a clear refusal.

The estimators' numbers are checked against closed forms in ``tests/oracles``; this file checks
the other direction of genericity: a model registered tomorrow either works with AIS, the
defensive proposal and adaptive K on partially observed rows, or is refused with a
``ValueError`` that says why (no likelihood, a proposal without a density, a latent without a
mean and variance) — never a crash or a NaN.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from pyromv.data import MultimodalDataset
from pyromv.metrics import ImportanceSamplingWarning, inference_gaps, log_likelihood
from pyromv.models import registered_models
from tests.models.test_common_surface import MODS, PARTIAL, _data, _model

pytestmark = pytest.mark.usefixtures("one_thread")

#: the refusals we know of, by model: (estimator, the error's words)
REFUSED = {
    ("nexus", "ais"): "randomness outside its sample sites",
    ("jnf", "defensive"): "mean",
}
ESTIMATORS = {
    "ais": {"method": "ais", "num_steps": 3, "num_chains": 2, "ais_options": {"leapfrog_steps": 1, "warmup": 2}},
    "defensive": {"K": 8, "proposal": "defensive", "khat": False},
    "adaptive": {"K": 25, "adaptive": True, "max_particles": 50},
}


def _partial() -> MultimodalDataset:
    masks = {k: torch.tensor(v, dtype=torch.bool) for k, v in PARTIAL.items()}
    return MultimodalDataset(MODS, _data(), masks)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("name", registered_models())
def test_estimate_or_clear_refusal(name, estimator):
    model = _model(name, {})
    options = ESTIMATORS[estimator]
    refusal = REFUSED.get((name, estimator))
    if not getattr(model, "has_likelihood", True):
        refusal = "no likelihood"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportanceSamplingWarning)
        if refusal is not None:
            with pytest.raises(ValueError, match=refusal):
                log_likelihood(model, _partial(), seed=0, **options)
            return
        result = log_likelihood(model, _partial(), seed=0, **options)
    assert result.method == options.get("method", "iwae")
    assert result.values.numel() > 0 and bool(result.values.isfinite().all()), result.values
    if estimator == "ais":
        assert result.row_stderr is not None and bool(result.row_stderr.isfinite().all())


#: models whose inference gaps are refused, and the error's words
GAPS_REFUSED = {"nexus": "randomness outside its sample sites"}


@pytest.mark.parametrize("name", registered_models())
def test_inference_gaps_or_clear_refusal(name):
    """The per-row Gaussian fit runs on every latent site of every model with a likelihood (or
    is refused): finite ELBOs and gaps, the two parts adding up to the whole gap, and no
    gradient left on the model's parameters."""
    model = _model(name, {})
    refusal = GAPS_REFUSED.get(name)
    if not getattr(model, "has_likelihood", True):
        refusal = "no likelihood"
    options = {"K": 4, "local_steps": 3, "local_samples": 2, "elbo_samples": 4, "seed": 0,
               "likelihood_options": {"khat": False}}
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            inference_gaps(model, _partial(), **options)
        return
    gaps = inference_gaps(model, _partial(), **options)
    for value in (gaps.log_p, gaps.elbo, gaps.local_elbo, gaps.elbo_stderr, gaps.local_elbo_stderr):
        assert value.numel() == gaps.rows.numel() > 0 and bool(value.isfinite().all()), value
    torch.testing.assert_close(gaps.amortisation_gap + gaps.approximation_gap, gaps.gap)
    assert all(p.grad is None for p in model.parameters())
