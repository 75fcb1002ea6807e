"""``likelihood_rescaling="dims"`` against hand-computed weights and the closed-form ``log p``.

``"dims"`` weights each modality's log-likelihood by ``max_k d_k / d_m`` (times the modality's own
``rescale``) in the training objective, so that small modalities are not drowned by large ones
(Shi et al. 2019's MMVAE code; Sutter et al. 2021). The weights belong to the objective only:
``log_likelihood`` divides every site's scale back out and reports the model's actual density,
which on the linear-Gaussian oracle with the exact guide is ``log p(X_O)`` in closed form.
"""

from __future__ import annotations

import pytest
import torch
from pyro import poutine

from pyromv.data import Modality, make_batch
from pyromv.metrics.likelihood import log_likelihood
from pyromv.models import MVAE, MVAEConfig
from tests.oracles.linear_gaussian import LinearGaussian, build_mvae, mixed_row_masks

DIMS = {"a": 3, "b": 2, "c": 6}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.4}
N = 28


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian.random(DIMS, 2, SCALES, seed=11)


def test_dims_weights_are_the_largest_size_over_each_size_times_rescale():
    mods = [
        Modality("img", shape=(1, 2, 3)),  # 6 entries: the largest
        Modality("vec", shape=(4,)),
        Modality("tab", shape=(2,), rescale=0.5),
    ]
    dims = MVAE(mods, MVAEConfig(latent_dim=2, likelihood_rescaling="dims")).likelihood_weights
    assert dims == pytest.approx({"img": 1.0, "vec": 6 / 4, "tab": 0.5 * 6 / 2}, rel=1e-12)
    plain = MVAE(mods, MVAEConfig(latent_dim=2)).likelihood_weights
    assert plain == pytest.approx({"img": 1.0, "vec": 1.0, "tab": 0.5}, rel=1e-12)


def test_the_objective_scores_each_modality_times_its_weight(lg):
    """At a fixed ``z`` (the guide's draw), each observed site ``x_m`` of the model trace
    carries scale ``w_m`` and log-density ``w_m log N(x_m; W_m z + b_m, s_m^2)``, computed by hand."""
    model = build_mvae(lg, likelihood_rescaling="dims")
    data = lg.sample(N, seed=2)
    masks = mixed_row_masks(lg.names, N, seed=3)
    batch = make_batch(model.modalities, data, masks)
    weights = {"a": 2.0, "b": 3.0, "c": 1.0}  # 6 / 3, 6 / 2, 6 / 6
    assert model.likelihood_weights == pytest.approx(weights, rel=1e-12)
    guide = poutine.trace(model.guide).get_trace(batch)
    trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)
    trace.compute_log_prob()
    z = guide.nodes["z"]["value"]
    for m in lg.names:
        site = trace.nodes[f"x_{m}"]
        assert site["scale"] == pytest.approx(weights[m], rel=1e-12)
        resid = data[m] - z @ lg.W[m].T - lg.b[m]
        per_row = torch.distributions.Normal(0.0, lg.s[m]).log_prob(resid).sum(-1) * masks[m]
        torch.testing.assert_close(site["log_prob_sum"], weights[m] * per_row.sum(), rtol=1e-10, atol=1e-10)


def test_log_likelihood_divides_the_weights_out(lg):
    """With the exact guide every importance weight is ``p(X_O)``: the estimate under ``"dims"``
    is the closed form, not ``sum_m w_m log p(x_m | z) + ...``."""
    data = lg.sample(N, seed=4)
    masks = mixed_row_masks(lg.names, N, seed=5)
    batch = make_batch(build_mvae(lg).modalities, data, masks)
    result = log_likelihood(build_mvae(lg, likelihood_rescaling="dims"), batch, K=20, seed=0, khat=False)
    torch.testing.assert_close(result.values, lg.log_marginal(data, masks), rtol=0, atol=1e-8)


def test_conditional_log_likelihood_is_the_same_with_and_without_weights(lg):
    """Same seed, same draws: ``log p(x_b, x_c | x_a)`` does not depend on the objective's weights."""
    data = lg.sample(N, seed=6)
    masks = mixed_row_masks(lg.names, N, seed=7)
    masks["a"] = torch.ones(N, dtype=torch.bool)
    plain, weighted = build_mvae(lg, exact_guide=False), build_mvae(lg, exact_guide=False,
                                                                    likelihood_rescaling="dims")
    weighted.load_state_dict(plain.state_dict())
    batch = make_batch(plain.modalities, data, masks)
    kw = {"K": 20, "seed": 0, "khat": False, "given": ["a"]}
    a, b = log_likelihood(plain, batch, **kw), log_likelihood(weighted, batch, **kw)
    assert a.values.isfinite().all() and len(a.values) > 0
    torch.testing.assert_close(b.values, a.values, rtol=0, atol=1e-10)
