"""DMVAE: a shared latent and modality-private latents (Lee & Pavlovic 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..distributions.fusion import ProductOfExperts
from ..infer import ELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model


@dataclass
class DMVAEConfig(ModelConfig):
    """Options of :class:`DMVAE`.

    Attributes
    ----------
    private_latent_dim : int
        Size of each private latent ``w_m`` (0: none, the shared latent alone). Default 1: the
        paper's MNIST private size (its SVHN one is 4) and MultiVae's default.
    unimodal_prior_expert : bool
        Fuse the prior into each unimodal term's posterior, ``q_m = PoE(p, q(z_s | x_m))``.
        Default False: the paper's code (and MultiVae) use the encoder's ``q(z_s | x_m)`` alone;
        the prior is an expert of the joint product only.
    analytic_kl : bool
        Closed-form KL terms (the paper's code computes them in closed form too).
    """

    private_latent_dim: int = 1
    unimodal_prior_expert: bool = False
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.private_latent_dim < 0:
            raise ValueError(f"private_latent_dim must be >= 0, got {self.private_latent_dim}")


@register_model("dmvae")
class DMVAE(MultimodalVAE):
    r"""Disentangled multimodal VAE with shared and private latents (Lee & Pavlovic,
    "Private-Shared Disentangled Multimodal VAE for Learning of Latent Representations",
    CVPR Workshops 2021).

    ``p(z_s) \prod_m p(w_m) p(x_m | z_s, w_m)``; guides ``q(w_m | x_m)`` and, for the shared
    latent, the joint ``q(z_s | X_O) = PoE(p, {q(z_s | x_m)}_{m \in O})`` and the unimodal
    ``q(z_s | x_m)``. The objective sums ``1 + |O|`` ELBOs per row, each reconstructing every
    observed modality with its own private latent (self- and cross-reconstruction):

    .. math:: \mathcal L = \sum_{t \in \{O\} \cup O} \Big(\mathbb E_{q_t(z_s) \prod_m q(w_m|x_m)}
              \sum_{m \in O} \log p(x_m | z_s, w_m) - \beta\,\mathrm{KL}(q_t(z_s) \| p)
              - \beta \sum_{m \in O} \mathrm{KL}(q(w_m | x_m) \| p)\Big)

    The ``1 + M`` terms are one vectorised pass: one copy of ``z_s`` and of each ``w_m`` per
    term under ``pyro.plate("experts", 1 + M)``, term ``t`` of row ``b`` scored only where the
    row observes its modality (the joint term always). The estimator is the reparameterised
    ELBO gradient of each term: unbiased for this objective. Every term bounds
    ``log p(X_O)``; the reported ELBO is the joint term alone (``beta = 1``).

    Missing modalities (the paper's weakly-paired data): a row uses the terms it can form, the
    joint one over what it observes and one per observed modality. On a row observing one
    modality ``m`` the joint guide is ``PoE(p, q(z_s | x_m))``: by default (no prior in the
    unimodal terms) a different ELBO from the unimodal one, and both are kept; with
    ``unimodal_prior_expert`` the two are the same ELBO and it counts once (the joint term is
    dropped on such rows, as MVAE's sub-sampled objective does).
    """

    config_class = DMVAEConfig
    max_plate_nesting = 2

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The joint ``q(z_s | X_O) = PoE(p, observed experts)`` (the prior for a row observing nothing)."""
        loc, scale, mask = self.experts(batch)
        return ProductOfExperts(loc, scale, mask, self.prior_loc, self.prior_scale)

    def term_posteriors(self, batch: MultimodalBatch) -> tuple[dist.TorchDistribution, Tensor]:
        """The shared latent's guide of every term, batch shape ``(1 + M, B)`` (joint first, then
        each modality's unimodal term), and the ``(1 + M, B)`` mask of the terms each row forms."""
        loc, scale, mask = self.experts(batch)  # (B, M, D), (B, M)
        joint = ProductOfExperts(loc, scale, mask, self.prior_loc, self.prior_scale)
        if self.config.unimodal_prior_expert:
            eye = torch.eye(len(self.names), dtype=torch.bool, device=loc.device)
            uni = ProductOfExperts.of_subsets(loc, scale, eye, self.prior_loc, self.prior_scale)
            u_loc, u_scale = uni.loc, uni.scale  # (M, B, D)
        else:
            u_loc, u_scale = loc.transpose(0, 1), scale.transpose(0, 1)
        q = dist.Normal(torch.cat([joint.loc.unsqueeze(0), u_loc]),
                        torch.cat([joint.scale.unsqueeze(0), u_scale])).to_event(1)
        return q, self._active(batch)

    def _active(self, batch: MultimodalBatch) -> Tensor:
        """``(1 + M, B)``: the joint term on every row (but see ``unimodal_prior_expert``), the
        unimodal term of ``m`` on the rows observing ``m``."""
        rows = torch.stack([batch.row_mask(m) for m in self.names])  # (M, B)
        joint = torch.ones_like(rows[:1])
        if self.config.unimodal_prior_expert:  # one observed modality: the joint term is its unimodal one
            joint = rows.sum(0, keepdim=True) != 1
        return torch.cat([joint, rows])

    def model(self, batch: MultimodalBatch) -> None:
        """``z_s ~ p``, ``w_m ~ p``, ``x_m ~ p(x_m | z_s, w_m)`` once per term (joint, unimodal)."""
        self.stratified_model(batch, self._active(batch))

    def guide(self, batch: MultimodalBatch) -> None:
        """``z_s ~ q_t`` of each term ``t`` and ``w_m ~ q(w_m | x_m)`` (one draw per term)."""
        self._check_batch(batch)
        self._announce_params()
        q, active = self.term_posteriors(batch)
        with pyro.plate("experts", active.shape[0], dim=-2), pyro.plate("batch", batch.batch_size, dim=-1):
            with poutine.mask(mask=active):
                pyro.sample("z", q)
                if self.private_dim:
                    self.sample_private(batch, guide=True)

    # ------------------------------------------------------------------ objectives
    def joint_model(self, batch: MultimodalBatch) -> None:
        """The model with one ``z_s`` per row: the joint term's."""
        MultimodalVAE.model(self, batch)

    def joint_guide(self, batch: MultimodalBatch) -> None:
        """``z_s ~ q(z_s | X_O)``, ``w_m ~ q(w_m | x_m)``: the joint term's guide."""
        MultimodalVAE.guide(self, batch)

    def evaluation_model(self):
        return self.joint_model

    def evaluation_guide(self):
        """The joint term's guide: its ELBO (``beta = 1``) bounds ``log p(X_O)``."""
        return self.joint_guide

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl,
                    max_plate_nesting=self.max_plate_nesting)
