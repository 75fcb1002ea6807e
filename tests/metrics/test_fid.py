"""Fréchet distance against scipy's matrix square root and closed forms; FID plumbing."""

import numpy as np
import pytest
import scipy.linalg
import torch

from pyromv.metrics import (
    InceptionFeatures,
    feature_statistics,
    fid,
    fid_from_features,
    frechet_distance,
)
from tests.metrics.toy import identity_model, one_hot_data


def _scipy_frechet(mu1, c1, mu2, c2):
    root = scipy.linalg.sqrtm(c1 @ c2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root.real))


@pytest.mark.parametrize(("dim", "seed"), [(1, 0), (3, 1), (8, 2), (16, 3)])
def test_frechet_distance_matches_scipy_sqrtm(dim, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(40 + 4 * dim, dim))
    b = rng.normal(size=(30 + 4 * dim, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    mu1, c1 = feature_statistics(a)
    mu2, c2 = feature_statistics(b)
    expected = _scipy_frechet(mu1, c1, mu2, c2)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8, abs=1e-8)
    assert fid_from_features(torch.as_tensor(a), torch.as_tensor(b)) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_closed_forms():
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == (
        pytest.approx(9.0 + 1.0)
    )
    # same covariance, shifted mean: only the shift counts
    c = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert frechet_distance(np.zeros(2), c, np.array([3.0, 4.0]), c) == pytest.approx(25.0)
    # a singular (rank-1) covariance is fine: its square root has a zero eigenvalue
    r = np.outer([1.0, 2.0], [1.0, 2.0])
    assert frechet_distance(np.zeros(2), r, np.zeros(2), r) == pytest.approx(0.0, abs=1e-9)


def test_fid_input_errors():
    with pytest.raises(ValueError, match="at least 2 rows"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        feature_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="dims"):
        fid_from_features(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="mismatched shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_fid_of_a_model_uses_the_observed_real_rows_and_the_requested_generations():
    n = 30
    masks = {"a": torch.arange(n) % 3 != 0}
    batch = one_hot_data(n, masks=masks)
    seen = []

    def spy(x):
        seen.append(x.shape[0])
        return x

    prior = fid(identity_model(), batch, "a", spy)
    assert seen == [int(masks["a"].sum()), int(masks["a"].sum())]  # real rows, as many draws
    seen.clear()
    cross = fid(identity_model(), batch, "a", spy, given=["b"], n=None)
    assert seen == [int(masks["a"].sum()), n]  # every row observes b
    # the identity model cross-generates a from b exactly: features of the same data, FID ~ 0
    # up to the rows that miss a (the real side has fewer rows); prior draws are N(0, I) instead
    assert 0 <= cross < prior


def test_inception_needs_a_local_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        InceptionFeatures(tmp_path / "missing.pth")
    bogus = tmp_path / "bogus.pth"
    torch.save([1, 2, 3], bogus)
    with pytest.raises(ValueError, match="state dict"):
        InceptionFeatures(bogus)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match="inception_v3"):
        InceptionFeatures(wrong)


@pytest.mark.slow
def test_inception_features_from_a_saved_state_dict(tmp_path):
    import safetensors.torch
    from torchvision.models import inception_v3

    # random weights stand in for trained ones here: the test is about loading and shapes
    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    path = tmp_path / "inception.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    extractor = InceptionFeatures(path)
    grey = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        features = extractor(grey)
        rgb = extractor(grey.expand(-1, 3, -1, -1))
    assert features.shape == (2, 2048)
    assert torch.isfinite(features).all()
    torch.testing.assert_close(features, rgb)  # one channel is read as three equal ones
    with pytest.raises(ValueError, match="images"):
        extractor(torch.rand(2, 64))


def _bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` weights of bilinear resizing with half-pixel centres (``align_corners=False``):
    output ``i`` reads source coordinate ``max((i + 1/2) n_in / n_out - 1/2, 0)``, split between
    its two neighbours (the last pixel repeated past the edge)."""
    out = torch.zeros(n_out, n_in)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(src), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        out[i, lo] += 1 - frac
        out[i, hi] += frac
    return out


@pytest.mark.slow
def test_inception_preprocessing_matches_a_hand_preprocessed_input(tmp_path):
    """Grey ``[0, 1]`` images -> three equal channels -> 299x299 bilinear -> ImageNet
    normalisation -> the network up to its pool: the extractor equals the same (random) network
    fed with that input built by hand (a separable interpolation matrix, literal statistics)."""
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=True, transform_input=True)
    path = tmp_path / "inception.pth"
    torch.save(net.state_dict(), path)
    extractor = InceptionFeatures(path)
    net.fc = torch.nn.Identity()
    net.eval()

    grey = torch.rand(1, 1, 7, 5)
    rows, cols = _bilinear_matrix(7, 299), _bilinear_matrix(5, 299)
    big = rows @ grey[0, 0] @ cols.T  # (299, 299)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    by_hand = ((big[None] - mean[:, None, None]) / std[:, None, None])[None]
    with torch.no_grad():
        expected = net(by_hand)
        got = extractor(grey)
    assert got.shape == (1, 2048) and expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # an input that skipped the normalisation gives other features (the check can fail)
    with torch.no_grad():
        unnormalised = net(big.expand(1, 3, 299, 299))
    assert not torch.allclose(got, unnormalised, rtol=1e-3, atol=1e-4)
