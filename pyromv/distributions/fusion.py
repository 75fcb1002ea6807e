"""Fusions of per-modality experts: product of experts and mixture of experts.

Both take experts stacked on the dimension right before the event: parameters of shape
``(*batch_shape, M, D)`` and masks of shape ``(*batch_shape, M)``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.kl import kl_divergence, register_kl
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor


class ProductOfExperts(dist.Independent):
    r"""Product of diagonal Gaussian experts, optionally with a Gaussian prior expert.

    .. math::
        q(z) \propto p(z)^{[\text{prior}]} \prod_{m:\,\text{mask}_m} \mathcal N(z; \mu_m, \sigma_m^2),
        \quad \Lambda = \Lambda_0 + \sum_m \text{mask}_m \sigma_m^{-2},
        \quad \mu = \Lambda^{-1} (\Lambda_0 \mu_0 + \sum_m \text{mask}_m \sigma_m^{-2} \mu_m)

    (Hinton 2002; Wu & Goodman 2018). Experts whose ``mask`` is False get zero precision, so a
    row fuses only the modalities it observes; a row with none is the prior expert itself.
    The product is Gaussian, so this is an :class:`~pyro.distributions.Independent` Normal with
    ``rsample``, ``log_prob`` and the analytic KL divergences Pyro has for Normals.

    Parameters
    ----------
    loc, scale : Tensor
        Expert means and standard deviations, shape ``(*batch_shape, M, D)``.
    mask : BoolTensor, optional
        ``(*batch_shape, M)``, True for the experts to include (default all).
    prior_loc, prior_scale : float or Tensor
        The prior expert ``N(prior_loc, prior_scale^2)``, broadcast to ``(*batch_shape, D)``.
    include_prior : bool
        Include the prior expert (MVAE does). Without it every row needs an expert.
    weights : Tensor, optional
        Non-negative expert weights ``a_{m,d}`` broadcastable to ``(*batch_shape, M, D)``: each
        expert's precision is multiplied by its weight, ``Lambda = Lambda_0 + sum_m mask_m a_m
        sigma_m^{-2}`` (the generalised product of experts of Cao & Fleet 2014; weights summing to
        one over the experts give a weighted geometric mean). Default: all 1 (the plain product).
    prior_weight : float or Tensor, optional
        Weight of the prior expert's precision, broadcastable to ``(*batch_shape, D)`` (default 1).
    """

    arg_constraints = {}

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        mask: Tensor | None = None,
        prior_loc: float | Tensor = 0.0,
        prior_scale: float | Tensor = 1.0,
        include_prior: bool = True,
        validate_args: bool | None = None,
        weights: Tensor | None = None,
        prior_weight: float | Tensor | None = None,
    ) -> None:
        _check_experts(loc, scale)
        mask = _check_mask(loc.shape[:-1], mask, loc.device)
        loc, precision = _masked_experts(loc, scale, mask)
        if not include_prior and not bool(mask.any(-1).all()):
            raise ValueError("ProductOfExperts without a prior expert needs an expert in every row")
        if weights is not None:
            precision = precision * _check_weights(weights, loc.shape, "weights")
        total = precision.sum(-2)
        if weights is not None and not include_prior and not bool((total > 0).all()):
            raise ValueError("ProductOfExperts without a prior expert: the weights leave a row with zero "
                             "total precision in some latent dimension")
        self._fuse(total, (precision * loc).sum(-2), prior_loc, prior_scale, include_prior,
                   validate_args, prior_weight)

    def _fuse(self, total: Tensor, weighted: Tensor, prior_loc, prior_scale, include_prior: bool,
              validate_args: bool | None, prior_weight: float | Tensor | None = None) -> None:
        """Set the product from the experts' summed precisions and precision-weighted means."""
        if include_prior:
            prior_precision = torch.as_tensor(prior_scale, dtype=total.dtype, device=total.device).pow(-2)
            if prior_weight is not None:
                prior_precision = prior_precision * _check_weights(
                    torch.as_tensor(prior_weight, dtype=total.dtype, device=total.device), total.shape,
                    "prior_weight")
            prior_loc = torch.as_tensor(prior_loc, dtype=total.dtype, device=total.device)
            total = total + prior_precision
            weighted = weighted + prior_precision * prior_loc
        super().__init__(dist.Normal(weighted / total, total.rsqrt()), 1, validate_args=validate_args)

    @classmethod
    def of_subsets(
        cls,
        loc: Tensor,
        scale: Tensor,
        subsets: Tensor,
        prior_loc: float | Tensor = 0.0,
        prior_scale: float | Tensor = 1.0,
        include_prior: bool = True,
        validate_args: bool | None = None,
    ) -> ProductOfExperts:
        """The product of each subset's experts at once, batch shape ``(S, *batch_shape)``.

        ``subsets`` is ``(S, M)``, True where expert ``m`` belongs to subset ``s`` (every subset
        non-empty unless ``include_prior``). The sums over members are one matrix product, so no
        ``(S, *batch_shape, M, D)`` tensor is formed: ``2^M - 1`` subsets cost little more than
        ``M`` experts (MoPoE).
        """
        _check_experts(loc, scale)
        if subsets.dim() != 2 or subsets.shape[1] != loc.shape[-2]:
            raise ValueError(f"subsets must be (S, M) with M = {loc.shape[-2]}, got {tuple(subsets.shape)}")
        if not include_prior and not bool(subsets.any(-1).all()):
            raise ValueError("ProductOfExperts without a prior expert needs an expert in every subset")
        member = subsets.to(loc.dtype)
        precision = scale.pow(-2)
        out = cls.__new__(cls)
        out._fuse(torch.einsum("sm,...md->s...d", member, precision),
                  torch.einsum("sm,...md->s...d", member, precision * loc),
                  prior_loc, prior_scale, include_prior, validate_args)
        return out

    @property
    def loc(self) -> Tensor:
        """Location of the fused Gaussian."""
        return self.base_dist.loc

    @property
    def scale(self) -> Tensor:
        """Standard deviation of the fused Gaussian."""
        return self.base_dist.scale

    def expand(self, batch_shape, _instance=None):
        """The expanded fused Gaussian (an ``Independent(Normal)``; the experts are not kept)."""
        return dist.Normal(self.loc, self.scale).to_event(1).expand(batch_shape)


