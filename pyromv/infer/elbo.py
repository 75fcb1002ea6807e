"""The evidence lower bound, with analytic KL where it exists."""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape

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
        if not self.analytic_kl:
            return Trace_ELBO._get_trace(self, model, guide, args, kwargs)
        # Pyro's importance trace, with log-densities left to the loss: under analytic KL the
        # log-densities of the latent sites are never read (computed on demand where a site has
        # no closed-form KL), which saves part of Pyro's fixed cost per step
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        if is_validation_enabled():  # the shape checks read every site's log-density
            model_trace.compute_log_prob()
            guide_trace.compute_log_prob()
            for site in list(model_trace.nodes.values()) + list(guide_trace.nodes.values()):
                if site["type"] == "sample":
                    check_site_shape(site, self.max_plate_nesting)
            _check_mean_field_requirement(model_trace, guide_trace)
        else:
            model_trace.compute_log_prob(site_filter=lambda name, site: site["is_observed"])
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if not self.analytic_kl:
            return Trace_ELBO._differentiable_loss_particle(self, model_trace, guide_trace)
        # TraceMeanField_ELBO's sum, with the Monte Carlo fall-back's log-densities computed here
        elbo = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled() and not guide_site["fn"].has_rsample:
                raise NotImplementedError(
                    f"ELBO with analytic_kl needs reparameterised guide sites; {name!r} has no rsample"
                )
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                model_trace.compute_log_prob(site_filter=lambda n, site, name=name: n == name)
                elbo = elbo + model_site["log_prob_sum"] - _entropy_term(guide_site).sum()
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            elbo = elbo - (kl.sum() if torch.is_tensor(kl) else kl * guide_site["fn"].batch_shape.numel())
        for name, guide_site in guide_trace.nodes.items():  # guide-only sites: factors, auxiliaries
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - _entropy_term(guide_site).sum()
        loss = -(elbo.detach() if torch._C._get_tracing_state() else torch_item(elbo))
        return loss, -elbo

    def loss(self, model, guide, *args, **kwargs) -> float:
        return super().loss(self._scaled(model), self._scaled(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return super().loss_and_grads(self._scaled(model), self._scaled(guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return super().differentiable_loss(self._scaled(model), self._scaled(guide), *args, **kwargs)


def _entropy_term(site: dict) -> torch.Tensor:
    """The scaled and masked entropy term of a guide site's score parts (its ``log q`` for a
    reparameterised site; the factor of a ``pyro.factor``)."""
    parts = site["fn"].score_parts(site["value"], *site["args"], **site["kwargs"])
    return parts.scale_and_mask(site["scale"], site["mask"]).entropy_term
