"""Importance-weighted bounds and their gradient estimators: IWAE, STL, DReG, the
stratified mixture bounds of MMVAE and the stratified IWAE (SIWAE) of Morningstar et al."""

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
    """Place ``(K, [E,] B)`` per-stratum weights so they broadcast against a site's value
    (the site must lie inside every plate of ``keep`` whose size is not 1)."""
    dims = _plate_dims(site, keep)
    rank = -particle_dim
    shape = [1] * rank
    shape[particle_dim] = weights.shape[0]
    for i, name in enumerate(keep):
        if name in dims:
            shape[dims[name]] = weights.shape[1 + i]
        elif weights.shape[1 + i] != 1:
            raise ValueError(f"site {site['name']!r} is outside the plate {name!r}")
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
        if gradient == "dreg" and self.bound == "elbo":
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

    def _combine(self, lw: torch.Tensor, strata: torch.Tensor) -> torch.Tensor:
        """The bound of each datum ``(B,)`` from ``(K, E, B)`` log-weights and ``(E, B)`` strata
        weights: the per-stratum bounds averaged with the strata weights."""
        return (strata * self._reduce(lw)).sum(0)

    def _surrogate_weights(
        self, lw: torch.Tensor, strata: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coef, hook)``, both ``(K, E, B)``, from detached log-weights: the STL surrogate is
        ``sum coef * lw_rescored``; DReG multiplies the gradient reaching each particle's latent
        once more by ``hook`` (so each path gradient is weighted by ``coef * hook``)."""
        normalized = torch.softmax(lw, 0)  # (K, E, B)
        return strata * normalized, normalized

    def per_datum(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The bound of each datum, ``(B,)``."""
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        lw = self._log_weights(model_trace, guide_trace, rescore=False)
        return self._combine(lw, self._strata(guide_trace, lw.shape[1:]).to(lw))

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        lw = self._log_weights(model_trace, guide_trace, rescore=False)
        strata = self._strata(guide_trace, lw.shape[1:]).to(lw)
        bound = self._combine(lw, strata).sum()
        if self.gradient == "standard":
            loss = -bound
        else:
            lw_rescored = self._log_weights(model_trace, guide_trace, rescore=True)
            if self.bound == "elbo":
                surrogate = (strata * lw_rescored.mean(0)).sum()
            else:
                coef, hook = self._surrogate_weights(lw_rescored.detach(), strata)
                surrogate = (coef * lw_rescored).sum()
                if self.gradient == "dreg":
                    surrogate = surrogate + self._reweight_latent_gradients(guide_trace, lw_rescored, coef, hook)
            loss = -(bound.detach() + surrogate - surrogate.detach())
        warn_if_nan(loss, "loss")
        return loss

    def _reweight_latent_gradients(
        self, guide_trace: Trace, lw_rescored: torch.Tensor, coef: torch.Tensor, hook: torch.Tensor,
    ) -> torch.Tensor | float:
        """DReG (Tucker et al. 2019, eq. 5): the path gradient of each particle's log-weight is
        weighted by ``coef * hook`` (for IWAE ``w~_k^2``) instead of ``coef`` (``w~_k``).

        A latent inside every kept plate gets a hook multiplying the gradient reaching its value
        by ``hook``. A latent outside the strata plate (one value per row shared by every
        stratum) needs ``sum_{e,k} coef_ek hook_ek d lw_ek / d v_k``, each stratum's path weighted
        by its own weights, which no multiplicative hook on the shared value gives: for such
        sites the returned zero-valued term ``sum(delta * v) - sum(delta * v).detach()`` adds
        the difference ``delta`` between that gradient and the one the surrogate sends to ``v``
        (two vector-Jacobian products). Being part of the loss, it scales with it like every
        other gradient path.
        """
        particle_dim = -int(self.max_plate_nesting) - 1
        keep = self._keep
        inside, outside = [], []
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"] and site["value"].requires_grad:
                shared = self.strata_plate is not None and not _plate_dims(site, [self.strata_plate])
                (outside if shared else inside).append(site)
        weights = hook if self.strata_plate else hook.squeeze(1)
        values = [site["value"] for site in outside]
        if values:
            target = (coef * hook).detach()
            desired = torch.autograd.grad((target * lw_rescored).sum(), values, retain_graph=True,
                                          allow_unused=True)
        for site in inside:
            w = _weights_like(weights, site, particle_dim, keep)
            site["value"].register_hook(lambda grad, w=w: grad * w)
        if not values:
            return 0.0
        # what the surrogate alone sends to the shared values (through the hooks just set)
        current = torch.autograd.grad((coef * lw_rescored).sum(), values, retain_graph=True, allow_unused=True)
        correction: torch.Tensor | float = 0.0
        for value, want, have in zip(values, desired, current):
            if want is None and have is None:
                continue
            delta = (0.0 if want is None else want) - (0.0 if have is None else have)
            term = (delta.detach() * value).sum()
            correction = correction + term - term.detach()
        return correction

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


