"""DCCAE: loss and gradients equal a torch reference; the correlation term against scikit-learn's
CCA and known identities; missing modalities; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyromv.data import MultimodalBatch
from pyromv.models import DCCAE, DCCAEConfig
from pyromv.models.dccae import canonical_correlations
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.dccae import dccae_reference_loss
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS

CONFIGS = {
    "default": {},
    "top1-ridge-lambda": {"top_k": 1, "ridge": 1e-2, "reconstruction_weight": 0.3, "min_pair_rows": 4},
    "dims-rescaled": {"top_k": 2, "likelihood_rescaling": "dims"},
}


def _linear_views(n: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    f64 = {"generator": g, "dtype": torch.float64}
    x = z @ torch.randn(2, 4, **f64) + 0.5 * torch.randn(n, 4, **f64)
    y = z @ torch.randn(2, 3, **f64) + 0.7 * torch.randn(n, 3, **f64)
    return x, y


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    torch.manual_seed(0)
    model = DCCAE(MODS, DCCAEConfig(latent_dim=3, **cfg))
    batch = shared.batch(missing, 32)
    codes, strata = model.codes(batch)
    assert model.total_correlation(codes, strata) > 0  # the correlation term is exercised
    assert missing == 0 or not batch.obs_mask["img"].all()
    assert_matches_reference(model, dccae_reference_loss, batch)


def test_the_reference_check_can_fail():
    torch.manual_seed(0)
    model = DCCAE(MODS, DCCAEConfig(latent_dim=3, reconstruction_weight=0.5))

    def other_lambda(m, b):
        m.config.reconstruction_weight = 0.25
        try:
            return dccae_reference_loss(m, b)
        finally:
            m.config.reconstruction_weight = 0.5

    with pytest.raises(AssertionError, match="are not close"):
        assert_matches_reference(model, other_lambda, shared.batch(0.0, 32))


def test_canonical_correlations_equal_scikit_learn_cca():
    from sklearn.cross_decomposition import CCA

    x, y = _linear_views()
    rho = canonical_correlations(x, y)
    cca = CCA(n_components=3, scale=False, max_iter=10_000, tol=1e-14).fit(x.numpy(), y.numpy())
    u, v = cca.transform(x.numpy(), y.numpy())
    expected = [np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(3)]
    np.testing.assert_allclose(rho.numpy(), expected, atol=1e-6)
    assert rho[0] > rho[1] > rho[2] >= 0


def test_canonical_correlations_identities():
    x, y = _linear_views()
    g = torch.Generator().manual_seed(1)
    # invariant to invertible affine maps of each view
    a, b = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(canonical_correlations(x @ a + 3.0, y @ b - 1.0), canonical_correlations(x, y))
    # a view against itself: every correlation 1; with a ridge r on whitened data (S = I): 1 / (1 + r)
    w = torch.linalg.cholesky(torch.cov(x.T, correction=0))
    white = torch.linalg.solve_triangular(w, (x - x.mean(0)).T, upper=False).T
    torch.testing.assert_close(canonical_correlations(white, white), torch.ones(4, dtype=torch.float64))
    shrunk = canonical_correlations(white, white, ridge=0.25)
    torch.testing.assert_close(shrunk, torch.full((4,), 0.8, dtype=torch.float64))
    with pytest.raises(ValueError, match="singular"):
        canonical_correlations(torch.zeros(10, 2), torch.randn(10, 2))


def test_pairs_need_enough_common_rows():
    """A pair is scored on the rows observing both, and only with at least ``min_pair_rows``."""
    torch.manual_seed(0)
    model = DCCAE(MODS[:2], DCCAEConfig(latent_dim=2, min_pair_rows=6))
    codes = torch.randn(2, 10, 2, dtype=torch.float64)
    strata = torch.ones(2, 10, dtype=torch.bool)
    strata[0, :5] = False  # 5 rows observe both
    assert model.total_correlation(codes, strata) == 0
    strata[0, 4] = True  # 6 rows
    rows = strata.all(0)
    expected = 6 * canonical_correlations(codes[0][rows], codes[1][rows], model.config.ridge).sum()
    torch.testing.assert_close(model.total_correlation(codes, strata), expected)
    assert DCCAE(MODS[:2], DCCAEConfig(latent_dim=2)).pair_rows == 4  # default: latent_dim + 2


def test_masking_a_modality_equals_removing_it():
    torch.manual_seed(0)
    full = DCCAE(MODS, DCCAEConfig(latent_dim=3, min_pair_rows=4))
    two = DCCAE(MODS[:2], DCCAEConfig(latent_dim=3, min_pair_rows=4))
    two.load_state_dict({k: v for k, v in full.state_dict().items() if ".tag" not in k and "tag." not in k})
    batch = shared.batch(0.3, 32)
    masked = MultimodalBatch(batch.data, {**batch.obs_mask, "tag": torch.zeros_like(batch.obs_mask["tag"])})
    removed = MultimodalBatch({k: batch.data[k] for k in ("img", "vec")},
                              {k: batch.obs_mask[k] for k in ("img", "vec")})
    loss = full.default_loss()
    torch.testing.assert_close(loss.differentiable_loss(full.model, full.guide, masked),
                               loss.differentiable_loss(two.model, two.guide, removed))


def test_evaluation_loss_is_the_training_objective():
    torch.manual_seed(0)
    model = DCCAE(MODS, DCCAEConfig(latent_dim=3))
    batch = shared.batch(0.2, 32)
    train = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    evaluation = model.evaluation_loss().differentiable_loss(model.evaluation_model(), model.evaluation_guide(), batch)
    torch.testing.assert_close(train, evaluation)


@pytest.mark.parametrize("options,match", [
    ({"top_k": 4}, "top_k"),
    ({"ridge": -1.0}, "ridge"),
    ({"reconstruction_weight": 0.0}, "reconstruction_weight"),
    ({"min_pair_rows": 1}, "min_pair_rows"),
    ({"num_particles": 2}, "num_particles"),
    ({"beta": 2.0}, "beta"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        DCCAE(MODS, DCCAEConfig(latent_dim=3, **options))


def test_one_modality_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        DCCAE(MODS[:1], DCCAEConfig(latent_dim=3))
