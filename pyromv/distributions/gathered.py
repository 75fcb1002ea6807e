"""A likelihood computed only at the entries of a batch that an objective scores."""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints


class GatheredLikelihood(TorchDistribution):
    r"""``p(x | z)`` over a batch shape, evaluated at the entries that ``mask`` selects.

    Vectorised objectives lay out one latent per (particle, term or stratum, row) and mask
    the likelihood terms they do not score: MVAE's unimodal terms score one modality, a row
    that misses a modality scores none of it, and a MoPoE subset outside a row's observed
    modalities scores nothing. Decoding every entry and masking the result afterwards wastes
    the decoder's work on entries whose log-density is multiplied by zero. A model builds
    ``scored`` on the ``N = mask.sum()`` selected entries alone (decoder run on the gathered
    latents) and wraps it here: ``log_prob`` gathers the observation at the selected entries,
    scores them with ``scored`` and scatters the result into zeros of the batch shape.

    The log-density of an unselected entry is 0, so the site must be masked there (as
    ``poutine.mask`` does in the models); ``sample`` (and ``rsample``, where ``scored`` has it)
    draws the selected entries and fills the others with zeros.

    Parameters
    ----------
    scored : Distribution
        Likelihood of the selected entries: batch shape ``(N,)``, event shape of the data.
    mask : BoolTensor
        The full batch shape; ``True`` at the ``N`` entries ``scored`` describes, in row-major
        order (as boolean indexing ``x[mask]`` lists them).
    """

    arg_constraints = {}

    def __init__(self, scored: TorchDistribution, mask: Tensor, validate_args: bool | None = None) -> None:
        if mask.dtype != torch.bool:
            raise TypeError(f"GatheredLikelihood needs a bool mask, got {mask.dtype}")
        n = int(mask.sum())
        if scored.batch_shape != (n,):
            raise ValueError(
                f"GatheredLikelihood: the scored distribution has batch shape {tuple(scored.batch_shape)}, "
                f"but the mask selects {n} entries"
            )
        self.scored, self.mask = scored, mask
        super().__init__(mask.shape, scored.event_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return self.scored.support

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        raise NotImplementedError(
            "GatheredLikelihood cannot broadcast to more entries than it was built for "
            f"({tuple(self.batch_shape)} -> {tuple(batch_shape)}); build it on the full shape of the plates"
        )

    def _selected(self, value: Tensor) -> Tensor:
        return value.expand(self.batch_shape + self.event_shape)[self.mask]

    def log_prob(self, value: Tensor) -> Tensor:
        lp = self.scored.log_prob(self._selected(value))
        return lp.new_zeros(self.batch_shape).masked_scatter(self.mask, lp)

    @property
    def has_rsample(self) -> bool:
        return self.scored.has_rsample

    def _scatter(self, draws: Tensor, sample_shape: torch.Size) -> Tensor:
        out = draws.new_zeros(sample_shape + self.batch_shape + self.event_shape)
        out[(slice(None),) * len(sample_shape) + (self.mask,)] = draws  # differentiable in draws
        return out

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        return self._scatter(self.scored.sample(sample_shape), sample_shape)  # draws (*sample_shape, N, *event)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        return self._scatter(self.scored.rsample(sample_shape), sample_shape)
