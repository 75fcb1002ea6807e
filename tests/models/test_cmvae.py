"""CMVAE: reference equality with the paper's cluster expectation, the mixture prior as that
expectation's closed form, cluster assignments from observed modalities only, and the post-hoc
selection of the number of clusters on data with a known number."""

from __future__ import annotations

import pytest
import torch
import torch.distributions as D

from pyromv.data import Modality, MultimodalBatch, MultimodalDataset, mcar
from pyromv.metrics.clustering import model_clusters
from pyromv.models import CMVAE, CMVAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.cmvae import cmvae_cluster_term, cmvae_reference_loss

MODS = [
    Modality("img", (1, 8, 8), likelihood="continuous_bernoulli", encoder="conv", decoder="conv"),
    Modality("vec", (5,), likelihood="laplace", likelihood_kwargs={"scale": 0.75}),
    Modality("tag", (3,), likelihood="categorical", likelihood_kwargs={"num_categories": 4}),
]


def _batch(missing: float) -> MultimodalBatch:
    g = torch.Generator().manual_seed(3)
    data = {"img": torch.rand(16, 1, 8, 8, generator=g), "vec": torch.randn(16, 5, generator=g),
            "tag": torch.randint(0, 4, (16, 3), generator=g)}
    dataset = MultimodalDataset(MODS, data)
    return (mcar(dataset, missing, seed=1) if missing else dataset).batch()


def _model(seed=0, **cfg) -> CMVAE:
    torch.manual_seed(seed)
    return CMVAE(MODS, CMVAEConfig(**{"latent_dim": 4, "private_latent_dim": 3, "n_clusters": 5, **cfg}))


CONFIGS = {
    "default": {},
    "iwae-k3-normal-learned-scale": {"objective": "iwae", "num_particles": 3, "distribution": "normal",
                                     "learn_prior_scale": True},
    "elbo-k2": {"objective": "elbo", "num_particles": 2},
    "siwae-k2": {"objective": "siwae", "num_particles": 2},
}


@pytest.mark.parametrize("pruned", [False, True], ids=["all-clusters", "two-pruned"])
@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_loss_and_gradients_equal_the_papers_cluster_expectation(cfg, missing, pruned):
    model = _model(**cfg)
    with torch.no_grad():
        model.cluster_logits.copy_(torch.randn(5))
        if pruned:
            model.active_clusters[[1, 3]] = False
    assert_matches_reference(model, cmvae_reference_loss, _batch(missing))


def test_the_prior_is_the_closed_form_of_the_cluster_expectation():
    """``E_{q(c|u)}[log pi_c p(u|c) - log q(c|u)] = log sum_c pi_c p(u|c)`` for the exact
    ``q(c | u)``; the right side is computed here with torch's own mixture."""
    model = _model()
    with torch.no_grad():
        model.cluster_logits.copy_(torch.randn(5))
    u = 3 * torch.randn(7, 4)
    torch.testing.assert_close(cmvae_cluster_term(model, u), model.prior().log_prob(u))
    mix = D.MixtureSameFamily(D.Categorical(logits=model.cluster_logits),
                              D.Independent(D.Laplace(model.cluster_means, 1.0), 1))
    torch.testing.assert_close(model.prior().log_prob(u), mix.log_prob(u))