class SIWAE(_ImportanceBound):
    r"""Stratified IWAE of a mixture proposal (Morningstar, Vikram, Ham, Gallagher & Dillon,
    "Automatic Differentiation Variational Inference with Mixtures", AISTATS 2021).

    .. math:: \mathcal L_K = \sum_b \mathbb E_{z_{ek} \sim q_e}\Big[\log \sum_e a_{eb}
              \frac1K \sum_{k=1}^K \frac{p(x_b, z_{ekb})}{q(z_{ekb} | x_b)}\Big],
              \qquad q = \sum_e a_{eb}\, q_e

    The guide samples ``K`` particles from every stratum (expert) ``e`` of ``strata_plate``
    and scores them with the mixture density ``q``; ``a_eb`` are the strata weights of
    :class:`StratifiedIWAE` (uniform over the strata active in row ``b``; inactive strata are
    left out of the sum). The log sits *outside* the sum over strata, so, unlike
    :class:`StratifiedIWAE`, ``L_K`` is a bound on ``log p(x)`` that increases to it as ``K``
    grows: ``StratifiedIWAE_K <= SIWAE_K <= log p(x)`` (Jensen), with equality of the first two
    on rows with one active stratum, where both are the IWAE of that stratum.

    Gradients: ``"standard"`` (reparameterised) is unbiased. ``"dreg"`` (normalised weights
    ``w~_ek`` over all ``(e, k)`` of a row, path gradients weighted by ``w~_ek^2``) is unbiased on
    rows with one active stratum (IWAE's DReG) but **biased** on rows with several: Tucker et
    al.'s identity needs the score of the *sampling* density ``q_e``, while samples are scored
    with the mixture ``q``, whose score also holds the other experts' scores. Measured on the
    linear-Gaussian oracle (MMVAE, complete rows, 32,000 draws): about 1% of the mean encoder
    gradient's norm at ``K = 1`` and 2% at ``K = 10``, for 0.4-0.7 of the standard estimator's
    variance (tests/infer/test_gradient_estimators.py). ``"stl"`` is refused: it drops
    ``E[sum_ek w~_ek d log q(z_ek) / d phi]``, not zero even at ``K = 1`` once a row has several
    strata (measured 6% of the gradient's norm at ``K = 1``, twice its norm at ``K = 10``).
    Returns the negative bound summed over the batch.
    """

    bound = "siwae"

    def __init__(self, num_particles: int = 10, beta: float = 1.0, gradient: str = "standard",
                 max_plate_nesting: float = float("inf"), batch_plate: str = "batch",
                 strata_plate: str = "experts") -> None:
        if gradient == "stl":
            raise ValueError(
                "SIWAE does not offer gradient='stl': it is biased for SIWAE at every K on rows with "
                "several strata (see the SIWAE docstring); use 'standard' (unbiased) or 'dreg'"
            )
        super().__init__(num_particles, beta, gradient, max_plate_nesting, batch_plate, strata_plate)

    def _logits(self, lw: torch.Tensor, strata: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log a_e - log K + lw_ek`` ``(K, E, B)`` (``-inf`` on inactive strata, ``0`` on rows
        with no active stratum, which add nothing) and the ``(B,)`` mask of rows with one."""
        active = strata > 0
        rows = active.any(0)
        log_a = strata.clamp(min=torch.finfo(strata.dtype).tiny).log() - math.log(lw.shape[0])
        logits = torch.where(active, lw + log_a, torch.full((), -math.inf, dtype=lw.dtype, device=lw.device))
        return torch.where(rows, logits, torch.zeros((), dtype=lw.dtype, device=lw.device)), rows

    def _combine(self, lw: torch.Tensor, strata: torch.Tensor) -> torch.Tensor:
        logits, rows = self._logits(lw, strata)
        bound = torch.logsumexp(logits.flatten(0, 1), 0)
        return torch.where(rows, bound, torch.zeros((), dtype=lw.dtype, device=lw.device))

    def _surrogate_weights(
        self, lw: torch.Tensor, strata: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, rows = self._logits(lw, strata)
        normalized = torch.softmax(logits.flatten(0, 1), 0).reshape(logits.shape) * rows  # over (e, k)
        return normalized, normalized


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
