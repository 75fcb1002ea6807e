"""``latent_means(given=...)`` against the exact posterior, ``cluster_latents`` on latents whose
clustering is known."""

from __future__ import annotations

import pytest
import torch

from pyromv.data import make_batch
from pyromv.metrics import cluster_latents, latent_means
from tests.metrics.toy import identity_model
from tests.oracles.linear_gaussian import LinearGaussian, build_mvae, mixed_row_masks


@pytest.mark.parametrize("given", [None, ["a"], ["b", "c"]])
def test_latent_means_are_the_exact_posterior_means_of_the_given_modalities(given, float64):
    """MVAE with the exact PoE encoders of the linear-Gaussian model: ``E q(z | X_{O & given})``
    is the closed-form posterior mean given the observed modalities of ``given``; rows observing
    none of them get the prior mean 0."""
    lg = LinearGaussian.random({"a": 3, "b": 2, "c": 4}, 2, {"a": 0.5, "b": 0.8, "c": 0.3}, seed=1)
    model = build_mvae(lg)
    n = 35
    data, masks = lg.sample(n, seed=2), mixed_row_masks(lg.names, n, seed=3)
    seen = {m: masks[m] & (given is None or m in given) for m in lg.names}
    mu, _ = lg.posterior(data, seen)
    z = latent_means(model, make_batch(model.modalities, data, masks), given=given, batch_size=8)
    torch.testing.assert_close(z, mu, rtol=0, atol=1e-9)
    nothing = ~torch.stack(list(seen.values())).any(0)
    if given is not None:
        assert nothing.any()  # the case is exercised
    assert bool((z[nothing] == 0).all())


def test_latent_means_refuse_an_unknown_modality():
    model = identity_model()
    batch = make_batch(model.modalities, {m: torch.zeros(3, 2) for m in model.names})
    with pytest.raises(ValueError, match="zz"):
        latent_means(model, batch, given=["zz"])


def _labelled_by_a_only(n: int = 60):
    """``x_a`` one-hot of the label (plus noise); ``x_b`` one-hot of an independent coin."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    coins = torch.randint(0, 2, (n,), generator=g)
    noise = 0.05 * torch.randn(n, 2, generator=g)
    data = {"a": torch.nn.functional.one_hot(labels, 2).float() + noise,
            "b": torch.nn.functional.one_hot(coins, 2).float() + noise}
    model = identity_model(names=("a", "b"))
    return model, make_batch(model.modalities, data, None, labels), labels, coins


def test_cluster_latents_reads_only_the_given_modalities():
    model, batch, labels, coins = _labelled_by_a_only()
    from sklearn.metrics import normalized_mutual_info_score

    by_a = cluster_latents(model, batch, given=["a"])
    assert by_a["nmi"] == pytest.approx(1.0) and by_a["ari"] == pytest.approx(1.0)
    assert by_a["n_clusters"] == 2 and by_a["rows"] == 60
    # from b the two clusters are the coins: the score is the NMI between labels and coins
    by_b = cluster_latents(model, batch, given=["b"])
    assert by_b["nmi"] == pytest.approx(normalized_mutual_info_score(labels.numpy(), coins.numpy()), abs=1e-9)
    assert by_b["nmi"] < 0.2


def test_cluster_latents_number_of_clusters():
    model, batch, labels, _ = _labelled_by_a_only()
    four = cluster_latents(model, batch, n_clusters=4, given=["a"], seed=3)
    assert four["n_clusters"] == 4
    # four clusters of two separated classes: each cluster is pure (homogeneous) but a class is
    # split, so NMI < 1 while every pair split apart lowers ARI
    assert 0.3 < four["nmi"] < 1.0 and four["ari"] < 1.0
    assert cluster_latents(model, batch, n_clusters=4, given=["a"], seed=3) == four  # seeded
    for k in (1, 61):
        with pytest.raises(ValueError, match="n_clusters"):
            cluster_latents(model, batch, n_clusters=k)
