"""mWAE: a multimodal Wasserstein autoencoder with the MMD penalty (Tolstikhin et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import torch
from torch import Tensor

from ..data.batch import MultimodalBatch
from .autoencoder import DeterministicAutoencoder, check_deterministic_config
from .config import ModelConfig
from .registry import register_model

#: the fixed stream of prior draws of the deterministic (validation) penalty
EVALUATION_SEED = 0


def imq_kernel(x: Tensor, y: Tensor, constants: Tensor) -> Tensor:
    r"""``sum_C C / (C + ||x_i - y_j||^2)``, the inverse multiquadratics kernel summed over the
    constants ``C``: ``(N, D), (M, D) -> (N, M)``."""
    sq = (x.unsqueeze(-2) - y.unsqueeze(-3)).pow(2).sum(-1)
    return (constants / (constants + sq.unsqueeze(-1))).sum(-1)


def mmd_unbiased(x: Tensor, y: Tensor, constants: Tensor) -> Tensor:
    r"""The unbiased U-statistic estimate of ``MMD^2(P, Q)`` from ``x ~ P`` ``(n, D)``, ``y ~ Q``
    ``(m, D)`` with the :func:`imq_kernel` (Gretton et al., JMLR 2012, eq. 3):

    .. math:: \frac{\sum_{i \ne j} k(x_i, x_j)}{n(n-1)} + \frac{\sum_{i \ne j} k(y_i, y_j)}{m(m-1)}
              - \frac{2}{nm} \sum_{i, j} k(x_i, y_j)
    """
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points on each side, got {n} and {m}")
    kxx, kyy, kxy = imq_kernel(x, x, constants), imq_kernel(y, y, constants), imq_kernel(x, y, constants)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2.0 * kxy.mean()


@dataclass
class MWAEConfig(ModelConfig):
    """Options of :class:`MWAE`.

    Attributes
    ----------
    mmd_weight : float
        ``lambda``, the weight of the MMD penalty (the paper's WAE-MMD on MNIST: 10).
    kernel_scales : list of float
        ``s``: the kernel sums ``C / (C + ||x - y||^2)`` over ``C = 2 d s sigma^2`` (``d`` the latent
        size, ``sigma^2`` the prior variance), as the paper's code does, over these scales.
    """

    mmd_weight: float = 10.0
    kernel_scales: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0])

    def validate(self) -> None:
        super().validate()
        check_deterministic_config(self, "mWAE")
        if not self.mmd_weight >= 0:
            raise ValueError(f"mWAE mmd_weight must be >= 0, got {self.mmd_weight}")
        if not self.kernel_scales or any(not float(s) > 0 for s in self.kernel_scales):
            raise ValueError(f"mWAE kernel_scales must be a non-empty list of positive numbers, "
                             f"got {self.kernel_scales}")


@register_model("mwae")
class MWAE(DeterministicAutoencoder):
    r"""Multimodal Wasserstein autoencoder, WAE-MMD (Tolstikhin, Bousquet, Gelly & Schölkopf,
    "Wasserstein Auto-Encoders", ICLR 2018, Alg. 2), with the cross reconstruction of the
    multimodal autoencoders of multi-view-AE.

    .. math:: \mathcal L = \sum_b \frac1{|O_b|} \sum_{e \in O_b} \sum_{m \in O_b}
              -\log p(x_{bm} | z_{be}) + B \lambda\, \widehat{\mathrm{MMD}}^2(\{z_{be}\}, \{\tilde z_i\})

    the MMD (:func:`mmd_unbiased`, inverse multiquadratics kernel) between the batch's observed
    codes, pooled over modalities, and as many prior draws ``z~_i ~ p(z)``. The paper's
    per-sample objective ``mean cost + lambda MMD`` times ``B``, with ``-log p(x | z)`` as the
    cost. Critic-free (multi-view-AE's mWAE uses a weight-clipped critic instead).

    Missing data (no paper has it): a row's codes and reconstructions cover what it observes; the
    penalty pools the observed codes (none: no penalty). The training penalty draws fresh prior
    samples (an unbiased estimate of ``MMD^2`` given the codes, so the gradient is unbiased for
    the batch objective); validation uses a fixed stream of draws, so it is deterministic.
    """

    config_class = MWAEConfig
    cross_reconstruction = True

    @property
    def kernel_constants(self) -> Tensor:
        """``C = 2 d s sigma^2`` for each scale ``s`` (``sigma^2``: the prior variance)."""
        scales = torch.tensor([float(s) for s in self.config.kernel_scales], dtype=self.prior_loc.dtype,
                              device=self.prior_loc.device)
        return 2.0 * self.latent_dim * scales * float(self.config.prior_scale) ** 2

    def mmd(self, codes: Tensor, strata: Tensor, training: bool) -> Tensor | None:
        """``MMD^2`` between the observed codes and as many prior draws (None with < 2 codes)."""
        pooled = codes[strata]
        if pooled.shape[0] < 2:
            return None
        generator = None if training else torch.Generator(device=codes.device).manual_seed(EVALUATION_SEED)
        return mmd_unbiased(pooled, self.prior_draws(pooled.shape[0], generator), self.kernel_constants)

    def penalties(self, batch: MultimodalBatch, codes: Tensor, strata: Tensor, training: bool, plates) -> None:
        """``pyro.factor("mwae_mmd", B * lambda * MMD^2)``."""
        mmd = self.mmd(codes, strata, training)
        if mmd is not None:
            pyro.factor("mwae_mmd", batch.batch_size * self.config.mmd_weight * mmd, has_rsample=True)
