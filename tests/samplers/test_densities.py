"""Every sampler recovers known 2-D densities (a Gaussian mixture and a banana) from samples.

The score is the held-out gap ``mean_n [log p(x_n) - log r(x_n)]`` on fresh draws from the true
density ``p``: its expectation is ``KL(p || r) >= 0``, so it must be small (the fit is good) and
not below zero by more than its Monte Carlo noise (``r`` is a normalised density; a missing
Jacobian or normalising constant shows up here as a gap far from zero on either side).

Tolerances. For the correctly specified mixture (``K`` = the true number of components) the
maximum-likelihood fit has ``E[KL] ~ (#parameters) / (2 N) = 11 / 4000 < 0.003`` nats; we allow
0.05. Flows have no such formula: we allow 0.15 nats, an eighth of the gap of the best single
Gaussian on the banana (1.2 nats, computed in the test); measured 0.04-0.07 here. A 6-component
mixture is misspecified on the banana: we allow it 0.1 nats (measured 0.023).
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from pyromv.samplers import GaussianMixtureSampler, IAFSampler, MAFSampler, held_out_log_density

N_TRAIN, N_TEST = 2000, 4000
FLOW = {"num_layers": 4, "hidden_dims": [32, 32], "lr": 3e-3, "max_epochs": 150, "patience": 15,
        "progress": False}

# the mixture: weights, means, covariances
W = torch.tensor([0.35, 0.65])
MU = torch.tensor([[-1.5, 0.0], [1.5, 0.5]])
COV = torch.tensor([[[0.6, 0.3], [0.3, 0.6]], [[0.5, 0.0], [0.0, 0.25]]])


def mixture_sample(n, g):
    k = torch.multinomial(W, n, replacement=True, generator=g)
    chol = torch.linalg.cholesky(COV)
    return MU[k] + (chol[k] @ torch.randn(n, 2, 1, generator=g)).squeeze(-1)


def mixture_log_prob(x):
    comps = MultivariateNormal(MU, COV).log_prob(x.unsqueeze(1))  # (n, K)
    return torch.logsumexp(W.log() + comps, -1)


# the banana: x1 ~ N(0, 1.5^2), x2 | x1 ~ N(0.5 (x1^2 - 2.25), 0.5^2)
def banana_sample(n, g):
    x1 = 1.5 * torch.randn(n, generator=g)
    x2 = 0.5 * (x1**2 - 2.25) + 0.5 * torch.randn(n, generator=g)
    return torch.stack([x1, x2], 1)


def banana_log_prob(x):
    return Normal(0.0, 1.5).log_prob(x[:, 0]) + Normal(0.5 * (x[:, 0] ** 2 - 2.25), 0.5).log_prob(x[:, 1])


DENSITIES = {"mixture": (mixture_sample, mixture_log_prob), "banana": (banana_sample, banana_log_prob)}


def _data(density, seed=1):
    sample, log_prob = DENSITIES[density]
    g = torch.Generator().manual_seed(seed)
    return sample(N_TRAIN, g), sample(N_TEST, g), log_prob


def _gap(sampler, test, log_prob):
    diff = log_prob(test).double() - sampler.log_density(test).double()
    return float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))


def test_the_true_densities_are_normalised():
    # the references themselves: integrate on a grid
    x1, x2 = torch.meshgrid(torch.linspace(-8, 8, 201), torch.linspace(-6, 24, 301), indexing="ij")
    grid = torch.stack([x1.flatten(), x2.flatten()], 1)
    cell = (16 / 200) * (30 / 300)
    for _, log_prob in DENSITIES.values():
        assert float(log_prob(grid).exp().sum() * cell) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("density", ["mixture", "banana"])
def test_gmm_recovers_the_density(density):
    train, test, log_prob = _data(density)
    k, tol = (2, 0.05) if density == "mixture" else (6, 0.1)
    sampler = GaussianMixtureSampler(n_components=k).fit_codes(train)
    gap, se = _gap(sampler, test, log_prob)
    assert -4 * se < gap < tol  # lower side: false-alarm rate 3.2e-5 (one-sided normal, 4 SE)


@pytest.mark.slow
@pytest.mark.parametrize("density", ["mixture", "banana"])
@pytest.mark.parametrize("cls", [MAFSampler, IAFSampler])
def test_flows_recover_the_density(cls, density):
    train, test, log_prob = _data(density)
    sampler = cls(**FLOW).fit_codes(train)
    gap, se = _gap(sampler, test, log_prob)
    assert -4 * se < gap < 0.15  # lower side: false-alarm rate 3.2e-5 (one-sided normal, 4 SE)
    # far better than the best single Gaussian: the flow learned the curvature (banana, gap 1.23)
    # or the two modes (mixture, gap 0.26; the flows measured 0.047 and 0.074), not just the moments
    gauss = MultivariateNormal(train.mean(0), torch.cov(train.T))
    gauss_gap = float((log_prob(test) - gauss.log_prob(test)).mean())
    assert gauss_gap > (1.0 if density == "banana" else 0.2)
    assert gap < gauss_gap / (8 if density == "banana" else 3)


@pytest.mark.parametrize("cls", [MAFSampler, IAFSampler, GaussianMixtureSampler])
def test_fitted_densities_integrate_to_one(cls):
    # a standardised flow must carry the standardisation's Jacobian, a mixture its constants
    train, _, _ = _data("mixture")
    opts = {"n_components": 2} if cls is GaussianMixtureSampler else dict(FLOW, max_epochs=10)
    sampler = cls(**opts).fit_codes(3.0 * train[:500] + 1.0)  # codes far from standard scale
    x1, x2 = torch.meshgrid(torch.linspace(-14, 16, 151), torch.linspace(-10, 12, 111), indexing="ij")
    grid = torch.stack([x1.flatten(), x2.flatten()], 1)
    cell = (30 / 150) * (22 / 110)
    mass = float(sampler.log_density(grid).double().exp().sum() * cell)
    assert mass == pytest.approx(1.0, abs=0.02)


def test_samples_follow_the_fitted_density():
    # the mixture's draws have the moments of the true mixture (fit is near exact)
    train, _, _ = _data("mixture")
    sampler = GaussianMixtureSampler(n_components=2).fit_codes(train)
    torch.manual_seed(0)
    draws = sampler.sample(20000)
    true_mean = (W[:, None] * MU).sum(0)
    # SE of a coordinate's mean: sd / sqrt(20000) <= 1.63 / 141 = 0.0115, so 0.05 is >= 4.3 SE:
    # false-alarm rate < 2e-5 per coordinate (two-sided normal), plus the fit's own small error
    assert torch.allclose(draws.mean(0), true_mean, atol=0.05)
    assert draws.dtype == torch.get_default_dtype()


def test_held_out_log_density_reports_mean_and_standard_error():
    train, test, _ = _data("mixture")
    sampler = GaussianMixtureSampler(n_components=2).fit_codes(train)
    values = sampler.log_density(test).double()
    report = held_out_log_density(sampler, test)
    assert report["rows"] == N_TEST
    assert report["log_density"] == pytest.approx(float(values.mean()))
    assert report["standard_error"] == pytest.approx(float(values.std()) / math.sqrt(N_TEST))
