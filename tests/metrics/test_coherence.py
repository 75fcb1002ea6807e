"""Coherence, classifiers, reconstruction error and clustering on a model with known outputs."""

import pytest
import torch

from pyromv.data import MultimodalDataset
from pyromv.metrics import (
    ModalityClassifier,
    classifier_accuracy,
    cluster_latents,
    cross_coherence,
    joint_coherence,
    latent_means,
    predict,
    proper_subsets,
    reconstruction_error,
    train_classifiers,
)
from pyromv.metrics.classifiers import ClassifierConfig
from tests.metrics.toy import NAMES, argmax_classifier, identity_model, one_hot_data

CLASSIFIERS = {m: argmax_classifier for m in NAMES}


def test_proper_subsets_of_three_modalities():
    subs = proper_subsets(NAMES)
    assert subs == [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c")]


@pytest.mark.parametrize("sample", [False, True])
def test_identity_decoders_are_perfectly_coherent(sample):
    result = cross_coherence(identity_model(), one_hot_data(), CLASSIFIERS, sample=sample)
    assert result.by_size == {1: 1.0, 2: 1.0}
    assert set(result.by_pair["a+b"]) == {"c"}  # targets outside the subset only
    assert set(result.by_pair["a"]) == {"b", "c"}


def test_a_swapping_decoder_is_never_coherent_and_the_averages_follow():
    # decoder of c shows the other class: every S -> c generation is wrong, the others right
    result = cross_coherence(identity_model(swapped=("c",)), one_hot_data(), CLASSIFIERS)
    assert result.by_pair["a"] == {"b": 1.0, "c": 0.0}
    assert result.by_pair["a+b"] == {"c": 0.0}
    assert result.by_pair["a+c"] == {"b": 1.0}
    assert result.by_subset["a"] == 0.5
    # size 1: a -> {b, c}: 0.5, b -> {a, c}: 0.5, c -> {a, b}: 1.0; size 2: 0, 1, 1
    assert result.by_size[1] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert result.by_size[2] == pytest.approx(2 / 3)


def test_include_self_scores_the_subsets_own_modalities():
    result = cross_coherence(identity_model(swapped=("a",)), one_hot_data(), CLASSIFIERS,
                             subsets=[("a",)], include_self=True)
    assert result.by_pair["a"] == {"a": 0.0, "b": 1.0, "c": 1.0}


def test_coherence_uses_rows_that_observe_the_whole_subset():
    n = 40
    masks = {"a": torch.arange(n) % 2 == 0, "b": torch.arange(n) % 4 != 1, "c": torch.ones(n, dtype=torch.bool)}
    batch = one_hot_data(n, masks=masks)
    result = cross_coherence(identity_model(), batch, CLASSIFIERS)
    assert result.rows["a"] == int(masks["a"].sum())
    assert result.rows["a+b"] == int((masks["a"] & masks["b"]).sum())
    assert result.by_size == {1: 1.0, 2: 1.0}


def test_constant_classifier_gives_the_class_frequency():
    batch = one_hot_data(50, seed=3)

    def always_one(x):
        return torch.tensor([[0.0, 1.0]]).expand(x.shape[0], 2)

    result = cross_coherence(identity_model(), batch, {m: always_one for m in NAMES})
    assert result.by_size[1] == pytest.approx(float((batch.labels == 1).float().mean()))


def test_joint_coherence_identity_and_swap():
    assert joint_coherence(identity_model(), CLASSIFIERS, n=300) == 1.0
    # argmax(z) and argmax(swap z) always differ
    assert joint_coherence(identity_model(swapped=("b",)), CLASSIFIERS, n=300) == 0.0


def test_coherence_bad_inputs():
    model, batch = identity_model(), one_hot_data()
    with pytest.raises(ValueError, match="no classifier for modality 'c'"):
        cross_coherence(model, batch, {"a": argmax_classifier, "b": argmax_classifier})
    with pytest.raises(ValueError, match="labels"):
        cross_coherence(model, batch.__class__(batch.data, batch.obs_mask, None), CLASSIFIERS)
    with pytest.raises(ValueError, match="unknown modality"):
        cross_coherence(model, batch, CLASSIFIERS, subsets=[("zz",)])
    with pytest.raises(ValueError, match="n >= 1"):
        joint_coherence(model, CLASSIFIERS, n=0)


def test_coherence_keeps_the_rng_and_training_flag():
    model, batch = identity_model(), one_hot_data()
    model.train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    cross_coherence(model, batch, CLASSIFIERS, seed=1)
    assert torch.equal(torch.rand(3), expected)
    assert model.training


# ------------------------------------------------------------------------------ classifiers
def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    x = centers[labels] + torch.randn(n, 4, generator=g)
    mods = identity_model(names=("u",)).modalities
    mods = [mods[0].__class__("u", (4,), likelihood="normal", encoder="linear", decoder="linear")]
    return MultimodalDataset(mods, {"u": x}, labels=labels)


def test_train_classifiers_learns_separable_classes():
    train, test = _blobs(200, seed=0), _blobs(200, seed=1)
    config = ClassifierConfig(epochs=15, batch_size=32, hidden_dim=16)
    threads = torch.get_num_threads()
    classifiers = train_classifiers(train, config=config)
    assert torch.get_num_threads() == threads  # trained on one thread, setting restored
    assert isinstance(classifiers["u"], ModalityClassifier)
    acc = classifier_accuracy(classifiers, test)
    # Bayes accuracy of these blobs is about 0.98; a working classifier is close to it
    assert acc["u"] > 0.9
    assert classifiers["u"].features(test.batch().data["u"]).shape == (200, 16)


def test_classifier_one_hot_encodes_categorical_rows():
    clf = ModalityClassifier((3,), num_classes=2, hidden_dim=8, num_categories=5)
    tokens = torch.tensor([[0, 4, 2], [1, 1, 3]])
    assert clf.body[0].in_features == 15
    assert clf(tokens).shape == (2, 2)
    # the first layer sees one-hot codes: its output is the sum of the picked weight columns
    w, b = clf.body[0].weight, clf.body[0].bias
    expected = w[:, [0, 5 + 4, 10 + 2]].sum(1) + b
    torch.testing.assert_close(clf.body[0](clf._flat(tokens))[0], expected)


def test_classifier_errors():
    with pytest.raises(ValueError, match="labels"):
        train_classifiers(MultimodalDataset(_blobs().modalities, {"u": torch.zeros(5, 4)}))
    clf = ModalityClassifier((4,), 3)
    with pytest.raises(ValueError, match="shape"):
        clf(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\(B, C\) logits"):
        predict(lambda x: x.sum(-1), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        ModalityClassifier((4,), 1)


# ------------------------------------------------------------------------------ reconstruction
def test_reconstruction_error_identity_is_zero_and_swap_is_known():
    batch = one_hot_data(30)
    result = reconstruction_error(identity_model(), batch)
    for key, per_modality in result["by_subset"].items():
        for m, mse in per_modality.items():
            assert mse < 1e-4, (key, m)
    swapped = reconstruction_error(identity_model(swapped=("b",)), batch)
    x = batch.data["b"]
    # every modality shows the same x, so every generation of b is swap(x)
    expected = ((x.flip(-1) - x) ** 2).mean()
    assert swapped["by_subset"]["b"]["b"] == pytest.approx(float(expected), rel=1e-3)
    assert swapped["by_modality"]["a"]["self"] < 1e-4


def test_reconstruction_error_counts_only_observed_entries():
    n = 30
    feature_mask = torch.ones(n, 2, dtype=torch.bool)
    feature_mask[:, 1] = torch.arange(n) % 3 != 0  # a third of the rows miss b's 2nd feature
    batch = one_hot_data(n, masks={"b": feature_mask})
    result = reconstruction_error(identity_model(swapped=("b",)), batch, subsets=[("a",)])
    pred = batch.data["a"].flip(-1)  # from a: z ~ x_a, decoded by the swap
    sq = (pred - batch.data["b"]) ** 2
    expected = sq[feature_mask].mean()
    assert result["by_subset"]["a"]["b"] == pytest.approx(float(expected), rel=1e-3)


# ------------------------------------------------------------------------------ clustering
def test_clustering_of_separated_latents_recovers_the_labels():
    batch = one_hot_data(60)
    z = latent_means(identity_model(), batch)
    torch.testing.assert_close(z, batch.data["a"], atol=1e-3, rtol=0)  # PoE of 3 equal experts
    scores = cluster_latents(identity_model(), batch)
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0)
    assert scores["n_clusters"] == 2


def test_clustering_needs_labels():
    batch = one_hot_data()
    with pytest.raises(ValueError, match="labels"):
        cluster_latents(identity_model(), batch.__class__(batch.data, batch.obs_mask, None))
