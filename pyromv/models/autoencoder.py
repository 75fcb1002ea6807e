"""Deterministic multimodal autoencoders as Pyro programs: point-mass guides plus a penalty.

DCCAE, the multimodal adversarial autoencoder and the multimodal Wasserstein autoencoder are not
variational: each observed modality ``m`` of a row is encoded to one code ``z_m = f_m(x_m)`` (the
location output of the modality's encoder). In pyromv they are still a model and a guide, so the
data, masks, trainer, command line, evaluation and sharing apply unchanged:

- the guide draws ``z`` from a point mass :class:`~pyro.distributions.Delta` at the codes, one
  copy per modality under ``pyro.plate("experts", M, dim=-2)``, copy ``m`` masked where the row
  misses ``m``; the model's penalty (correlation, adversarial, MMD) enters the guide as
  ``pyro.factor`` sites (a guide factor is added to the loss);
- the model decodes each code copy (:meth:`MultimodalVAE.observe` with the strata mask) and
  leaves the prior density out of the objective: its ``z`` site is masked, ``log q = 0`` for a
  point mass, so ``-ELBO`` is exactly the reconstruction term plus the penalties.

These models have no likelihood ``p(X)`` (``has_likelihood = False``: importance-weighted
likelihoods refuse them). :meth:`encode` returns a point mass at the mean of the row's observed
codes (:class:`~pyromv.distributions.point.PointOrFallback`), the prior for rows observing nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..distributions.point import PointOrFallback
from .base import MultimodalVAE
from .config import ModelConfig


def check_deterministic_config(config: ModelConfig, model: str) -> None:
    """Deterministic codes: one particle and no KL weight (neither has a meaning here)."""
    if config.num_particles != 1:
        raise ValueError(f"{model} encodes each row to one deterministic code: num_particles must be 1, "
                         f"got {config.num_particles}")
    if config.beta != 1.0:
        raise ValueError(f"{model} has no KL term for beta to weight: beta must be 1, got {config.beta} "
                         "(weigh its penalty with its own option)")


class DeterministicAutoencoder(MultimodalVAE):
    """Shared machinery of the point-mass (non-variational) models.

    Subclasses set :attr:`cross_reconstruction` (``True``: every decoder decodes every observed
    code, each row's reconstruction averaged over its ``|O|`` codes; ``False``: each code is
    decoded by its own modality's decoder only) and add their penalty in :meth:`penalties`.
    """

    has_likelihood = False
    max_plate_nesting = 2
    cross_reconstruction = True

    # ------------------------------------------------------------------ codes
    def codes(self, batch: MultimodalBatch) -> tuple[Tensor, Tensor]:
        """``(codes, strata)``: the codes ``(M, B, D)`` of every modality (meaningless where the
        row misses it) and ``strata`` ``(M, B)``, whether row ``b`` observes modality ``m``."""
        loc, _, mask = self.experts(batch)
        return loc.transpose(0, 1), mask.transpose(0, 1)

    def strata(self, batch: MultimodalBatch) -> Tensor:
        """``(M, B)``: row ``b`` observes modality ``m``."""
        return torch.stack([batch.row_mask(m) for m in self.names])

    @staticmethod
    def row_weights(strata: Tensor) -> Tensor:
        """``(B,)`` weights ``1 / |O_b|`` averaging a row's terms over its observed codes."""
        return 1.0 / strata.sum(0).clamp(min=1).to(torch.get_default_dtype())

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """A point mass at the mean of each row's observed codes; the prior where it observes
        nothing."""
        codes, strata = self.codes(batch)
        count = strata.sum(0)
        total = torch.where(strata.unsqueeze(-1), codes, torch.zeros_like(codes)).sum(0)
        mean = total / count.clamp(min=1).unsqueeze(-1).to(total)
        return PointOrFallback(mean, count > 0, self.prior())

    def prior_draws(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``(n, D)`` of ``p(z)`` as ``loc + scale * eps`` with ``eps = torch.randn``
        (``generator``: a fixed stream, for a deterministic evaluation)."""
        eps = torch.randn(n, self.latent_dim, generator=generator, dtype=self.prior_loc.dtype,
                          device=self.prior_loc.device if generator is None else generator.device)
        return self.prior_loc + self.prior_scale * eps.to(self.prior_loc.device)

    # ------------------------------------------------------------------ model / guide
    def _term_masks(self, strata: Tensor) -> dict[str, Tensor] | None:
        if self.cross_reconstruction:
            return None
        own = torch.eye(len(self.names), dtype=torch.bool, device=strata.device)
        return {m: own[:, i].unsqueeze(-1) for i, m in enumerate(self.names)}

    def model(self, batch: MultimodalBatch) -> None:
        """Copy ``m`` of ``z`` (a code of modality ``m``) decodes every observed modality
        (cross reconstruction, weighted ``1/|O|``) or modality ``m`` alone; the prior's density
        is masked out of the objective (deterministic codes have no KL term)."""
        self._check_batch(batch)
        self._announce_params()
        strata = self.strata(batch)
        M, B = strata.shape
        weights = self.row_weights(strata).to(self.prior_loc) if self.cross_reconstruction else None
        with pyro.plate("experts", M, dim=-2), pyro.plate("batch", B, dim=-1), poutine.mask(mask=strata):
            with poutine.mask(mask=False):
                z = pyro.sample("z", self.prior())
            with poutine.scale(scale=weights) if weights is not None else nullcontext():
                self.observe(batch, z, term_masks=self._term_masks(strata), scored=strata)

    def _guide(self, batch: MultimodalBatch, training: bool) -> None:
        self._check_batch(batch)
        self._announce_params()
        codes, strata = self.codes(batch)
        M, B = strata.shape
        experts, rows = pyro.plate("experts", M, dim=-2), pyro.plate("batch", B, dim=-1)
        with experts, rows, poutine.mask(mask=strata):
            pyro.sample("z", dist.Delta(codes, event_dim=1))
        self.penalties(batch, codes, strata, training, (experts, rows))

    def guide(self, batch: MultimodalBatch) -> None:
        """``z`` = the codes (point masses, one copy per modality) and the model's penalty factors."""
        self._guide(batch, training=True)

    def penalties(self, batch: MultimodalBatch, codes: Tensor, strata: Tensor, training: bool,
                  plates: tuple[pyro.plate, pyro.plate]) -> None:
        """The model's penalty as ``pyro.factor`` sites (added to the loss), given the codes
        ``(M, B, D)``, ``strata`` ``(M, B)`` and the guide's ``(experts, batch)`` plates (to
        re-enter for per-code or per-row factors). ``training=False``: the deterministic version
        the trainer validates on (no random draws)."""

    # ------------------------------------------------------------------ objectives
    def default_loss(self) -> pyro.infer.ELBO:
        """``-ELBO`` of the point-mass guide: reconstruction plus the penalty factors, summed over
        the batch (one trace: the codes are deterministic; the gradient is exact for the stated
        objective, up to the penalty's own random draws where it has some)."""
        from ..infer import ELBO

        return ELBO(num_particles=1, analytic_kl=False, vectorize_particles=False,
                    max_plate_nesting=self.max_plate_nesting)

    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The training objective without its randomness (with :meth:`evaluation_guide`); not a
        bound on ``log p`` (these models have none)."""
        return self.default_loss()

    def evaluation_guide(self) -> Callable[[MultimodalBatch], None]:
        """The guide with the penalty's deterministic version (:meth:`penalties`, ``training=False``)."""
        return lambda batch: self._guide(batch, training=False)
