"""JMVAE: a joint encoder plus unimodal encoders tied by KL terms (Suzuki et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence

from ..data.batch import MultimodalBatch
from ..infer import ELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .joint import JointEncoderMixin
from .registry import register_model


@dataclass
class JMVAEConfig(ModelConfig):
    """Options of :class:`JMVAE`.

    Attributes
    ----------
    alpha : float
        Weight of ``sum_m KL(q(z | X) || q(z | x_m))`` in JMVAE-kl (the paper uses 0.01 to 1).
    joint_hidden_dims : list of int
        Hidden layers of the joint encoder, an MLP on all modalities concatenated.
    analytic_kl : bool
        Closed-form KL to the prior in the ELBO.
    """

    alpha: float = 0.1
    joint_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.alpha < 0:
            raise ValueError(f"JMVAE alpha must be >= 0, got {self.alpha}")


@register_model("jmvae")
class JMVAE(JointEncoderMixin, MultimodalVAE):
    r"""Joint multimodal VAE, JMVAE-kl (Suzuki, Nakayama & Matsuo 2016, Sec. 3.3).

    .. math:: \mathcal L(X) = \mathbb E_{q(z|X)}[\log p(X|z)] - \beta\,\mathrm{KL}(q(z|X) \| p(z))
              - \alpha \sum_m \mathrm{KL}\big(q(z|X) \| q(z|x_m)\big)

    ``q(z | X)`` is a joint encoder on all modalities; the unimodal encoders ``q(z | x_m)`` are
    trained by the KL terms to follow it and are used when modalities are missing.

    Rows with missing modalities: the joint encoder needs every modality, so a row that misses
    some uses the product of its observed unimodal experts, ``q(z | X_O) \propto \prod_{m \in O}
    q(z | x_m)`` (exactly ``q(z | x_m)`` when one modality is observed, as the paper does for
    cross-modal inference), and the ELBO of what it observes; the KL terms apply to complete
    rows only. This keeps every row's contribution a bound on ``log p(X_O)`` and lets
    incomplete data train the unimodal encoders directly. The KL terms enter the guide as
    ``pyro.factor("jmvae_kl", alpha * KL, has_rsample=True)`` (a guide factor is subtracted
    from the ELBO), so any Pyro ELBO trains the model.
    """

    config_class = JMVAEConfig

    def __init__(self, modalities, config: JMVAEConfig | None = None) -> None:
        super().__init__(modalities, config)
        self._build_joint_encoder(self.config.joint_hidden_dims)

    def _posterior_parts(self, batch: MultimodalBatch):
        loc, scale, mask = experts = self.experts(batch)
        q_loc, q_scale, complete = self.joint_or_product(batch, experts)
        j_loc, j_scale = self.joint_params(batch)
        return dist.Normal(q_loc, q_scale).to_event(1), (j_loc, j_scale), (loc, scale), complete

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """``q(z | X)`` for complete rows, the product of observed unimodal experts otherwise."""
        return self._posterior_parts(batch)[0]

    def guide(self, batch: MultimodalBatch) -> None:
        """``z ~ q(z | X)`` and the factor ``alpha * sum_m KL(q(z|X) || q(z|x_m))`` on complete rows."""
        self._check_batch(batch)
        self._announce_params()
        fused, (j_loc, j_scale), (loc, scale), complete = self._posterior_parts(batch)
        with pyro.plate("batch", batch.batch_size):
            pyro.sample("z", fused)
            if self.config.alpha > 0:
                joint = dist.Normal(j_loc.unsqueeze(-2), j_scale.unsqueeze(-2)).to_event(1)
                kl = kl_divergence(joint, dist.Normal(loc, scale).to_event(1)).sum(-1)  # (B,)
                penalty = torch.where(complete, self.config.alpha * kl, torch.zeros_like(kl))
                pyro.factor("jmvae_kl", penalty, has_rsample=True)

    def evaluation_guide(self):
        """The guide without the ``jmvae_kl`` penalty: its ELBO bounds ``log p(X_O)``."""
        return poutine.block(self.guide, hide=["jmvae_kl"])

    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=1)
