"""Evaluation: plots (and, later, likelihoods, coherence, FID, clustering)."""

from .plots import plot_cross_generation, plot_samples

__all__ = ["plot_cross_generation", "plot_samples"]
