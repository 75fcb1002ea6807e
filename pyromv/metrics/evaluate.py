"""One call that evaluates a trained model: likelihoods, coherence, FID, reconstruction,
clustering and plots, as used by ``pyromv-eval`` and at the end of ``pyromv-train``."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from .classifiers import Classifier, ClassifierConfig, classifier_accuracy, train_classifiers
from .clustering import cluster_latents, latent_means, model_clusters
from .coherence import cross_coherence, joint_coherence
from .fid import FeatureExtractor, InceptionFeatures, fid
from .gaps import inference_gaps
from .likelihood import ImportanceSamplingWarning, LikelihoodOptions, LogLikelihood, log_likelihood
from .reconstruction import reconstruction_error

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Options of :func:`evaluate` (also a Hydra structured config).

    Attributes
    ----------
    num_particles : int
        ``K`` of the importance-weighted log-likelihoods.
    max_rows : int
        Evaluate the likelihoods on at most this many test rows, a seeded random subset
        (0: every row). Coherence, FID, reconstruction and clustering use every row.
    particle_chunk, batch_size : int
        Chunk sizes of the likelihood (memory is set by their product).
    conditional : bool
        Also estimate ``log p(x_m | X_{-m})`` for each modality ``m``.
    classifier : ClassifierConfig
        Training of the per-modality classifiers (on the training split).
    coherence_sample : bool
        Cross-generate from posterior draws (the papers) rather than posterior means.
    joint_samples : int
        Prior draws for joint coherence.
    fid : bool
        FID of every image modality (prior samples and cross-generation from the others).
    inception_weights : str, optional
        Local state-dict file of torchvision's ``inception_v3``; when unset, FID uses the
        classifiers' penultimate features.
    clustering : bool
        k-means on the posterior means (NMI and ARI); for models with their own clusters
        (``predict_clusters``, e.g. CMVAE) also the NMI and ARI of those.
    prune_clusters : bool
        Before scoring a model's own clusters, select their number on the training split
        (``model.prune_clusters``, on a copy: the model itself is left as it is).
    plots : bool
        Write the pictures (needs an output folder).
    plot_rows : int
        Columns of the picture grids.
    embedding : str
        ``"pca"`` or ``"tsne"`` for the latent-space picture.
    seed : int
        Seeds every random draw of the evaluation (rows, particles, samples, embeddings).
    progress : bool
        Progress bars.
    likelihood : LikelihoodOptions
        The likelihood estimator: ``method`` (``"iwae"`` or ``"ais"``), the importance-sampling
        ``proposal`` (``"guide"`` or ``"defensive"``) and ``adaptive`` K, AIS's ``num_steps`` and
        ``num_chains`` (``likelihood.method=ais`` on the command line; docs/likelihood.md).
    inference_gaps : bool
        Also split the joint ELBO's gap to the log-likelihood into its amortisation and
        approximation parts (:func:`~pyromv.metrics.inference_gaps`, Cremer et al. 2018) on the
        likelihood's rows.
    gap_steps : int
        Adam steps of each row's Gaussian fit for ``inference_gaps``.
    """

    num_particles: int = 1000
    max_rows: int = 0
    particle_chunk: int = 100
    batch_size: int = 64
    conditional: bool = True
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    coherence_sample: bool = True
    joint_samples: int = 1000
    fid: bool = True
    inception_weights: str | None = None
    clustering: bool = True
    prune_clusters: bool = True
    plots: bool = True
    plot_rows: int = 8
    embedding: str = "pca"
    seed: int = 0
    progress: bool = True
    likelihood: LikelihoodOptions = field(default_factory=LikelihoodOptions)
    inference_gaps: bool = False
    gap_steps: int = 300

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        for name in ("num_particles", "particle_chunk", "batch_size", "joint_samples", "plot_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"evaluation: {name} must be a positive int, got {value!r}")
        if not isinstance(self.gap_steps, int) or isinstance(self.gap_steps, bool) or self.gap_steps < 0:
            raise ValueError(f"evaluation: gap_steps must be an int >= 0, got {self.gap_steps!r}")
        if not isinstance(self.max_rows, int) or self.max_rows < 0:
            raise ValueError(f"evaluation: max_rows must be >= 0, got {self.max_rows!r}")
        if self.embedding not in ("pca", "tsne"):
            raise ValueError(f"evaluation: embedding must be 'pca' or 'tsne', got {self.embedding!r}")
        self.likelihood.validate()


#: The small budget ``pyromv-train`` evaluates with at the end of training.
QUICK_EVALUATION: dict[str, Any] = {
    "num_particles": 100, "max_rows": 200, "joint_samples": 500, "progress": False,
}


def _likelihood(model: MultimodalVAE, data: MultimodalDataset, cfg: EvalConfig, **kw) -> LogLikelihood:
    """Run ``log_likelihood`` and turn its k-hat warning into a log line (kept in the summary)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImportanceSamplingWarning)
        result = log_likelihood(
            model, data, cfg.num_particles, batch_size=cfg.batch_size,
            particle_chunk=cfg.particle_chunk, seed=cfg.seed, progress=cfg.progress,
            **cfg.likelihood.kwargs(), **kw,
        )
    if result.method != "iwae" and result.passed is not None and not bool(result.passed.all()):
        log.warning("%d of %d rows fail the %s diagnostic: their estimates are not trustworthy",
                    int((~result.passed).sum()), result.passed.numel(), result.method)
    for w in caught:
        if issubclass(w.category, ImportanceSamplingWarning):
            log.warning("%s", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _subset(data: MultimodalDataset, max_rows: int, seed: int) -> MultimodalDataset:
    if max_rows <= 0 or max_rows >= len(data):
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[:max_rows].sort().values)


def _extractors(
    model: MultimodalVAE, cfg: EvalConfig, classifiers: Mapping[str, Classifier] | None,
    names: list[str],
) -> dict[str, FeatureExtractor]:
    if cfg.inception_weights:
        inception = InceptionFeatures(cfg.inception_weights)
        return {m: inception for m in names}
    out = {}
    for m in names:
        features = getattr((classifiers or {}).get(m), "features", None)
        if callable(features):
            out[m] = features
    return out


def evaluate(
    model: MultimodalVAE,
    test: MultimodalDataset,
    train: MultimodalDataset | None = None,
    config: EvalConfig | None = None,
    classifiers: Mapping[str, Classifier] | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``test``; return the metrics (and write them to ``out_dir``).

    Classifiers (for coherence and the default FID features) are the given ones or, when
    ``train`` has labels, trained on it; their test accuracy is reported. Parts that need
    labels are skipped (with a note in the result) when the data has none. With ``out_dir``
    the metrics go to ``out_dir/metrics.json`` and the pictures next to it.
    """
    from .plots import (  # matplotlib only when needed
        generated_image_modalities,
        plot_coherence,
        plot_cross_generation,
        plot_latent_embedding,
        plot_reconstructions,
        plot_samples,
    )

    cfg = config or EvalConfig()
    cfg.validate()
    start = time.perf_counter()
    out: dict[str, Any] = {"config": asdict(cfg), "test_rows": len(test), "skipped": {}}
    labelled = test.labels is not None

    # ---- classifiers
    if classifiers is None and labelled and train is not None and train.labels is not None:
        num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
        classifiers = train_classifiers(train, model.names, cfg.classifier, num_classes, cfg.progress)
    if classifiers is not None and labelled:
        out["classifier_accuracy"] = classifier_accuracy(
            {m: c for m, c in classifiers.items() if m in model.names}, test
        )
    elif classifiers is None:
        out["skipped"]["classifiers"] = "no labelled training data and no classifiers given"

    # ---- likelihoods
    rows = _subset(test, cfg.max_rows, cfg.seed)
    if not getattr(model, "has_likelihood", True):  # deterministic autoencoders: no p(X) to estimate
        out["skipped"]["log_likelihood"] = f"{model.name} has no likelihood (deterministic codes)"
        if cfg.conditional:
            out["skipped"]["conditional_log_likelihood"] = out["skipped"]["log_likelihood"]
    else:
        joint = _likelihood(model, rows, cfg)
        out["log_likelihood"] = joint.summary()
        if cfg.inference_gaps:
            try:
                gaps = inference_gaps(model, rows, likelihood=joint, local_steps=cfg.gap_steps,
                                      batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.progress)
            except ValueError as err:  # a model whose proposal has no density at fixed latents (Nexus)
                out["skipped"]["inference_gaps"] = str(err)
            else:
                out["inference_gaps"] = gaps.summary()
    if cfg.inference_gaps and not getattr(model, "has_likelihood", True):
        out["skipped"]["inference_gaps"] = out["skipped"]["log_likelihood"]
    if cfg.conditional and len(model.names) > 1 and getattr(model, "has_likelihood", True):
        out["conditional_log_likelihood"] = {}
        for m in model.generated_modalities:
            others = [o for o in model.names if o != m]
            out["conditional_log_likelihood"][m] = _likelihood(
                model, rows, cfg, given=others, targets=[m]
            ).summary()

    # ---- coherence
    complete = classifiers is not None and all(m in classifiers for m in model.generated_modalities)
    if labelled and complete and len(model.names) > 1:
        coh = cross_coherence(model, test, classifiers, sample=cfg.coherence_sample, seed=cfg.seed)
        out["coherence"] = coh.to_dict()
        if len(model.generated_modalities) > 1:
            out["joint_coherence"] = joint_coherence(model, classifiers, n=cfg.joint_samples, seed=cfg.seed)
        else:
            out["skipped"]["joint_coherence"] = (
                f"the model generates one modality only ({model.generated_modalities})"
            )
    else:
        out["skipped"]["coherence"] = (
            "needs labels, a classifier for every modality and at least two modalities"
        )

    # ---- FID
    images = generated_image_modalities(model)
    if cfg.fid and images:
        extractors = _extractors(model, cfg, classifiers, images)
        out["fid"] = {}
        for m in images:
            if m not in extractors:
                continue
            others = [o for o in model.names if o != m]
            scores = {"prior": fid(model, test, m, extractors[m], seed=cfg.seed)}
            if others:
                scores["given_others"] = fid(model, test, m, extractors[m], given=others, seed=cfg.seed)
            out["fid"][m] = scores
        out["fid_features"] = "inception" if cfg.inception_weights else "classifier penultimate layer"
        if not out["fid"]:
            out["skipped"]["fid"] = "no feature extractor (train classifiers or give Inception weights)"

    # ---- reconstruction and clustering
    out["reconstruction_mse"] = reconstruction_error(model, test)
    if cfg.clustering and labelled:
        out["clustering"] = cluster_latents(model, test, seed=cfg.seed)
        if callable(getattr(model, "predict_clusters", None)):
            out["clustering"]["model_clusters"] = model_clusters(
                model, test, prune_on=train if cfg.prune_clusters else None)
    elif cfg.clustering:
        out["skipped"]["clustering"] = "the test data has no labels"

    # ---- pictures
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.plots:
            import matplotlib.pyplot as plt

            written = []
            batch = test.batch()
            if images:
                for name, draw in (
                    ("reconstructions.png", lambda p: plot_reconstructions(model, batch, cfg.plot_rows, p)),
                    ("cross_generation.png", lambda p: plot_cross_generation(model, batch, cfg.plot_rows, path=p)),
                    ("samples.png", lambda p: plot_samples(model, cfg.plot_rows, p)),
                ):
                    plt.close(draw(out_dir / name))
                    written.append(name)
            name = f"latent_{cfg.embedding}.png"
            z = latent_means(model, test)
            plt.close(plot_latent_embedding(z, test.labels, cfg.embedding, cfg.seed, out_dir / name))
            written.append(name)
            if "coherence" in out:
                plt.close(plot_coherence(out["coherence"]["by_size"], out["coherence"]["by_subset"],
                                         out.get("joint_coherence"), out_dir / "coherence.png"))
                written.append("coherence.png")
            out["plots"] = written
    out["seconds"] = time.perf_counter() - start
    if out_dir is not None:
        (Path(out_dir) / "metrics.json").write_text(json.dumps(_jsonable(out), indent=2))
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def format_summary(metrics: Mapping[str, Any]) -> str:
    """Human-readable lines: classifier accuracy, coherence, likelihoods, FID, clustering."""
    lines = []
    acc = metrics.get("classifier_accuracy")
    if acc:
        lines.append("classifier test accuracy: " + ", ".join(f"{m} {v:.3f}" for m, v in acc.items()))
    coh = metrics.get("coherence")
    if coh:
        lines.append("cross-modal coherence by number of given modalities: "
                     + ", ".join(f"{k}: {v:.3f}" for k, v in coh["by_size"].items()))
        if "joint_coherence" in metrics:
            lines.append(f"joint coherence (prior samples): {metrics['joint_coherence']:.3f}")
    ll = metrics.get("log_likelihood")
    if ll:
        lines.append(
            f"test log-likelihood: {ll['mean']:.2f} ± {ll['stderr']:.2f} (s.e.) nats per row "
            f"({_estimator(ll)}, {ll['rows']} rows, k-hat > {ll['khat_threshold']}: "
            f"{_pct(ll['khat_fraction_above_threshold'])} of rows"
            + (f", passing their diagnostic: {_pct(ll['passed_fraction'])}" if ll.get("passed_fraction")
               is not None else "") + ")"
        )
    gaps = metrics.get("inference_gaps")
    if gaps:
        lines.append(
            f"  ELBO {gaps['elbo']:.2f}, per-row Gaussian fit {gaps['local_elbo']:.2f}: amortisation gap "
            f"{gaps['amortisation_gap']:.2f}, approximation gap {gaps['approximation_gap']:.2f} nats per row"
        )
    for m, c in (metrics.get("conditional_log_likelihood") or {}).items():
        lines.append(
            f"  log p({m} | {'+'.join(c['given'])}): {c['mean']:.2f} ± {c['stderr']:.2f} "
            f"(k-hat > {c['khat_threshold']}: {_pct(c['khat_fraction_above_threshold'])})"
        )
    for m, scores in (metrics.get("fid") or {}).items():
        lines.append(f"FID {m} ({metrics.get('fid_features')}): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    cl = metrics.get("clustering")
    if cl:
        lines.append(f"k-means on latent means: NMI {cl['nmi']:.3f}, ARI {cl['ari']:.3f}")
        own = cl.get("model_clusters")
        if own:
            lines.append(f"the model's clusters ({own['n_clusters']}): NMI {own['nmi']:.3f}, ARI {own['ari']:.3f}")
            every = own.get("all_clusters")
            if every:
                lines.append(f"  before selection ({every['n_clusters']}): NMI {every['nmi']:.3f}, "
                             f"ARI {every['ari']:.3f}")
    rec = metrics.get("reconstruction_mse", {}).get("by_modality")
    if rec:
        lines.append("reconstruction MSE (self / cross): "
                     + ", ".join(f"{m} {v['self']:.4f} / {v['cross']:.4f}" for m, v in rec.items()))
    return "\n".join(lines)


def _estimator(summary: Mapping[str, Any]) -> str:
    """``K=1000`` (importance sampling), ``defensive IS, K=1000``, ``AIS, T=200, 16 chains``."""
    if summary.get("method", "iwae") == "ais":
        return f"AIS, T={summary.get('num_steps')}, {summary.get('num_chains')} chains"
    what = "defensive IS, " if summary.get("proposal") == "defensive" else ""
    if summary.get("particles_max") is not None:
        return f"{what}adaptive K={summary['num_particles']}..{summary['particles_max']}"
    return f"{what}K={summary['num_particles']}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"
