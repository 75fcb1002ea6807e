"""A joint encoder ``q(z | X)`` on every modality at once, for models that pair it with unimodal
encoders (JMVAE, TELBO, JNF)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..distributions.fusion import ProductOfExperts
from ..nn.masked import masked_values
from ..nn.mlp import MLPEncoder


class JointEncoderMixin:
    """Adds ``self.joint_encoder``: an MLP on the modalities' encoder inputs, flattened and
    concatenated, giving ``(loc, scale)`` of a diagonal Gaussian ``q(z | X)``.

    The joint encoder needs every modality; models use it on complete rows and fall back to the
    product of the observed unimodal experts on the others (see JMVAE).
    """

    def _build_joint_encoder(self, hidden_dims: Sequence[int]) -> None:
        width = sum(math.prod(self.likelihoods[m].input_shape) for m in self.names)
        # mask-aware when any modality is: the joint MLP then also sees every modality's mask
        self.joint_mask_aware = any(m.mask_aware == "on" for m in self.modalities)
        factor = 2 if self.joint_mask_aware else 1
        self.joint_encoder = MLPEncoder((factor * width,), self.config.latent_dim, list(hidden_dims))

    def joint_params(self, batch: MultimodalBatch) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` ``(B, D)`` of the joint encoder (meaningful on complete rows)."""
        parts = [self.likelihoods[m].encoder_input(batch.data[m]).flatten(1) for m in self.names]
        if getattr(self, "joint_mask_aware", False):
            masks = [self.encoder_mask(m, batch).flatten(1) for m in self.names]
            parts = [masked_values(p, k)[0] for p, k in zip(parts, masks)] + [k.to(parts[0].dtype) for k in masks]
        return self.joint_encoder(torch.cat(parts, -1))

    @staticmethod
    def complete_rows(mask: Tensor) -> Tensor:
        """``(B,)``: the rows whose expert mask ``(B, M)`` observes every modality."""
        return mask.all(-1)

    def joint_or_product(
        self, batch: MultimodalBatch, experts: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The house rule of joint-encoder models with missing data: ``(loc, scale)`` ``(B, D)``
        of the joint encoder on complete rows, of the product of the observed unimodal experts
        (no prior expert) elsewhere, of the prior on rows observing nothing; and the ``(B,)``
        mask of complete rows. ``experts`` (``model.experts(batch)``) when already computed."""
        loc, scale, mask = self.experts(batch) if experts is None else experts
        complete = self.complete_rows(mask)
        poe = ProductOfExperts(*self._prior_for_empty_rows(loc, scale, mask), include_prior=False)
        j_loc, j_scale = self.joint_params(batch)
        keep = complete.unsqueeze(-1)
        return torch.where(keep, j_loc, poe.loc), torch.where(keep, j_scale, poe.scale), complete
