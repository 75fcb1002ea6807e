"""``impute`` against the closed-form conditionals of the linear-Gaussian model.

With ``x = W z + b + N(0, s^2)`` stacked over modalities and ``p(z | X_obs) = N(mu, Sigma)``
(:meth:`LinearGaussian.posterior`), a missing entry ``j`` has

    E[x_j | X_obs] = W_j mu + b_j,   Var[x_j | X_obs] = W_j Sigma W_j^T + s_j^2.

With the exact guide (full-modality masks, :func:`set_exact_encoders`) every weight is equal,
so the SNIS mean is a plain Monte Carlo mean over ``z ~ p(z | X_obs)``, whose error has standard
deviation ``sqrt(W_j Sigma W_j^T / K)``. Under a feature mask the zero-filled encoder is not the
posterior; the weights correct it as ``K`` grows, with an error of about
``sqrt(W_j Sigma W_j^T / ESS)``: the tolerances below are those, times 5.
"""

import math

import pyro.distributions as dist
import pytest
import torch

from pyromv.data import MultimodalDataset
from pyromv.metrics.imputation import impute
from pyromv.models.mvae import MVAE, MVAEConfig
from tests.oracles.linear_gaussian import LinearGaussian, build_mvae, modalities, set_decoders

# the models here get their proposal from a hand-set exact guide, not from their (plain) encoders, so
# the warning that a plain encoder meets feature masks does not concern them
pytestmark = pytest.mark.filterwarnings("ignore:modality .* the data miss single entries:UserWarning")

N = 12


@pytest.fixture
def lg():
    return LinearGaussian.random({"a": 4, "b": 5}, latent_dim=2, scales={"a": 0.3, "b": 0.5}, seed=3)


def _closed_form(lg, data, obs_mask):
    mu, sigma = lg.posterior(data, obs_mask)
    W = torch.cat([lg.W[m] for m in lg.names])
    b = torch.cat([lg.b[m] for m in lg.names])
    var_s = torch.cat([torch.full((lg.dim(m),), lg.s[m] ** 2) for m in lg.names])
    mean = mu @ W.T + b
    latent_var = torch.einsum("jk,nkl,jl->nj", W, sigma, W)
    split = [lg.dim(m) for m in lg.names]
    out = lambda t: dict(zip(lg.names, torch.split(t, split, -1)))  # noqa: E731
    return out(mean), out(latent_var), out((latent_var + var_s).sqrt())


def test_whole_missing_modality_matches_the_gaussian_conditional(lg):
    data = lg.sample(N, seed=1)
    mask = {"a": torch.ones(N, dtype=torch.bool), "b": torch.arange(N) % 2 == 0}
    ds = MultimodalDataset(modalities(lg), data, mask)
    model = build_mvae(lg)
    K = 4000
    result = impute(model, ds, num_samples=K, seed=0, particle_chunk=1000)
    mean, latent_var, std = _closed_form(lg, data, mask)
    rows = ~mask["b"]
    tol = 5 * (latent_var["b"][rows] / K).sqrt()
    err = (result.data["b"][rows] - mean["b"][rows]).abs()
    assert bool((err < tol).all()), float((err / tol).max())
    # the SNIS predictive std: s^2 plus the sample variance of W z_k (relative error ~ sqrt(2 / K))
    assert torch.allclose(result.std["b"][rows], std["b"][rows], rtol=0.05)
    # the guide is the posterior: flat weights, ESS = K, no tail
    assert torch.allclose(result.ess[rows], torch.full((int(rows.sum()),), float(K), dtype=torch.float64))
    assert bool((result.khat[rows] == -math.inf).all())
    # rows with nothing missing are not touched (and keep ESS K, k-hat NaN)
    assert torch.equal(result.data["b"][~rows], data["b"][~rows].to(result.data["b"].dtype))


class _PatternPosterior(MVAE):
    """An MVAE whose guide is ``N(mu + shift, inflate * Sigma)`` with ``p(z | X_obs) = N(mu, Sigma)``
    the exact posterior of each row's own feature mask (the zero-filled linear experts are not
    exact under feature masks): exact for ``shift = 0, inflate = 1``, a wrong proposal with
    good overlap otherwise, which the importance weights must correct."""

    def __init__(self, lg, shift=0.0, inflate=1.0):
        super().__init__(modalities(lg), MVAEConfig(latent_dim=lg.latent_dim))
        set_decoders(self, lg)
        self.lg, self.shift, self.inflate = lg, shift, inflate

    def posterior(self, batch):
        mu, sigma = self.lg.posterior(batch.data, batch.obs_mask)
        return dist.MultivariateNormal(mu + self.shift, covariance_matrix=self.inflate * sigma)