def test_cluster_posterior_averages_the_observed_modalities_only():
    model = _model()
    batch = _batch(0.4).restrict(["tag"])  # some rows observe nothing of it
    loc, _, mask = model.experts(batch)
    comps = D.Independent(D.Laplace(model.cluster_means, 1.0), 1)
    per_modality = torch.softmax(comps.log_prob(loc.unsqueeze(-2)) + torch.log_softmax(model.cluster_logits, -1), -1)
    expected = (per_modality * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    got = model.cluster_posterior(batch)
    rows = mask.any(1)
    assert rows.any() and not rows.all()
    torch.testing.assert_close(got[rows], expected[rows])
    torch.testing.assert_close(got[~rows], torch.softmax(model.cluster_logits, -1).expand_as(got[~rows]))
    assert torch.equal(model.predict_clusters(batch), got.argmax(-1))
    # the data of a missing modality changes nothing
    changed = {m: batch.data[m].clone() for m in batch.names}
    for m in batch.names:
        gone = ~batch.row_mask(m)
        changed[m][gone] = torch.flip(changed[m], [0])[gone]
    torch.testing.assert_close(model.cluster_posterior(MultimodalBatch(changed, batch.obs_mask)), got)


# ---------------------------------------------------------------------- cluster selection
CENTERS = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
DECOYS = torch.tensor([[12.0, 12.0], [-12.0, 12.0], [12.0, -12.0]])


def _clustered_data(n_per=40, seed=0):
    """Two 2-d modalities that are noisy copies of one of three centres (labels = the centre)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per)
    mods = [Modality(m, (2,), likelihood="normal", encoder="linear", decoder="linear") for m in ("a", "b")]
    data = {m: CENTERS[labels] + 0.3 * torch.randn(len(labels), 2, generator=g) for m in ("a", "b")}
    return MultimodalDataset(mods, data, labels=labels), mods


def _clustered_model():
    """The data above and a CMVAE whose codes are the data (identity encoders) with six
    clusters: three on the centres (indices 2-4) and three decoys."""
    data, mods = _clustered_data()
    torch.manual_seed(0)
    model = CMVAE(mods, CMVAEConfig(latent_dim=2, private_latent_dim=2, n_clusters=6))
    with torch.no_grad():
        for m in model.names:
            model.encoders[m].linear.weight.copy_(torch.eye(2))
            model.encoders[m].linear.bias.zero_()
        model.cluster_means.copy_(torch.cat([DECOYS[:2], CENTERS, DECOYS[2:]]))
    return data, model


def test_pruning_selects_the_number_of_clusters_in_the_data():
    """Six clusters, three on the data's centres and three decoys far away: the selection keeps
    exactly the three centres, and the model's own clusters then recover the labels."""
    data, model = _clustered_model()
    before = model_clusters(model, data)
    assert before["n_clusters"] == 6
    result = model.prune_clusters(data)
    assert result["n_clusters"] == 3 and sorted(result["clusters"]) == [2, 3, 4]
    assert set(result["scores"]) == {2, 3, 4, 5, 6}
    assert min(result["scores"].values()) == result["scores"][3]
    assert model.num_clusters == 3 and model.active_clusters.tolist() == [False, False, True, True, True, False]
    after = model_clusters(model, data)
    assert after["nmi"] == pytest.approx(1.0) and after["ari"] == pytest.approx(1.0)
    # rows seen through one modality only are assigned by that modality
    partial = data.batch()
    b_only = partial.restrict(["b"])
    assert not b_only.row_mask("a").any()
    assert torch.equal(model.predict_clusters(b_only), partial.labels + 2)


def test_model_clusters_prunes_a_copy_and_reports_the_selection():
    data, model = _clustered_model()
    out = model_clusters(model, data, prune_on=data)
    assert out["selection"]["n_clusters"] == 3 and out["n_clusters"] == 3
    assert out["nmi"] == pytest.approx(1.0)
    assert out["all_clusters"]["n_clusters"] == 6
    assert model.num_clusters == 6  # the model itself is untouched


def test_pruned_clusters_are_gone_from_prior_posterior_and_samples():
    model = _model()
    with torch.no_grad():
        model.active_clusters[[0, 2, 4]] = False
    prior = model.prior()
    assert torch.equal(prior.mixture_distribution.probs[[0, 2, 4]], torch.zeros(3))
    assert torch.isfinite(prior.log_prob(torch.randn(3, 4))).all()
    probs = model.cluster_probabilities(torch.randn(10, 4))
    assert torch.equal(probs[:, [0, 2, 4]], torch.zeros(10, 3))
    empty = model.encode(_batch(0.0).restrict([]))
    u = torch.randn(5, 16, 4)
    torch.testing.assert_close(empty.log_prob(u), prior.log_prob(u))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="n_clusters"):
        _model(n_clusters=1)
    with pytest.raises(ValueError, match="at least one modality"):
        _model().prune_clusters(_batch(0.0).restrict([]))
