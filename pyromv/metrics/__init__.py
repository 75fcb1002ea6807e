"""Evaluation: importance-weighted and annealed likelihoods with their diagnostics, imputation,
coherence, FID, reconstruction, clustering and plots."""

from .ais import BDMCResult, Simulated, annealed_log_likelihood, annealing_schedule, bdmc, simulate
from .classifiers import (
    ClassifierConfig,
    ModalityClassifier,
    classifier_accuracy,
    predict,
    train_classifiers,
)
from .clustering import cluster_latents, latent_means
from .coherence import CoherenceResult, cross_coherence, joint_coherence, proper_subsets
from .evaluate import EvalConfig, evaluate, format_summary
from .fid import (
    InceptionFeatures,
    feature_statistics,
    fid,
    fid_from_features,
    frechet_distance,
    inception_extractor,
)
from .gaps import InferenceGaps, inference_gaps
from .imputation import Imputation, imputation_error, impute
from .likelihood import (
    ImportanceSamplingWarning,
    LikelihoodOptions,
    LogLikelihood,
    importance_weights,
    log_likelihood,
    pareto_khat,
)
from .plots import (
    plot_coherence,
    plot_cross_generation,
    plot_latent_embedding,
    plot_reconstructions,
    plot_samples,
)
from .proposals import DefensiveMixture
from .reconstruction import reconstruction_error

__all__ = [
    "BDMCResult",
    "ClassifierConfig",
    "CoherenceResult",
    "DefensiveMixture",
    "EvalConfig",
    "ImportanceSamplingWarning",
    "Imputation",
    "InceptionFeatures",
    "InferenceGaps",
    "LikelihoodOptions",
    "LogLikelihood",
    "ModalityClassifier",
    "Simulated",
    "annealed_log_likelihood",
    "annealing_schedule",
    "bdmc",
    "classifier_accuracy",
    "cluster_latents",
    "cross_coherence",
    "evaluate",
    "feature_statistics",
    "fid",
    "fid_from_features",
    "format_summary",
    "frechet_distance",
    "importance_weights",
    "imputation_error",
    "impute",
    "inception_extractor",
    "inference_gaps",
    "joint_coherence",
    "latent_means",
    "log_likelihood",
    "pareto_khat",
    "plot_coherence",
    "plot_cross_generation",
    "plot_latent_embedding",
    "plot_reconstructions",
    "plot_samples",
    "predict",
    "proper_subsets",
    "reconstruction_error",
    "simulate",
    "train_classifiers",
]
