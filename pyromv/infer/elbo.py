"""Evidence lower bounds: the ELBO (analytic KL where it exists) and IWAE."""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO as PyroELBO
from pyro.infer.util import torch_item
from pyro.util import warn_if_nan

from .importance import iwae_bound, log_weights_from_traces, trace_pair
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


class IWAE(LatentScaling, PyroELBO):
    r"""Importance weighted bound with ``K`` vectorised particles (Burda et al. 2016).

    .. math:: \mathcal L_K = \sum_b \mathbb E\Big[\log \frac1K \sum_{k=1}^K
              \frac{p(x_b, z_{kb})}{q(z_{kb} | x_b)}\Big], \quad z_{kb} \sim q(\cdot | x_b)

    ``ELBO <= L_K <= L_{K+1} <= log p(X)``. The ``K`` particles are one vectorised pass of
    guide and model (a particle plate left of the model's plates); the weights are kept per
    datum of the plate named ``batch_plate``. ``beta`` scales the latent log-densities inside
    the weights. Returns the negative bound summed over the batch.
    """

    def __init__(
        self,
        num_particles: int = 10,
        beta: float = 1.0,
        max_plate_nesting: float = float("inf"),
        batch_plate: str = "batch",
    ) -> None:
        if num_particles < 1:
            raise ValueError(f"IWAE needs num_particles >= 1, got {num_particles}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.beta = float(beta)
        self.batch_plate = batch_plate

    def _get_trace(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        nesting = int(self.max_plate_nesting)
        return trace_pair(model, guide, args, kwargs, self.num_particles, nesting)

    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``(K, B)`` importance log-weights of the (beta-scaled) model and guide."""
        model_trace, guide_trace = self._get_trace(self._scaled(model), self._scaled(guide), args, kwargs)
        return log_weights_from_traces(
            model_trace, guide_trace, self.num_particles, int(self.max_plate_nesting), self.batch_plate
        )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = -iwae_bound(self.log_weights(model, guide, *args, **kwargs)).sum()
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)

