"""The baseline: sample the model's own prior ``p(z)``."""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from .base import LatentSampler, register_sampler


@register_sampler("prior")
class PriorSampler(LatentSampler):
    r"""Draw ``z ~ p(z) = N(mu, diag(sigma^2))``, the model's prior (what ``model.generate`` does).

    ``fit(model)`` copies the prior's location and scale; no data are needed (a dataset, when
    given, is only used to check that private latents can be decoded). It is the reference the
    ex-post densities are compared with (Ghosh et al. 2020).
    """

    needs_codes = False

    def __init__(self) -> None:
        super().__init__()
        self.loc: Tensor | None = None
        self.scale: Tensor | None = None

    def _fit_model(
        self, model: MultimodalVAE, dataset: MultimodalDataset | None, codes: str, batch_size: int,
    ) -> None:
        prior = model.prior()
        base = prior.base_dist if isinstance(prior, dist.Independent) else prior
        if not isinstance(base, dist.Normal) or prior.event_shape != (model.latent_dim,):
            raise TypeError(
                "PriorSampler supports diagonal Normal priors with event shape (latent_dim,); "
                f"{type(model).__name__}.prior() is {type(prior).__name__}"
            )
        loc = base.loc.expand(prior.event_shape).detach().clone()
        scale = base.scale.expand(prior.event_shape).detach().clone()
        self._set(loc, scale)
        self.fit_info = {"source": "model prior"}

    def fit_codes(self, codes: Tensor) -> PriorSampler:
        """Not available: the prior is not fitted to codes (use ``fit(model)``)."""
        raise TypeError(
            "PriorSampler takes the model's prior: call fit(model); a Gaussian fitted to codes "
            "is GaussianMixtureSampler(n_components=1)"
        )

    def _set(self, loc: Tensor, scale: Tensor) -> None:
        self.loc, self.scale = loc, scale
        self.latent_dim = int(loc.shape[0])

    def _dist(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)

    def _sample(self, n: int) -> Tensor:
        return self._dist().sample((n,))

    def _log_density(self, codes: Tensor) -> Tensor:
        return self._dist().log_prob(codes.to(self.loc))

    def _tensors(self) -> dict[str, Tensor]:
        return {"loc": self.loc, "scale": self.scale}

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        self._set(tensors["loc"], tensors["scale"])
