"""DVCCA: deep variational CCA, a shared latent inferred from one view (Wang et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..distributions.fusion import ProductOfExperts
from ..infer import ELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model


@dataclass
class DVCCAConfig(ModelConfig):
    """Options of :class:`DVCCA`.

    Attributes
    ----------
    encoding_view : str, optional
        The view ``x_1`` whose encoder gives ``q(z | x_1)`` (default: the first modality, as
        in the paper, where the view available at test time is encoded).
    private_latent_dim : int
        Size of the private latents ``h_m`` of VCCA-private (0: plain VCCA, the default).
    poe_extension : bool
        Not in the paper (which has no missing data): encode a row that misses the encoding view
        by ``PoE(p, {q(z | x_m)}_{m \\in O})`` of its other observed views. Default True, so
        incomplete data trains out of the box; False: such a row is a ``ValueError`` and the
        other views' shared-latent encoders are not built.
    analytic_kl : bool
        Closed-form KL terms (the paper's).
    """

    encoding_view: str | None = None
    private_latent_dim: int = 0
    poe_extension: bool = True
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.private_latent_dim < 0:
            raise ValueError(f"private_latent_dim must be >= 0, got {self.private_latent_dim}")


@register_model("dvcca")
class DVCCA(MultimodalVAE):
    r"""Deep variational canonical correlation analysis, VCCA and VCCA-private (Wang, Yan,
    Lee & Livescu, "Deep Variational Canonical Correlation Analysis", arXiv:1610.03454, 2016).

    .. math:: \mathcal L = \mathbb E_{q(z | x_1) \prod_m q(h_m | x_m)} \sum_m \log p(x_m | z, h_m)
              - \beta\,\mathrm{KL}(q(z | x_1) \| p(z)) - \beta \sum_m \mathrm{KL}(q(h_m | x_m) \| p(h_m))

    The shared latent is inferred from the encoding view ``x_1`` alone; every view is
    reconstructed from it (with its private ``h_m`` in VCCA-private). The estimator is the
    reparameterised ELBO gradient: unbiased for ``L``, which bounds ``log p(X_O)``.

    Missing data (an extension; the paper has none): other views missing in a row are masked
    (exact marginalisation). A row missing ``x_1`` is encoded, with ``poe_extension``, by the
    product of the prior and its other observed views' experts ``q(z | x_m)``; a row observing
    nothing encodes to the prior.
    """

    config_class = DVCCAConfig

    def __init__(self, modalities, config: DVCCAConfig | None = None) -> None:
        super().__init__(modalities, config)
        view = self.config.encoding_view
        if view is None:
            view = self.names[0]
        elif view not in self.names:
            raise ValueError(f"encoding_view {view!r} is not a modality of the model; modalities: {self.names}")
        self.view = view
        if not self.config.poe_extension:  # only the encoding view's shared-latent encoder is used
            for m in self.names:
                if m != view:
                    del self.encoders[m]

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """``q(z | x_1)`` on rows observing the encoding view; elsewhere the extension's product
        of the prior and the observed views' experts (the prior on rows observing nothing)."""
        has_view = batch.row_mask(self.view)
        loc, scale = self.apply_encoder(self.encoders[self.view], self.view, batch)
        others = [m for m in self.names if m != self.view]
        seen = torch.stack([batch.row_mask(m) for m in others], -1) if others else None
        fallback = ~has_view if seen is None else ~has_view & seen.any(-1)
        if not self.config.poe_extension:
            if bool(fallback.any()):
                raise ValueError(
                    f"DVCCA encodes the shared latent from view {self.view!r}, which "
                    f"{int(fallback.sum())} rows that observe other views miss; set "
                    "poe_extension=True to encode them by a product of their other views' experts"
                )
            p_loc, p_scale = self.prior_loc.expand_as(loc), self.prior_scale.expand_as(scale)
        else:
            p_loc, p_scale = self._fallback(batch, others, seen)
        use = has_view.unsqueeze(-1)
        return dist.Normal(torch.where(use, loc, p_loc), torch.where(use, scale, p_scale)).to_event(1)

    def _fallback(self, batch: MultimodalBatch, others: list[str], seen: Tensor | None) -> tuple[Tensor, Tensor]:
        """``PoE(p, {q(z | x_m)}_{m \\ne 1, m \\in O})`` of every row, ``(B, D)`` each."""
        B = batch.batch_size
        if not others:
            return self.prior_loc.expand(B, -1), self.prior_scale.expand(B, -1)
        locs, scales = zip(*(self.apply_encoder(self.encoders[m], m, batch) for m in others))
        poe = ProductOfExperts(torch.stack(locs, -2), torch.stack(scales, -2), seen, self.prior_loc, self.prior_scale)
        return poe.loc, poe.scale

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl,
                    max_plate_nesting=self.max_plate_nesting)
