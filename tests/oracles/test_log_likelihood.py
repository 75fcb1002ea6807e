"""``log_likelihood`` against the closed forms of the linear-Gaussian model (tests/oracles).

Tolerances come from the estimator's own statistics. With ``z_k ~ q`` and weights
``w = p(X, z) / q(z)``, the relative variance of ``w`` is ``rho - 1`` with
``rho = E_q[w^2] / p(X)^2 = int p(z | X)^2 / q(z) dz`` (Gaussian, closed form below). By the
delta method ``log p_hat - log p`` has mean ``-(rho - 1) / (2K)`` and standard deviation
``sqrt((rho - 1) / K)``; each row must land within 5 standard deviations of that mean.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyromv.data import make_batch
from pyromv.metrics.likelihood import ImportanceSamplingWarning, log_likelihood
from tests.oracles.linear_gaussian import (
    DTYPE,
    LinearGaussian,
    build_mvae,
    mixed_row_masks,
)

N = 30
K = 1000


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian.random({"a": 4, "b": 3, "c": 5}, 2, {"a": 0.5, "b": 0.8, "c": 1.0}, seed=1)


@pytest.fixture(scope="module")
def data(lg):
    return lg.sample(N, seed=2)


def _log_rho(mu, sigma, m, v):
    """``log int N(z; mu, sigma)^2 / N(z; m, v) dz`` per row (full covariances, float64)."""
    sigma_inv, v_inv = torch.linalg.inv(sigma), torch.linalg.inv(v)
    A = 2 * sigma_inv - v_inv
    b = torch.einsum("nij,nj->ni", 2 * sigma_inv, mu) - torch.einsum("nij,nj->ni", v_inv, m)
    c = torch.einsum("ni,nij,nj->n", mu, sigma_inv, mu) - 0.5 * torch.einsum("ni,nij,nj->n", m, v_inv, m)
    quad = torch.einsum("ni,ni->n", b, torch.linalg.solve(A, b))
    return -torch.logdet(sigma) + 0.5 * torch.logdet(v) - 0.5 * torch.logdet(A) + 0.5 * quad - c


def _check_within_delta_method(estimate, truth, log_rho, k):
    rel_var = log_rho.exp() - 1
    assert bool((rel_var >= -1e-9).all())
    sd = (rel_var.clamp_min(0) / k).sqrt()
    bias = -rel_var / (2 * k)
    err = estimate - truth - bias
    # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 per entry, summed over entries (normal approx.)
    assert bool((err.abs() <= 5 * sd + 1e-4).all()), (err / sd).abs().max()
    return sd



def _only(names, lg, n=N):
    return {m: torch.full((n,), m in names, dtype=torch.bool) for m in lg.names}


def _and(a, b):
    return {m: a[m] & b[m] for m in a}


# ------------------------------------------------------------------------------ joint
@pytest.mark.parametrize("missing", [False, True])
def test_joint_with_the_exact_guide_equals_the_closed_form(lg, data, missing):
    masks = mixed_row_masks(lg.names, N, seed=3) if missing else None
    model = build_mvae(lg)
    batch = make_batch(model.modalities, data, masks)
    result = log_likelihood(model, batch, K=30, particle_chunk=7, batch_size=8, seed=0)
    truth = lg.log_marginal(data, masks)
    # q(z | X_obs) = p(z | X_obs): every weight is p(X_obs), whatever K (float32 round-off)
    torch.testing.assert_close(result.values, truth, rtol=0, atol=1e-4)
    assert result.rows.tolist() == list(range(N))
    assert bool((result.khat == -math.inf).all())  # flat weights: no tail at all


def _inflated_guide_posterior(lg, data, masks, c):
    """Closed-form PoE of the experts ``N(A_m (x_m - b_m), diag(c s_m / d_m)^2)`` and the prior."""
    precision = torch.ones(N, lg.latent_dim, dtype=DTYPE)
    weighted = torch.zeros(N, lg.latent_dim, dtype=DTYPE)
    for m in lg.names:
        W = lg.W[m]
        d2 = (W**2).sum(0)
        expert_loc = (data[m] - lg.b[m]) @ W / d2
        expert_prec = d2 / (c * lg.s[m]) ** 2
        rows = masks[m].to(DTYPE)[:, None]
        precision = precision + rows * expert_prec
        weighted = weighted + rows * expert_prec * expert_loc
    return weighted / precision, torch.diag_embed(1 / precision)


@pytest.mark.parametrize("missing", [False, True])
def test_joint_with_a_wider_guide_is_within_the_delta_method_tolerance(lg, data, missing):
    c = 1.6  # every expert 1.6x too wide: q is wider than the posterior, the weights are bounded
    masks = mixed_row_masks(lg.names, N, seed=3) if missing else _only(lg.names, lg)
    model = build_mvae(lg)
    with torch.no_grad():
        for m in model.names:
            model.encoders[m].log_scale += math.log(c)
    batch = make_batch(model.modalities, data, masks)
    result = log_likelihood(model, batch, K=K, particle_chunk=64, batch_size=7, seed=0)
    mu, sigma = lg.posterior(data, masks)
    m, v = _inflated_guide_posterior(lg, data, masks, c)
    sd = _check_within_delta_method(result.values, lg.log_marginal(data, masks), _log_rho(mu, sigma, m, v), K)
    assert float(sd.max()) < 0.05  # the check above is a sharp one
    assert float(sd.min()) > 1e-4  # and the guide is not exact: the estimate has noise
    assert float(result.khat.max()) < 0.7  # bounded weights: a low k-hat


def test_joint_of_a_subset_of_targets_is_its_marginal(lg, data):
    model = build_mvae(lg)
    batch = make_batch(model.modalities, data)
    result = log_likelihood(model, batch, K=30, targets=["a", "c"], seed=0)
    torch.testing.assert_close(result.values, lg.log_marginal(data, _only("ac", lg)), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------ conditional
@pytest.mark.parametrize(
    ("given", "targets", "missing"),
    [(("a",), ("b", "c"), False), (("a", "b"), ("c",), False), (("c",), ("a", "b"), True)],
)
def test_conditional_with_the_exact_guide_is_within_the_delta_method_tolerance(
    lg, data, given, targets, missing
):
    masks = mixed_row_masks(lg.names, N, seed=4) if missing else _only(lg.names, lg)
    model = build_mvae(lg)
    batch = make_batch(model.modalities, data, masks)
    result = log_likelihood(
        model, batch, K=K, given=given, targets=targets, particle_chunk=128, batch_size=8, seed=0
    )
    s_rows = sum(masks[m].long() for m in given) > 0
    t_rows = sum(masks[m].long() for m in targets) > 0
    keep = (s_rows & t_rows).nonzero().flatten()
    assert result.rows.tolist() == keep.tolist()
    if missing:
        assert 0 < len(keep) < N
    on_s = _and(masks, _only(given, lg))
    on_st = _and(masks, _only(given + targets, lg))
    truth = (lg.log_marginal(data, on_st) - lg.log_marginal(data, on_s))[keep]
    # proposal p(z | X_S); weights proportional to p(z | X_{S+T}) / p(z | X_S)
    mu_s, sigma_s = lg.posterior(data, on_s)
    mu_st, sigma_st = lg.posterior(data, on_st)
    log_rho = _log_rho(mu_st, sigma_st, mu_s, sigma_s)[keep]
    sd = _check_within_delta_method(result.values, truth, log_rho, K)
    assert float(sd.max()) < 0.15
    assert float(sd.min()) > 1e-3  # the targets move the posterior: not a trivial check
    assert float(result.khat.max()) < 0.7  # exact guide: low k-hat


# ------------------------------------------------------------------------------ k-hat
def test_khat_is_low_for_the_exact_guide_and_high_for_a_bad_proposal(lg, data):
    model = build_mvae(lg)
    batch = make_batch(model.modalities, data)
    truth = lg.log_marginal(data) - lg.log_marginal(data, _only("a", lg))
    good = log_likelihood(model, batch, K=K, given="a", seed=0)
    assert float(good.khat.max()) < 0.7

    def overconfident(b):
        q = model.encode(b.restrict(["a"]))  # ignores what it is given beyond "a", like the good one
        with pyro.plate("batch", b.batch_size):
            pyro.sample("z", dist.Normal(q.mean + 0.5 * q.stddev, 0.1 * q.stddev).to_event(1))

    with pytest.warns(ImportanceSamplingWarning, match="k-hat above 0.7"):
        bad = log_likelihood(model, batch, K=K, given="a", guide=overconfident, seed=0)
    assert float(bad.khat.median()) > 0.7
    # and the k-hat is right to complain: the bad estimates are far off
    assert float((bad.values - truth).abs().mean()) > 3 * float((good.values - truth).abs().mean())
