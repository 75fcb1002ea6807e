"""The baseline: sample the model's own prior ``p(z)``."""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from .base import LatentSampler, register_sampler


@register_sampler("prior")
class PriorSampler(LatentSampler):
    r"""Draw ``z ~ p(z)``, the model's prior (what ``model.generate`` does): a diagonal Normal
    ``N(mu, diag(sigma^2))`` or, for models with Laplace priors (MMVAE), ``Laplace(mu, b)``.

    ``fit(model)`` copies the prior's family, location and scale; no data are needed (a dataset,
    when given, is only used to check that private latents can be decoded). It is the reference
    the ex-post densities are compared with (Ghosh et al. 2020).

    Parameters
    ----------
    family : str
        ``"normal"`` or ``"laplace"``; set by :meth:`fit` from the model's prior.
    """

    needs_codes = False
    FAMILIES = {"normal": dist.Normal, "laplace": dist.Laplace}

    def __init__(self, family: str = "normal") -> None:
        super().__init__()
        if family not in self.FAMILIES:
            raise ValueError(f"PriorSampler family must be one of {sorted(self.FAMILIES)}, got {family!r}")
        self.family = family
        self.loc: Tensor | None = None
        self.scale: Tensor | None = None

    def options(self) -> dict[str, str]:
        return {"family": self.family}

    def _fit_model(
        self, model: MultimodalVAE, dataset: MultimodalDataset | None, codes: str, batch_size: int,
    ) -> None:
        prior = model.prior()
        base = prior.base_dist if isinstance(prior, dist.Independent) else prior
        family = next((f for f, cls in self.FAMILIES.items() if type(base) is cls), None)
        if family is None or prior.event_shape != (model.latent_dim,):
            raise TypeError(
                "PriorSampler supports diagonal Normal or Laplace priors with event shape (latent_dim,); "
                f"{type(model).__name__}.prior() is {type(prior).__name__} of {type(base).__name__}"
            )
        self.family = family
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
        return self.FAMILIES[self.family](self.loc, self.scale).to_event(1)

    def _sample(self, n: int) -> Tensor:
        return self._dist().sample((n,))

    def _log_density(self, codes: Tensor) -> Tensor:
        return self._dist().log_prob(codes.to(self.loc))

    def _tensors(self) -> dict[str, Tensor]:
        return {"loc": self.loc, "scale": self.scale}

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        self._set(tensors["loc"], tensors["scale"])
