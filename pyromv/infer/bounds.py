"""Importance-weighted bounds and their gradient estimators: IWAE, STL, DReG, and the
stratified mixture bounds of MMVAE."""

from __future__ import annotations

import math

import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer.elbo import ELBO as PyroELBO
from pyro.infer.util import torch_item
from pyro.poutine.trace_struct import Trace
from pyro.util import warn_if_nan

from .importance import (
    _plate_dims,
    log_weights_from_traces,
    reduce_site,
    site_log_prob,
    strata_weights,
    trace_pair,
)
from .scaling import LatentScaling

GRADIENTS = ("standard", "stl", "dreg")


def _weights_like(weights: torch.Tensor, site: dict, particle_dim: int, keep: list[str]) -> torch.Tensor:
    """Place ``(K, [E,] B)`` per-stratum weights so they broadcast against a site's value."""
    dims = _plate_dims(site, keep)
    rank = -particle_dim
    shape = [1] * rank
    shape[particle_dim] = weights.shape[0]
    for i, name in enumerate(keep):
        if name in dims:
            shape[dims[name]] = weights.shape[1 + i]
        elif weights.shape[1 + i] != 1:
            weights = weights.mean(1 + i, keepdim=True)  # site outside this plate: shared value
    w = weights.reshape(shape)
    return w.reshape(w.shape + (1,) * site["fn"].event_dim)