@pytest.mark.parametrize("shift, inflate", [(0.0, 1.0), (0.3, 2.0)])
def test_missing_features_match_the_gaussian_conditional(lg, shift, inflate):
    data = lg.sample(N, seed=2)
    g = torch.Generator().manual_seed(0)
    feat = torch.rand(N, lg.dim("a"), generator=g) > 0.5
    feat[:, 0] = True  # every row observes some of a
    mask = {"a": feat, "b": torch.arange(N) % 3 != 0}
    ds = MultimodalDataset(modalities(lg), data, mask)
    model = _PatternPosterior(lg, shift, inflate)
    K = 4000
    result = impute(model, ds, num_samples=K, seed=0, particle_chunk=1000)
    mean, latent_var, std = _closed_form(lg, data, mask)
    if shift == 0.0:  # the exact guide: flat weights
        assert torch.allclose(result.ess, torch.full((N,), float(K), dtype=torch.float64))
    else:  # weights that matter, and ESS enough for the tolerance to mean something
        assert bool((result.ess < 0.9 * K).all()) and bool((result.ess > 0.1 * K).all())
    for m in ("a", "b"):
        miss = result.missing[m]
        tol = 5 * (latent_var[m] / result.ess[:, None]).sqrt()
        err = (result.data[m] - mean[m]).abs()
        assert bool((err[miss] < tol[miss]).all()), (m, float((err[miss] / tol[miss]).max()))
        assert torch.allclose(result.std[m][miss], std[m][miss], rtol=0.1)
        # observed entries are the input's, bit for bit, with zero std
        assert torch.equal(result.data[m][~miss], ds.data[m][~miss])
        assert bool((result.std[m][~miss] == 0).all())
        assert bool(result.dataset.obs_mask[m].all())


def test_an_unweighted_wrong_proposal_would_fail(lg):
    """The power of the test above: the proposal's own mean (no weights) misses the tolerance."""
    data = lg.sample(N, seed=2)
    mask = {"a": torch.ones(N, dtype=torch.bool), "b": torch.zeros(N, dtype=torch.bool)}
    model = _PatternPosterior(lg, 0.3, 2.0)
    mean, latent_var, _ = _closed_form(lg, data, mask)
    mu, _ = lg.posterior(data, mask)
    unweighted = (mu + 0.3) @ lg.W["b"].T + lg.b["b"]
    tol = 5 * (latent_var["b"] / 4000).sqrt()
    assert bool(((unweighted - mean["b"]).abs() > tol).any())
    result = impute(model, MultimodalDataset(modalities(lg), data, mask), num_samples=4000, seed=0,
                    particle_chunk=1000)
    tol = 5 * (latent_var["b"] / result.ess[:, None]).sqrt()
    assert bool(((result.data["b"] - mean["b"]).abs() < tol).all())


def test_multiple_imputations_sample_the_conditional(lg):
    data = lg.sample(4, seed=5)
    mask = {"a": torch.ones(4, dtype=torch.bool), "b": torch.zeros(4, dtype=torch.bool)}
    ds = MultimodalDataset(modalities(lg), data, mask)
    model = build_mvae(lg)
    I = 3000  # noqa: E741
    K = 2000
    result = impute(model, ds, num_samples=K, num_imputations=I, seed=1, particle_chunk=500)
    mean, latent_var, std = _closed_form(lg, data, mask)
    draws = result.imputations["b"]
    assert draws.shape == (I, 4, 5)
    # the draws are x ~ p(x_b | x_a): their mean is within the Monte Carlo error of the K particles
    # they were resampled from plus that of I draws, their std within 10% of the closed form
    tol = 5 * (latent_var["b"] / K + std["b"] ** 2 / I).sqrt()
    assert bool(((draws.mean(0) - mean["b"]).abs() < tol).all())
    assert torch.allclose(draws.std(0), std["b"], rtol=0.1)
    # observed modality a: every imputation holds the data
    assert torch.equal(result.imputations["a"], ds.data["a"].expand(I, 4, 4))
    # means instead of draws: only the latent part of the spread remains
    means = impute(model, ds, num_samples=K, num_imputations=I, sample=False, seed=1,
                   particle_chunk=500).imputations["b"]
    assert bool((means.std(0) < draws.std(0)).all())


def test_imputation_is_seeded(lg):
    data = lg.sample(6, seed=5)
    mask = {"a": torch.ones(6, dtype=torch.bool), "b": torch.arange(6) < 3}
    ds = MultimodalDataset(modalities(lg), data, mask)
    model = build_mvae(lg)
    one = impute(model, ds, num_samples=50, num_imputations=4, seed=7, batch_size=2, particle_chunk=20)
    two = impute(model, ds, num_samples=50, num_imputations=4, seed=7, batch_size=2, particle_chunk=20)
    assert torch.equal(one.data["b"], two.data["b"]) and torch.equal(one.imputations["b"], two.imputations["b"])
