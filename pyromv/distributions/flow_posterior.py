r"""Flow posteriors and per-row choices of posterior families (JNF).

A flow posterior is a diagonal Gaussian pushed through a masked autoregressive flow (MAF,
Papamakarios et al. 2017) built from Pyro's ``AffineAutoregressive`` with an
``AutoRegressiveNN`` (MADE, Germain et al. 2015). In the density direction each layer maps
``u -> exp(s(u)) * u + m(u)`` with ``(m, s)`` autoregressive in ``u``, so ``log q(z)`` costs one
pass per layer; sampling inverts the layers, one pass per latent coordinate. Pyro's layer is
written in the sampling direction (an IAF), so the posterior uses the layers' inverses.

:class:`RowwiseChoice` gives every row of a batch its own distribution among a few candidates
(a Gaussian for some rows, one modality's flow for others); :class:`EmpiricalRows` holds
Monte Carlo draws per row (e.g. from MCMC) as a distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import Tensor, nn


def masked_autoregressive_flow(dim: int, layers: int, hidden_dims: Sequence[int]) -> nn.ModuleList:
    """``layers`` affine autoregressive layers on ``R^dim`` (MADE networks with ``hidden_dims``).

    Layers alternate the identity and the reversed order of the coordinates (a fixed
    permutation, so a model rebuilt from its config has the same flow).
    """
    if layers < 0:
        raise ValueError(f"flow layers must be >= 0, got {layers}")
    out = nn.ModuleList()
    for i in range(layers):
        order = torch.arange(dim) if i % 2 == 0 else torch.arange(dim - 1, -1, -1)
        out.append(AffineAutoregressive(AutoRegressiveNN(dim, list(hidden_dims), permutation=order)))
    return out


@torch.no_grad()
def set_identity(flow: nn.ModuleList) -> None:
    """Make every layer the identity (zero output layer of each MADE: ``m = 0``, ``s = 0``)."""
    for layer in flow:
        last = layer.arn.layers[-1]
        last.weight.zero_()
        last.bias.zero_()


def flow_posterior(loc: Tensor, scale: Tensor, flow: nn.ModuleList) -> dist.TorchDistribution:
    r"""``q(z) = N(g(z); loc, diag(scale^2)) |det dg/dz|`` with ``g`` the layers of ``flow`` in
    order (density direction); batch shape ``loc.shape[:-1]``, event ``(D,)``. Sampling draws
    ``u ~ N(loc, scale)`` and returns ``g^{-1}(u)``. Without layers: the Gaussian itself."""
    base = dist.Normal(loc, scale).to_event(1)
    if len(flow) == 0:
        return base
    for layer in flow:  # Pyro's layers cache their last (input, output) by identity: a point
        # scored again after a parameter update would get the stale output; start afresh
        layer._cached_x_y = None, None
        layer._cached_log_scale = None
    return dist.TransformedDistribution(base, [layer.inv for layer in reversed(flow)])


def central_point(d: dist.TorchDistribution) -> Tensor:
    """The mean where it has a closed form; for a flow posterior the image of its base mean
    (a flow has no closed-form mean; this is the point decoders get for ``sample=False``)."""
    if isinstance(d, dist.TransformedDistribution):
        z = d.base_dist.mean
        for t in d.transforms:
            z = t(z)
        return z
    return d.mean


class RowwiseChoice(TorchDistribution):
    r"""Row ``b`` follows ``components[index[b]]``: its draws and its density are that
    component's alone (not a mixture).

    Parameters
    ----------
    components : sequence of distributions
        Each of batch shape ``batch_shape`` and event shape ``(D,)``.
    index : LongTensor
        ``batch_shape``: which component each row follows.

    Notes
    -----
    Only the components some row uses are sampled or evaluated, in the order given (each with
    a draw of the full batch shape). ``mean`` is :func:`central_point` of each row's component.
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, components: Sequence[dist.TorchDistribution], index: Tensor,
                 validate_args: bool | None = None) -> None:
        components = list(components)
        if not components:
            raise ValueError("RowwiseChoice needs at least one component")
        shape, event = components[0].batch_shape, components[0].event_shape
        if len(event) != 1 or any(c.batch_shape != shape or c.event_shape != event for c in components):
            raise ValueError("RowwiseChoice components need one batch shape and event shape (D,)")
        if index.shape != shape or index.dtype != torch.long:
            raise ValueError(f"RowwiseChoice index must be a LongTensor of shape {tuple(shape)}")
        self.components, self.index = components, index
        self.used = [k for k in range(len(components)) if bool((index == k).any())]
        super().__init__(shape, event, validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:
        return all(self.components[k].has_rsample for k in self.used)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return RowwiseChoice([c.expand(batch_shape) for c in self.components], self.index.expand(batch_shape),
                             validate_args=False)

    def _select(self, values: list[Tensor], event: bool = True) -> Tensor:
        out = values[0]
        for k, v in zip(self.used[1:], values[1:]):
            pick = self.index == k
            out = torch.where(pick.unsqueeze(-1) if event else pick, v, out)
        return out

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return self._select([self.components[k].rsample(sample_shape) for k in self.used])

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self._select([self.components[k].sample(sample_shape) for k in self.used])

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self._select([self.components[k].log_prob(value) for k in self.used], event=False)

    @property
    def mean(self) -> Tensor:
        return self._select([central_point(self.components[k]) for k in self.used])


class EmpiricalRows(TorchDistribution):
    r"""Draws ``samples`` ``(S, *batch_shape, D)`` per row (e.g. an MCMC chain) as a distribution.

    ``sample`` picks stored draws uniformly at random, ``mean`` is their average; ``log_prob`` is
    the density of the Gaussian fitted to the draws (mean and full covariance, plus ``jitter``
    on the diagonal): an approximation, for metrics that need a density. Not reparameterised.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, samples: Tensor, jitter: float = 1e-6, validate_args: bool | None = None) -> None:
        if samples.dim() < 2 or samples.shape[0] < 2:
            raise ValueError("EmpiricalRows needs samples of shape (S, *batch_shape, D) with S >= 2")
        self.samples, self.jitter = samples, jitter
        super().__init__(samples.shape[1:-1], samples.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        S, D = self.samples.shape[0], self.samples.shape[-1]
        return EmpiricalRows(self.samples.expand((S, *batch_shape, D)), self.jitter, validate_args=False)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        S = self.samples.shape[0]
        pick = torch.randint(S, sample_shape + self.batch_shape, device=self.samples.device)
        flat = self.samples.movedim(0, -2)  # (*batch, S, D)
        flat = flat.expand(sample_shape + flat.shape)
        return torch.gather(flat, -2, pick.unsqueeze(-1).unsqueeze(-1).expand(*pick.shape, 1, flat.shape[-1])
                            ).squeeze(-2)

    @property
    def mean(self) -> Tensor:
        return self.samples.mean(0)

    @property
    def variance(self) -> Tensor:
        return self.samples.var(0)

    def _gaussian(self) -> dist.MultivariateNormal:
        centred = self.samples - self.mean
        cov = torch.einsum("s...i,s...j->...ij", centred, centred) / (self.samples.shape[0] - 1)
        cov = cov + self.jitter * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return dist.MultivariateNormal(self.mean, covariance_matrix=cov)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self._gaussian().log_prob(value)
