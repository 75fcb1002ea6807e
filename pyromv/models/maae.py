"""mAAE: a multimodal adversarial autoencoder (Makhzani et al. 2016; multi-view-AE's mAAE)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..data.batch import MultimodalBatch
from ..nn.layers import mlp
from .autoencoder import DeterministicAutoencoder, check_deterministic_config
from .config import ModelConfig
from .registry import register_model


@dataclass
class MAAEConfig(ModelConfig):
    """Options of :class:`MAAE`.

    Attributes
    ----------
    adversarial_weight : float
        Weight of the encoders' adversarial (generator) term against the reconstruction. The
        paper alternates a reconstruction phase and a regularisation phase with equal say, i.e. 1.
    discriminator_hidden_dims : list of int
        Hidden ReLU layers of the discriminator ``D(z)`` (an MLP to one logit); the paper's MNIST
        networks have two layers of 1000 units.
    """

    adversarial_weight: float = 1.0
    discriminator_hidden_dims: list[int] = field(default_factory=lambda: [1000, 1000])

    def validate(self) -> None:
        super().validate()
        check_deterministic_config(self, "mAAE")
        if not self.adversarial_weight >= 0:
            raise ValueError(f"mAAE adversarial_weight must be >= 0, got {self.adversarial_weight}")
        if any(int(h) < 1 for h in self.discriminator_hidden_dims):
            raise ValueError(f"mAAE discriminator_hidden_dims must be positive, got {self.discriminator_hidden_dims}")


@register_model("maae")
class MAAE(DeterministicAutoencoder):
    r"""Multimodal adversarial autoencoder: deterministic encoders, cross reconstruction and a
    discriminator between prior draws and codes (Makhzani, Shlens, Jaitly, Goodfellow & Frey,
    "Adversarial Autoencoders", ICLR workshop 2016; the multimodal form of multi-view-AE).

    Every decoder decodes every observed code; with ``D(z) = sigmoid(logit(z))`` the encoders and
    decoders minimise (non-saturating generator loss)

    .. math:: \mathcal L = \sum_b \frac1{|O_b|} \sum_{e \in O_b} \Big[\sum_{m \in O_b}
              -\log p(x_{bm} | z_{be}) - a \log D(z_{be})\Big]

    and the discriminator minimises its cross-entropy on prior draws against the (detached) codes,

    .. math:: \mathcal L_D = \sum_b \Big[-\log D(\tilde z_b) - \frac1{|O_b|} \sum_{e \in O_b}
              \log(1 - D(z_{be}))\Big], \quad \tilde z_b \sim p(z).

    The generator term reaches the encoders only (the discriminator's parameters are detached
    in it), ``L_D`` the discriminator only (the codes are detached in it). Training:

    - with :class:`~pyromv.training.Trainer`: ``L`` by the main optimiser, ``L_D`` by a second
      one (:meth:`auxiliary_parameters`, :meth:`auxiliary_loss`) in the same step, after it;
    - with :meth:`default_loss` and :meth:`guide` in a plain loop or ``pyro.infer.SVI``: the guide
      adds ``L_D`` as a factor too, so one optimiser takes simultaneous steps of both players
      (each parameter receives exactly its own player's gradient).

    Missing data (no paper has it): a row's codes and reconstructions cover what it observes;
    the generator and discriminator terms average its observed codes.
    """

    config_class = MAAEConfig
    cross_reconstruction = True

    def __init__(self, modalities, config: MAAEConfig | None = None) -> None:
        super().__init__(modalities, config)
        sizes = [self.latent_dim, *map(int, self.config.discriminator_hidden_dims), 1]
        self.discriminator = mlp(sizes, "relu")

    def logits(self, z: Tensor, detach_parameters: bool = False) -> Tensor:
        """The discriminator's logits ``logit D(z)``, shape ``z.shape[:-1]``; with
        ``detach_parameters`` no gradient reaches its parameters (the generator term)."""
        if detach_parameters:
            params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            return functional_call(self.discriminator, params, (z,)).squeeze(-1)
        return self.discriminator(z).squeeze(-1)

    def discriminator_loss(self, codes: Tensor, strata: Tensor, real: Tensor) -> Tensor:
        """``(B,)`` per-row cross-entropy: ``-log D(real_b) - (1/|O_b|) sum_e log(1 - D(z_be))``."""
        fake = F.softplus(self.logits(codes.detach()))  # -log(1 - D) = softplus(logit)
        fake = torch.where(strata, fake, torch.zeros_like(fake)).sum(0) * self.row_weights(strata).to(fake)
        return F.softplus(-self.logits(real)) + fake  # -log D = softplus(-logit)

    def penalties(self, batch: MultimodalBatch, codes: Tensor, strata: Tensor, training: bool, plates) -> None:
        """``maae_generator`` (per code, weight ``a / |O_b|``) and, when training,
        ``maae_discriminator`` (per row, on ``B`` fresh prior draws)."""
        experts, rows = plates
        weights = self.row_weights(strata).to(codes) * self.config.adversarial_weight
        with experts, rows, pyro.poutine.mask(mask=strata):
            generator = F.softplus(-self.logits(codes, detach_parameters=True)) * weights
            pyro.factor("maae_generator", generator, has_rsample=True)
        if training:
            with rows:
                real = self.prior_draws(batch.batch_size)
                pyro.factor("maae_discriminator", self.discriminator_loss(codes, strata, real), has_rsample=True)

    def generator_guide(self, batch: MultimodalBatch) -> None:
        """The guide without the discriminator's term (what the main optimiser trains)."""
        self._guide(batch, training=False)

    # ------------------------------------------------------------------ the second optimiser
    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """The discriminator's parameters: trained by the trainer's second optimiser, left out of
        the main one."""
        return list(self.discriminator.parameters())

    def auxiliary_loss(self, batch: MultimodalBatch) -> Tensor:
        """``L_D`` summed over the batch on fresh prior draws and the current codes (detached)."""
        self._check_batch(batch)
        with torch.no_grad():
            codes, strata = self.codes(batch)
        return self.discriminator_loss(codes, strata, self.prior_draws(batch.batch_size)).sum()

    def stages(self) -> list:
        """One stage: the reconstruction and generator terms (:meth:`generator_guide`); the
        discriminator trains on :meth:`auxiliary_loss` by its own optimiser."""
        from ..training.stages import Stage

        return [Stage("train", self.default_loss(), self.model, self.generator_guide)]
