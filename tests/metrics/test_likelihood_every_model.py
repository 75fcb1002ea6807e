"""Every estimator of ``log_likelihood`` on every registered model: a finite estimate or a clear refusal.

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
from pyromv.metrics import ImportanceSamplingWarning, log_likelihood
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
