"""The baseline: sample the model's own prior ``p(z)``."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from .base import LatentSampler, register_sampler


@register_sampler("prior")
class PriorSampler(LatentSampler):
    r"""Draw ``z ~ p(z)``, the model's prior (what ``model.generate`` does): a diagonal Normal
    ``N(mu, diag(sigma^2))``, ``Laplace(mu, b)`` (MMVAE, MMVAE+), or a mixture of either
    ``sum_c pi_c p_c(z)`` (CMVAE's clustered prior).

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
        log_weights = None
        components = prior
        if isinstance(prior, dist.MixtureSameFamily):
            log_weights = torch.log_softmax(prior.mixture_distribution.logits, -1).detach().clone()
            components = prior.component_distribution
        base = components.base_dist if isinstance(components, dist.Independent) else components
        family = next((f for f, cls in self.FAMILIES.items() if type(base) is cls), None)
        shape = components.batch_shape + components.event_shape
        if family is None or prior.event_shape != (model.latent_dim,) or components.event_shape != prior.event_shape:
            raise TypeError(
                "PriorSampler supports diagonal Normal or Laplace priors with event shape (latent_dim,), "
                f"or mixtures of them; {type(model).__name__}.prior() is {type(prior).__name__} of "
                f"{type(base).__name__}"
            )
        self.family = family
        self._set(base.loc.expand(shape).detach().clone(), base.scale.expand(shape).detach().clone(), log_weights)
        self.fit_info = {"source": "model prior"}

    def fit_codes(self, codes: Tensor) -> PriorSampler:
        """Not available: the prior is not fitted to codes (use ``fit(model)``)."""
        raise TypeError(
            "PriorSampler takes the model's prior: call fit(model); a Gaussian fitted to codes "
            "is GaussianMixtureSampler(n_components=1)"
        )

    def _set(self, loc: Tensor, scale: Tensor, log_weights: Tensor | None = None) -> None:
        """``loc``/``scale`` ``(D,)``, or ``(C, D)`` with the mixture's ``log_weights`` ``(C,)``."""
        self.loc, self.scale, self.log_weights = loc, scale, log_weights
        self.latent_dim = int(loc.shape[-1])

    def _dist(self) -> dist.TorchDistribution:
        fn = self.FAMILIES[self.family](self.loc, self.scale).to_event(1)
        if self.log_weights is None:
            return fn
        return dist.MixtureSameFamily(dist.Categorical(logits=self.log_weights), fn)

    def _sample(self, n: int) -> Tensor:
        return self._dist().sample((n,))

    def _log_density(self, codes: Tensor) -> Tensor:
        return self._dist().log_prob(codes.to(self.loc))

    def _tensors(self) -> dict[str, Tensor]:
        out = {"loc": self.loc, "scale": self.scale}
        if self.log_weights is not None:
            out["log_weights"] = self.log_weights
        return out

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        self._set(tensors["loc"], tensors["scale"], tensors.get("log_weights"))
