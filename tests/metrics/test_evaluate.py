"""The new pictures and the one-call ``evaluate`` on a tiny PolyDigits model."""

import json
import logging
import math

import matplotlib.pyplot as plt
import pytest
import torch

from pyromv.data import PolyDigits
from pyromv.metrics import (
    ClassifierConfig,
    EvalConfig,
    evaluate,
    format_summary,
    plot_coherence,
    plot_latent_embedding,
    plot_reconstructions,
)
from pyromv.models import MVAE, MVAEConfig, get_model_class, registered_models

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def polydigits():
    source = PolyDigits(hidden_dim=16)
    return source, source.load("train"), source.load("test")


def _model(source):
    torch.manual_seed(0)
    return MVAE(source.modalities(), MVAEConfig(latent_dim=4))


def test_plot_reconstructions_latent_and_coherence_write_pngs(tmp_path, polydigits):
    source, _, test = polydigits
    model = _model(source)
    batch = test.batch().restrict(["m0", "m1"])  # m2 missing: its input panels stay blank
    fig = plot_reconstructions(model, batch, n=4, path=tmp_path / "r.png")
    assert len(fig.axes) == 2 * 3 * 4
    assert not fig.axes[2 * 2 * 4].axison  # first input panel of m2 is blank
    plt.close(fig)
    z = torch.randn(50, 5)
    plt.close(plot_latent_embedding(z, torch.arange(50) % 3, "pca", path=tmp_path / "z.png"))
    plt.close(plot_coherence({1: 0.5, 2: 0.75}, {"m0": 0.5, "m0+m1": 0.75}, 0.3, path=tmp_path / "c.png"))
    for name in ("r.png", "z.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="umap"):
        plot_latent_embedding(z, method="umap")
    with pytest.raises(ValueError, match="labels"):
        plot_latent_embedding(z, torch.arange(3))


@pytest.mark.slow
def test_tsne_embedding(tmp_path):
    z = torch.randn(20, 5)
    plt.close(plot_latent_embedding(z, torch.arange(20) % 2, "tsne", path=tmp_path / "t.png"))
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG


def test_evaluate_writes_metrics_and_pictures(tmp_path, polydigits, caplog):
    source, train, test = polydigits
    model = _model(source)
    cfg = EvalConfig(
        num_particles=30, max_rows=20, particle_chunk=16, joint_samples=50, progress=False,
        classifier=ClassifierConfig(epochs=1, hidden_dim=16), plot_rows=3,
    )
    test = test.subset(torch.arange(60))
    with caplog.at_level(logging.WARNING):
        metrics = evaluate(model, test, train.subset(torch.arange(300)), cfg, out_dir=tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["log_likelihood"]["rows"] == 20
    assert saved["log_likelihood"]["num_particles"] == 30
    assert math.isfinite(saved["log_likelihood"]["mean"])
    assert set(saved["conditional_log_likelihood"]) == {"m0", "m1", "m2"}
    assert saved["conditional_log_likelihood"]["m1"]["given"] == ["m0", "m2"]
    assert set(saved["coherence"]["by_size"]) == {"1", "2"}
    assert 0 <= saved["joint_coherence"] <= 1
    assert set(saved["classifier_accuracy"]) == {"m0", "m1", "m2"}
    assert set(saved["fid"]["m0"]) == {"prior", "given_others"}
    assert {"nmi", "ari"} <= set(saved["clustering"])
    assert set(saved["reconstruction_mse"]["by_modality"]) == {"m0", "m1", "m2"}
    for name in ("reconstructions.png", "cross_generation.png", "samples.png", "latent_pca.png",
                 "coherence.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert saved["plots"] == metrics["plots"]
    # an untrained model's weights are heavy-tailed (the case happens here: checked, not assumed)
    # and the k-hat note goes to the log
    assert saved["log_likelihood"]["khat_fraction_above_threshold"] > 0
    assert "k-hat above 0.7" in caplog.text
    text = format_summary(metrics)
    assert "test log-likelihood" in text and "± " in text and "coherence" in text


def test_no_khat_note_when_every_row_is_below_the_threshold(caplog, float64):
    """The converse: the exact guide of the linear-Gaussian model gives flat weights (k-hat
    ``-inf`` on every row), and the log stays silent."""
    from pyromv.data import MultimodalDataset
    from tests.oracles.linear_gaussian import LinearGaussian, build_mvae

    lg = LinearGaussian.random({"a": 3, "b": 2}, 2, {"a": 0.5, "b": 0.8}, seed=1)
    model = build_mvae(lg)
    test = MultimodalDataset(model.modalities, lg.sample(20, seed=2))
    cfg = EvalConfig(num_particles=30, conditional=False, fid=False, plots=False, clustering=False, progress=False)
    with caplog.at_level(logging.WARNING):
        metrics = evaluate(model, test, None, cfg)
    assert metrics["log_likelihood"]["khat_fraction_above_threshold"] == 0
    assert "k-hat" not in caplog.text


def test_evaluate_without_labels_skips_what_needs_them(polydigits):
    source, train, test = polydigits
    test = test.subset(torch.arange(30))
    unlabelled = test.__class__(test.modalities, test.data, test.obs_mask)
    cfg = EvalConfig(num_particles=5, conditional=False, progress=False, fid=False, plots=False)
    metrics = evaluate(_model(source), unlabelled, None, cfg)
    assert "coherence" not in metrics and "clustering" not in metrics
    assert set(metrics["skipped"]) >= {"classifiers", "coherence", "clustering"}
    assert metrics["log_likelihood"]["rows"] == 30


def test_eval_config_is_validated():
    with pytest.raises(ValueError, match="num_particles"):
        EvalConfig(num_particles=0).validate()
    with pytest.raises(ValueError, match="embedding"):
        EvalConfig(embedding="umap").validate()
    with pytest.raises(ValueError, match="gap_steps"):
        EvalConfig(gap_steps=-1).validate()


def test_inference_gaps_of_an_exact_guide_are_zero(float64):
    """``inference_gaps=True``: with the linear-Gaussian model's exact guide (complete rows) the
    ELBO, the per-row fit and the log-likelihood coincide, so both gaps are zero, and the summary
    prints them."""
    from pyromv.data import MultimodalDataset
    from tests.oracles.linear_gaussian import LinearGaussian, build_mvae

    lg = LinearGaussian.random({"a": 3, "b": 2}, 2, {"a": 0.5, "b": 0.8}, seed=1)
    model = build_mvae(lg)
    test = MultimodalDataset(model.modalities, lg.sample(12, seed=2))
    cfg = EvalConfig(num_particles=30, conditional=False, fid=False, plots=False, clustering=False, progress=False,
                     inference_gaps=True, gap_steps=100)
    metrics = evaluate(model, test, None, cfg)
    gaps = metrics["inference_gaps"]
    assert gaps["rows"] == 12 and gaps["local_steps"] == 100
    assert abs(gaps["local_elbo"] - metrics["log_likelihood"]["mean"]) < 1e-4
    assert abs(gaps["amortisation_gap"]) < 1e-4 and abs(gaps["approximation_gap"]) < 1e-4
    assert "amortisation gap" in format_summary(metrics) and "approximation gap" in format_summary(metrics)


@pytest.mark.parametrize("name", registered_models())
def test_every_model_is_evaluated(tmp_path, polydigits, name):
    """``evaluate`` (what ``pyromv-train`` and ``pyromv-eval`` run) on every registered model with
    its default options: every metric is computed, finite where it is a number, pictures written."""
    source, train, test = polydigits
    cls = get_model_class(name)
    torch.manual_seed(0)
    model = cls(source.modalities(), cls.config_class(latent_dim=4))
    cfg = EvalConfig(num_particles=8, max_rows=8, particle_chunk=8, joint_samples=20, progress=False,
                     classifier=ClassifierConfig(epochs=1, hidden_dim=16), plot_rows=2, inference_gaps=True,
                     gap_steps=2)
    metrics = evaluate(model, test.subset(torch.arange(24)), train.subset(torch.arange(120)), cfg,
                       out_dir=tmp_path)
    if getattr(model, "has_likelihood", True):
        assert math.isfinite(metrics["log_likelihood"]["mean"])
        assert all(math.isfinite(c["mean"]) for c in metrics["conditional_log_likelihood"].values())
        if name == "nexus":  # its proposal draws outside its sample sites: no per-row fit
            assert "randomness outside" in metrics["skipped"]["inference_gaps"]
        else:
            assert all(math.isfinite(metrics["inference_gaps"][k]) for k in ("elbo", "local_elbo", "gap"))
    else:  # deterministic autoencoders (DCCAE, mAAE, mWAE): no density, skipped and said so
        assert {"log_likelihood", "conditional_log_likelihood", "inference_gaps"} <= metrics["skipped"].keys()
        assert "log_likelihood" not in metrics and "conditional_log_likelihood" not in metrics
    assert set(metrics["coherence"]["by_size"]) == {"1", "2"}
    if len(model.generated_modalities) > 1:
        assert 0 <= metrics["joint_coherence"] <= 1
    else:  # a conditional model generating one modality (CVAE): nothing to agree with
        assert "joint_coherence" not in metrics and "joint_coherence" in metrics["skipped"]
    assert all(math.isfinite(v) for scores in metrics["fid"].values() for v in scores.values())
    assert (tmp_path / "cross_generation.png").read_bytes()[:8] == PNG
    own = metrics["clustering"].get("model_clusters")
    assert (own is not None) == callable(getattr(model, "predict_clusters", None))
    if own is not None:  # a model with clusters of its own (CMVAE): scored after selecting them
        assert 0 <= own["nmi"] <= 1 and own["n_clusters"] == own["selection"]["n_clusters"]
        assert own["all_clusters"]["n_clusters"] == model.num_clusters