class MixtureOfExperts(TorchDistribution):
    r"""Mixture of experts with uniform weights over the included experts (or given weights).

    .. math:: q(z) = \sum_m w_m\, q_m(z), \qquad
              \log q(z) = \operatorname{logsumexp}_m \big(\log w_m + \log q_m(z)\big)

    (Shi et al. 2019). ``rsample`` draws a component per sample and reparameterises *within*
    it: gradients reach the experts' parameters but not the weights. The stratified bounds
    in :mod:`pyromv.infer` instead sample every expert.

    Parameters
    ----------
    components : Distribution
        Experts with batch shape ``(*batch_shape, M)`` and event shape ``(D,)``, e.g.
        ``dist.Normal(loc, scale).to_event(1)`` with ``loc`` of shape ``(*batch_shape, M, D)``.
    mask : BoolTensor, optional
        ``(*batch_shape, M)``: the experts to include (default all).
    log_weights : Tensor, optional
        ``(*batch_shape, M)`` unnormalised log weights (default uniform).
    """

    arg_constraints = {}
    has_rsample = True

    def __init__(
        self,
        components: TorchDistribution,
        mask: Tensor | None = None,
        log_weights: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if len(components.batch_shape) < 1 or len(components.event_shape) != 1:
            raise ValueError(
                "MixtureOfExperts needs components of batch shape (*batch_shape, M) and event "
                f"shape (D,), got {tuple(components.batch_shape)} and {tuple(components.event_shape)}"
            )
        shape = components.batch_shape
        mean = components.mean
        if log_weights is None:
            log_weights = torch.zeros(shape, dtype=mean.dtype, device=mean.device)
        if mask is not None:
            mask = _check_mask(shape, mask, mean.device)
            if not bool(mask.any(-1).all()):
                raise ValueError("MixtureOfExperts needs at least one expert in every row")
            log_weights = log_weights.masked_fill(~mask, -math.inf)
        self.components = components
        self.log_weights = log_weights - log_weights.logsumexp(-1, keepdim=True)
        super().__init__(shape[:-1], components.event_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return self.components.support

    @property
    def num_experts(self) -> int:
        """Number of mixture components (experts) per row."""
        return self.components.batch_shape[-1]

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + (self.num_experts,)
        return MixtureOfExperts(
            self.components.expand(shape), log_weights=self.log_weights.expand(shape),
            validate_args=False,
        )

    def component_log_prob(self, value: Tensor) -> Tensor:
        """``log q_m(z)`` for every expert ``m``, shape ``(..., *batch_shape, M)``."""
        return self.components.log_prob(value.unsqueeze(-2))

    def log_prob(self, value: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_prob(value) + self.log_weights, dim=-1)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        idx = dist.Categorical(logits=self.log_weights).sample(sample_shape)  # (*s, *batch)
        if _is_location_scale(self.components):  # draw from the chosen expert only, not from all M
            return select_component(self.components, idx).rsample()
        draws = self.components.rsample(sample_shape)  # (*s, *batch, M, D)
        idx = idx[..., None, None].expand(idx.shape + (1,) + self.event_shape)
        return draws.gather(-2, idx).squeeze(-2)

    @property
    def mean(self) -> Tensor:
        return (self.log_weights.exp().unsqueeze(-1) * self.components.mean).sum(-2)


def _is_location_scale(components: TorchDistribution) -> bool:
    """Independent Normal or Laplace experts over the last batch dim (the layout of the fusions)."""
    return (isinstance(components, dist.Independent) and components.reinterpreted_batch_ndims == 1
            and type(components.base_dist) in (dist.Normal, dist.Laplace))


def select_component(components: dist.Independent, index: Tensor) -> dist.Independent:
    """The component ``index`` of each row of location-scale experts ``(*batch, M)``.

    ``index`` has shape ``(*lead, *batch)`` (leading dims, e.g. samples, allowed); the result has
    that batch shape, the experts' family and event shape.
    """
    base = components.base_dist
    shape = index.shape + base.loc.shape[-2:]
    idx = index[..., None, None].expand(index.shape + (1,) + base.loc.shape[-1:])
    loc = base.loc.expand(shape).gather(-2, idx).squeeze(-2)
    scale = base.scale.expand(shape).gather(-2, idx).squeeze(-2)
    return type(base)(loc, scale).to_event(1)


def _check_experts(loc: Tensor, scale: Tensor) -> None:
    if loc.shape != scale.shape or loc.dim() < 2:
        raise ValueError(
            f"expert loc {tuple(loc.shape)} and scale {tuple(scale.shape)} must share one "
            "shape (*batch_shape, M, D)"
        )


def _masked_experts(loc: Tensor, scale: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(loc, precision)`` with every masked-out expert replaced by ``(0, 0)`` through
    ``torch.where`` *before* any arithmetic, so an excluded expert whose scale is 0, inf or NaN
    (or whose loc is inf or NaN) adds exactly nothing: no ``0 / 0`` or ``0 * inf`` in the fused
    parameters, and no NaN in their gradients (``where`` after the arithmetic would still
    back-propagate ``0 * inf``)."""
    keep = mask.unsqueeze(-1)
    one = torch.ones((), dtype=scale.dtype, device=scale.device)
    zero = torch.zeros((), dtype=loc.dtype, device=loc.device)
    safe_scale = torch.where(keep, scale, one)
    precision = torch.where(keep, safe_scale.pow(-2), zero)
    return torch.where(keep, loc, zero), precision


def _check_weights(weights: Tensor, shape: torch.Size, what: str) -> Tensor:
    """``weights`` broadcast to ``shape``; ValueError where they do not fit or are negative."""
    try:
        weights = torch.broadcast_to(weights, shape)
    except RuntimeError:
        raise ValueError(f"ProductOfExperts {what} of shape {tuple(weights.shape)} do not broadcast to "
                         f"{tuple(shape)}") from None
    if not bool((weights >= 0).all()):
        raise ValueError(f"ProductOfExperts {what} must be non-negative (and not NaN)")
    return weights


def _check_mask(shape: torch.Size, mask: Tensor | None, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if mask.shape != shape:
        raise ValueError(f"expert mask of shape {tuple(mask.shape)} does not match experts {tuple(shape)}")
    return mask.bool()


class StratifiedMixture(TorchDistribution):
    r"""Every expert sampled once, every sample scored by the whole mixture.

    For experts ``q_e`` with batch shape ``(E, *batch)`` (experts first, the layout of a
    ``pyro.plate("experts", E)`` left of the batch plate), ``rsample`` returns one
    reparameterised draw per expert, ``z_e ~ q_e``, and ``log_prob`` scores each ``z_e`` with
    the mixture density of its row:

    .. math:: \log q(z_e) = \operatorname{logsumexp}_j \big(\log w_j + \log q_j(z_e)\big)

    This is the stratified sampling of a mixture used by MMVAE's objectives (Shi et al. 2019,
    Sec. 3): averaging over experts with weights ``w`` gives an unbiased estimate of
    expectations under the mixture, with reparameterised gradients. It is *not* a sampler of
    the mixture itself (use :class:`MixtureOfExperts` for that).

    Parameters
    ----------
    components : Distribution
        Batch shape ``(E, *batch)``, event shape ``(D,)``.
    mask : BoolTensor, optional
        ``(E, *batch)``: experts included in the mixture of each row (a row with none is scored
        by all experts; mask such rows out of the objective).
    """

    arg_constraints = {}
    has_rsample = True

    def __init__(self, components: TorchDistribution, mask: Tensor | None = None,
                 validate_args: bool | None = None) -> None:
        if len(components.batch_shape) < 1 or len(components.event_shape) != 1:
            raise ValueError(
                "StratifiedMixture needs components of batch shape (E, *batch_shape) and event "
                f"shape (D,), got {tuple(components.batch_shape)} and {tuple(components.event_shape)}"
            )
        shape = components.batch_shape
        mask = _check_mask(shape, mask, components.mean.device)
        # a row with no included expert is scored by all of them: finite values for a row the
        # caller masks out anyway (an all -inf logsumexp would put NaN into the gradients)
        mask = mask | ~mask.any(0, keepdim=True)
        log_w = torch.zeros(shape, dtype=components.mean.dtype, device=mask.device)
        log_w = log_w.masked_fill(~mask, -math.inf)
        self.components, self.mask = components, mask
        self.log_weights = log_w - log_w.logsumexp(0, keepdim=True)
        super().__init__(shape, components.event_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return self.components.support

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape[len(batch_shape) - len(self.batch_shape):] != self.batch_shape:
            raise ValueError(f"StratifiedMixture cannot expand {tuple(self.batch_shape)} to {tuple(batch_shape)}")
        return _ExpandedStratified(self, batch_shape)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return self.components.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        n = len(self.batch_shape)  # value: (..., E, *batch, D)
        comp = self.components.log_prob(value.unsqueeze(-n - 1))  # (..., E, E_j, *batch)
        return torch.logsumexp(comp + self.log_weights, dim=-n)

    @property
    def mean(self) -> Tensor:
        return self.components.mean


class _ExpandedStratified(StratifiedMixture):
    """A :class:`StratifiedMixture` with extra batch dims on the left (e.g. particles)."""

    def __init__(self, base: StratifiedMixture, batch_shape: torch.Size) -> None:
        self.base = base
        TorchDistribution.__init__(self, batch_shape, base.event_shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        lead = self.batch_shape[: len(self.batch_shape) - len(self.base.batch_shape)]
        return self.base.rsample(torch.Size(sample_shape) + lead)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value)

    @property
    def mean(self) -> Tensor:
        return self.base.mean.expand(self.batch_shape + self.event_shape)

    @property
    def components(self):
        return self.base.components

    @property
    def mask(self):
        return self.base.mask

    @property
    def log_weights(self):
        return self.base.log_weights


def assign_components(active: Tensor, balanced: bool = True) -> Tensor:
    r"""One component per row, uniform over the row's active components.

    ``active`` is ``(B, S)``; returns ``(B,)`` indices. With ``balanced=False`` each row draws its
    own index. With ``balanced=True`` the draws are systematic: one uniform ``U`` for the batch,
    row ``b`` takes its ``floor(n_b ((U + b / B) mod 1))``-th active component (``n_b`` of them).
    Each row's index is still uniform over its active components (``(U + b/B) mod 1`` is uniform),
    so estimates stay unbiased, while rows with the same active set spread evenly over it (the
    balanced split of a batch over MoPoE's subsets in Sutter et al.'s code, without its fixed order).
    A row with no active component gets index 0.
    """
    if active.dim() != 2:
        raise ValueError(f"active must be (B, S), got shape {tuple(active.shape)}")
    B = active.shape[0]
    counts = active.sum(-1)
    device = active.device
    if balanced:
        u = torch.rand((), device=device)
        u = (u + torch.arange(B, device=device, dtype=u.dtype) / max(B, 1)) % 1.0
    else:
        u = torch.rand(B, device=device)
    rank = (u * counts).floor().long().clamp(max=(counts - 1).clamp(min=0))  # which active one
    # the first component whose running count of active components exceeds rank
    return (active.long().cumsum(-1) > rank.unsqueeze(-1)).long().argmax(-1)


class AssignedMixture(TorchDistribution):
    r"""A mixture sampled through one component per row, assigned in advance, with the
    mixture's expected KL divergence.

    For components ``q_s`` with weights ``w_s`` and an assignment ``a`` drawn with
    ``P(a = s) = w_s`` (e.g. :func:`assign_components`), ``rsample`` and ``log_prob`` are those
    of ``q_a``, and the KL divergence to a location-scale ``p`` is the weighted average

    .. math:: \mathrm{KL}(\,\cdot\, \| p) = \sum_s w_s\, \mathrm{KL}(q_s \| p)

    over *all* components, in closed form. In an ELBO, ``E_q[\log p(x|z)] - KL`` then estimates
    without bias the average of the per-component ELBOs,
    ``sum_s w_s (E_{q_s}[\log p(x|z)] - KL(q_s || p))``, with one decoder pass per row: MoPoE's
    objective as Sutter et al. (2021) train it (their code assigns subsets to rows in
    fixed blocks). The KL average is the exact expectation over the assignment of the
    Monte Carlo ``log q_a(z) - log p(z)``, so Monte Carlo KL and closed form agree in
    expectation. ``log_prob`` is *not* the mixture's density (see :class:`MixtureOfExperts`).

    Parameters
    ----------
    components : Independent distribution
        Batch shape ``(*batch_shape, S)``, event shape ``(D,)``, its base a location-scale family
        (``loc`` and ``scale`` arguments, e.g. Normal).
    weights : Tensor
        ``(*batch_shape, S)`` non-negative weights, normalised per row (a row of zeros: no
        component; its KL is 0 and it must be masked out of the objective).
    assignment : LongTensor
        ``(*batch_shape,)`` index of each row's component.
    """

    arg_constraints = {}
    has_rsample = True

    def __init__(self, components: dist.Independent, weights: Tensor, assignment: Tensor,
                 validate_args: bool | None = None) -> None:
        if len(components.event_shape) != 1:
            raise ValueError("AssignedMixture needs Independent components with event shape (D,)")
        shape = components.batch_shape
        if weights.shape != shape or assignment.shape != shape[:-1]:
            raise ValueError(
                f"AssignedMixture: components {tuple(shape)}, weights {tuple(weights.shape)} and "
                f"assignment {tuple(assignment.shape)} do not fit (*batch, S), (*batch, S), (*batch,)"
            )
        self.components, self.weights, self.assignment = components, weights, assignment
        if not _is_location_scale(components):
            raise ValueError("AssignedMixture needs Normal or Laplace components")
        self.selected = select_component(components, assignment)
        super().__init__(shape[:-1], components.event_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return self.components.support

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        S = self.weights.shape[-1]
        return AssignedMixture(self.components.expand(batch_shape + (S,)), self.weights.expand(batch_shape + (S,)),
                               self.assignment.expand(batch_shape), validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return self.selected.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q_a(z)``, the density of the assigned component."""
        return self.selected.log_prob(value)

    @property
    def mean(self) -> Tensor:
        return self.selected.mean


def _with_component_dim(p: dist.Independent) -> dist.Independent:
    """``p`` with a size-1 batch dim inserted before its event dim (location-scale bases)."""
    base = p.base_dist if isinstance(p, dist.Independent) else None
    if base is None or p.reinterpreted_batch_ndims != 1 or not hasattr(base, "loc") or not hasattr(base, "scale"):
        raise NotImplementedError("AssignedMixture has a closed-form KL to Independent location-scale priors only")
    return type(base)(base.loc.unsqueeze(-2), base.scale.unsqueeze(-2)).to_event(1)


@register_kl(AssignedMixture, dist.Independent)
def _kl_assigned_mixture(q: AssignedMixture, p: dist.Independent) -> Tensor:
    kl = kl_divergence(q.components, _with_component_dim(p))  # (*batch, S)
    return torch.where(q.weights > 0, q.weights * kl, torch.zeros_like(kl)).sum(-1)
