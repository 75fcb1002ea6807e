"""The evidence lower bound, with analytic KL where it exists."""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from .scaling import LatentScaling


class ELBO(LatentScaling, TraceMeanField_ELBO):
    r"""The evidence lower bound with a latent weight ``beta``.

    .. math:: \mathcal L = \mathbb E_{q(z|X)}[\log p(X|z)] - \beta\, \mathrm{KL}(q(z|X) \| p(z))

    With ``analytic_kl=True`` (default) the KL is computed in closed form wherever Pyro has
    it (``TraceMeanField_ELBO``), falling back to Monte Carlo per site; with
    ``analytic_kl=False`` it is the plain Monte Carlo ``Trace_ELBO``. ``beta`` scales the
    latent sites of model *and* guide (:class:`~pyromv.infer.scaling.LatentScaleMessenger`).
    Returns the negative ELBO summed over the batch (Pyro's convention).

    Parameters
    ----------
    num_particles : int
        Monte Carlo samples, vectorised over a particle plate by default.
    beta : float
        Weight of the KL term (Higgins et al. 2017); ``1`` is the ELBO.
    analytic_kl : bool
        Use closed-form KL divergences where available.
    max_plate_nesting : int
        The model's plate nesting (guessed from one run when not given).
    """

    def __init__(
        self,
        num_particles: int = 1,
        beta: float = 1.0,
        analytic_kl: bool = True,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        self.beta = float(beta)
        self.analytic_kl = analytic_kl

    def _get_trace(self, model, guide, args, kwargs):
        if self.analytic_kl:
            return super()._get_trace(model, guide, args, kwargs)
        return Trace_ELBO._get_trace(self, model, guide, args, kwargs)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if self.analytic_kl:
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        return Trace_ELBO._differentiable_loss_particle(self, model_trace, guide_trace)

    def loss(self, model, guide, *args, **kwargs) -> float:
        return super().loss(self._scaled(model), self._scaled(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return super().loss_and_grads(self._scaled(model), self._scaled(guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return super().differentiable_loss(self._scaled(model), self._scaled(guide), *args, **kwargs)