class _ImportanceBound(LatentScaling, PyroELBO):
    """Shared engine: trace once with ``K`` particles, form per-(particle, stratum, datum)
    log-weights, reduce them to a bound, and build the surrogate of the chosen gradient."""

    bound = "iwae"

    def __init__(
        self,
        num_particles: int = 1,
        beta: float = 1.0,
        gradient: str = "standard",
        max_plate_nesting: float = float("inf"),
        batch_plate: str = "batch",
        strata_plate: str | None = None,
    ) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        if gradient == "dreg" and self.bound != "iwae":
            raise ValueError("the DReG gradient is defined for importance-weighted bounds only")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.beta = float(beta)
        self.gradient = gradient
        self.batch_plate = batch_plate
        self.strata_plate = strata_plate

    def _get_trace(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        return trace_pair(model, guide, args, kwargs, self.num_particles, int(self.max_plate_nesting))

    @property
    def _keep(self) -> list[str]:
        return [self.batch_plate] if self.strata_plate is None else [self.strata_plate, self.batch_plate]

    def _traces(self, model, guide, args, kwargs) -> tuple[Trace, Trace]:
        return self._get_trace(self._scaled(model), self._scaled(guide), args, kwargs)

    def _log_weights(self, model_trace: Trace, guide_trace: Trace, rescore: bool) -> torch.Tensor:
        lw = log_weights_from_traces(
            model_trace, guide_trace, self.num_particles, int(self.max_plate_nesting),
            self.batch_plate, self.strata_plate, rescore_guide=rescore,
        )
        return lw if self.strata_plate is not None else lw.unsqueeze(1)  # (K, E, B)

    def _strata(self, guide_trace: Trace, shape: torch.Size) -> torch.Tensor:
        if self.strata_plate is None:
            return torch.ones(shape)
        particle_dim = -int(self.max_plate_nesting) - 1
        return strata_weights(guide_trace, particle_dim, self.strata_plate, self.batch_plate, shape)

    def _reduce(self, lw: torch.Tensor) -> torch.Tensor:
        """Per-stratum bound ``(E, B)`` from ``(K, E, B)`` log-weights."""
        if self.bound == "iwae":
            return torch.logsumexp(lw, 0) - math.log(lw.shape[0])
        return lw.mean(0)

    def per_datum(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The bound of each datum, ``(B,)`` (strata averaged with their weights)."""
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        lw = self._log_weights(model_trace, guide_trace, rescore=False)
        return (self._strata(guide_trace, lw.shape[1:]).to(lw) * self._reduce(lw)).sum(0)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        lw = self._log_weights(model_trace, guide_trace, rescore=False)
        strata = self._strata(guide_trace, lw.shape[1:]).to(lw)
        bound = (strata * self._reduce(lw)).sum()
        if self.gradient == "standard":
            loss = -bound
        else:
            lw_rescored = self._log_weights(model_trace, guide_trace, rescore=True)
            if self.bound == "iwae":
                normalized = torch.softmax(lw_rescored.detach(), 0)  # (K, E, B)
                surrogate = (strata * (normalized * lw_rescored).sum(0)).sum()
                if self.gradient == "dreg":
                    self._reweight_latent_gradients(guide_trace, normalized)
            else:
                surrogate = (strata * lw_rescored.mean(0)).sum()
            loss = -(bound.detach() + surrogate - surrogate.detach())
        warn_if_nan(loss, "loss")
        return loss

    def _reweight_latent_gradients(self, guide_trace: Trace, normalized: torch.Tensor) -> None:
        # DReG: the gradient reaching each sampled latent is multiplied once more by the
        # normalised weight, giving sum_k w~_k^2 d lw_k / dz dz/dphi (Tucker et al. 2019, eq. 5)
        particle_dim = -int(self.max_plate_nesting) - 1
        keep = [self.strata_plate, self.batch_plate] if self.strata_plate else [self.batch_plate]
        weights = normalized if self.strata_plate else normalized.squeeze(1)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"] and site["value"].requires_grad:
                w = _weights_like(weights, site, particle_dim, keep)
                site["value"].register_hook(lambda grad, w=w: grad * w)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return -torch_item(self.per_datum(model, guide, *args, **kwargs).sum())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)


class IWAE(_ImportanceBound):
    r"""Importance weighted bound with ``K`` vectorised particles (Burda et al. 2016).

    .. math:: \mathcal L_K = \sum_b \mathbb E\Big[\log \frac1K \sum_{k=1}^K
              \frac{p(x_b, z_{kb})}{q(z_{kb} | x_b)}\Big], \quad z_{kb} \sim q(\cdot | x_b)

    ``ELBO <= L_K <= L_{K+1} <= log p(X)``. The particles are one vectorised pass of guide and
    model; weights are kept per datum of ``batch_plate``. ``gradient`` picks the estimator of
    the encoder's gradient: ``"standard"`` (reparameterised IWAE), ``"stl"`` (sticking the
    landing: ``log q`` rescored with detached parameters; Roeder et al. 2017) or ``"dreg"``
    (doubly reparameterised, squared normalised weights; Tucker et al. 2019). DReG has the
    expectation of the standard gradient for every ``K``; STL only for ``K = 1`` (for ``K > 1``
    it is biased, Tucker et al. 2019, Sec. 3). The loss value is the same bound.
    ``beta`` scales the latent log-densities inside the weights. Returns the negative bound
    summed over the batch.
    """

    bound = "iwae"

    def __init__(self, num_particles: int = 10, beta: float = 1.0, gradient: str = "standard",
                 max_plate_nesting: float = float("inf"), batch_plate: str = "batch") -> None:
        super().__init__(num_particles, beta, gradient, max_plate_nesting, batch_plate, None)

    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``(K, B)`` importance log-weights of the (beta-scaled) model and guide."""
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        return self._log_weights(model_trace, guide_trace, rescore=False).squeeze(1)


class StratifiedIWAE(_ImportanceBound):
    r"""MMVAE's stratified IWAE over the strata of ``strata_plate`` (Shi et al. 2019, eq. 4).

    .. math:: \mathcal L = \sum_b \sum_{e} w_{eb}\, \mathbb E_{z_{1:K} \sim q_e}\Big[\log \frac1K
              \sum_k \frac{p(x_b, z_k)}{q(z_k | x_b)}\Big]

    The guide samples every stratum (e.g. every expert of a mixture, under
    ``pyro.plate("experts", E)``) and scores samples with the full mixture density; ``w_eb``
    is uniform over the strata active in row ``b`` (unmasked guide sites), so rows with missing
    modalities average over their observed experts only.

    As ``K`` grows, stratum ``e`` tends to ``log E_{q_e}[p(x, z) / q(z | x)]`` and the bound to
    their average, which is below ``log p(x)`` by Jensen where the strata's proposals differ: a
    looser bound than IWAE with the mixture itself as proposal. ``gradient="dreg"`` gives the
    DReG-IWAE of the paper's code, which is biased for ``K > 1`` on rows with several active
    strata (its weights use ``q``, the mixture, while samples come from ``q_e``); ``"stl"`` is
    biased for ``K > 1`` too (as for the plain IWAE). ``"standard"`` is unbiased.
    """

    bound = "iwae"

    def __init__(self, num_particles: int = 10, beta: float = 1.0, gradient: str = "standard",
                 max_plate_nesting: float = float("inf"), batch_plate: str = "batch",
                 strata_plate: str = "experts") -> None:
        super().__init__(num_particles, beta, gradient, max_plate_nesting, batch_plate, strata_plate)


class StratifiedELBO(_ImportanceBound):
    r"""Stratified ELBO over the strata of ``strata_plate`` (Shi et al. 2019, eq. 3).

    .. math:: \mathcal L = \sum_b \sum_e w_{eb}\, \mathbb E_{z \sim q_e}
              \big[\log p(x_b, z) - \log q(z | x_b)\big]

    With ``analytic_kl=True`` a latent site whose guide and prior have a closed-form KL uses it
    (e.g. MoPoE's per-subset bound ``sum_s w_s [E_{q_s} log p(X|z) - KL(q_s || p)]``, Sutter et
    al. 2021); otherwise Monte Carlo. ``gradient="stl"`` rescores ``log q`` with detached
    parameters.
    """

    bound = "elbo"

    def __init__(self, num_particles: int = 1, beta: float = 1.0, gradient: str = "standard",
                 analytic_kl: bool = False, max_plate_nesting: float = float("inf"),
                 batch_plate: str = "batch", strata_plate: str = "experts") -> None:
        super().__init__(num_particles, beta, gradient, max_plate_nesting, batch_plate, strata_plate)
        self.analytic_kl = analytic_kl

    def _log_weights(self, model_trace: Trace, guide_trace: Trace, rescore: bool) -> torch.Tensor:
        if not self.analytic_kl:
            return super()._log_weights(model_trace, guide_trace, rescore)
        particle_dim = -int(self.max_plate_nesting) - 1
        keep = self._keep
        total = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                total = total + reduce_site(site, site["log_prob"], particle_dim, keep)
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                term = site["log_prob"] - site_log_prob(guide_site, rescore)
            else:
                if guide_site["mask"] is not None:
                    kl = torch.where(guide_site["mask"], kl, torch.zeros_like(kl))
                term = -kl * guide_site["scale"]
            total = total + reduce_site(site, term, particle_dim, keep)
        for name, site in guide_trace.nodes.items():  # guide-only sites (factors, auxiliaries)
            if site["type"] == "sample" and name not in model_trace.nodes:
                total = total - reduce_site(site, site_log_prob(site, rescore), particle_dim, keep)
        lw = total.expand((self.num_particles,) + total.shape[1:])
        return lw if self.strata_plate is not None else lw.unsqueeze(1)
