"""Scaling the latent sites of a model and guide: beta-VAE weights and KL warm-up."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.poutine.messenger import Messenger


class LatentScaleMessenger(Messenger):
    """Multiply the log-density of every *latent* sample site by ``scale``.

    Applied to both model and guide, the KL part of an ELBO becomes
    ``scale * (log q(z) - log p(z))`` while the likelihood of observed sites is untouched:
    the beta-VAE objective ``E_q[log p(x|z)] - beta KL(q || p)`` (Higgins et al. 2017) under
    Monte Carlo and analytic KL alike (``TraceMeanField_ELBO`` reads the same site scale).
    Observed sites and ``pyro.factor`` sites keep their scale.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


def scale_latents(fn: Callable, scale: float) -> Callable:
    """``fn`` with its latent sites scaled by ``scale`` (``fn`` itself when ``scale == 1``)."""
    return fn if scale == 1.0 else LatentScaleMessenger(scale)(fn)


class LatentScaling:
    """Mixin for objectives: ``beta`` times a warm-up factor ``kl_anneal`` in [0, 1].

    The trainer's KL warm-up sets ``kl_anneal`` each step; ``beta`` is the model's target weight.
    Guessing ``max_plate_nesting`` leaves the random number generators as they were.
    """

    beta: float = 1.0
    kl_anneal: float = 1.0

    def _guess_max_plate_nesting(self, model, guide, args, kwargs) -> None:
        # Pyro finds the plates by running model and guide once; do it without consuming random
        # numbers, so that the draws of training do not depend on when the guess happens (a run
        # resumed from a checkpoint guesses again, and must draw what the uninterrupted run drew)
        with torch.random.fork_rng():
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    @property
    def latent_scale(self) -> float:
        return self.beta * self.kl_anneal

    def _scaled(self, fn: Callable) -> Callable:
        return scale_latents(fn, self.latent_scale)
