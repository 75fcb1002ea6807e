"""DCCAE: per-modality autoencoders whose codes are canonically correlated (Wang et al. 2015)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import pyro
import torch
from torch import Tensor

from ..data.batch import MultimodalBatch
from .autoencoder import DeterministicAutoencoder, check_deterministic_config
from .config import ModelConfig
from .registry import register_model


def canonical_correlations(h1: Tensor, h2: Tensor, ridge: float = 0.0) -> Tensor:
    r"""The canonical correlations of two views ``h1`` ``(N, D1)``, ``h2`` ``(N, D2)``, largest first.

    With centred views and the ridge-regularised covariances
    ``S11 = H1^T H1 / N + r I``, ``S22 = H2^T H2 / N + r I``, ``S12 = H1^T H2 / N``, they are the
    singular values of ``S11^{-1/2} S12 S22^{-1/2}`` (Hotelling 1936; Andrew et al. 2013). We take
    those of ``L1^{-1} S12 L2^{-T}`` with Cholesky factors ``S = L L^T``, which are the same (the
    two matrices differ by orthogonal factors) and whose gradients stay finite when eigenvalues of
    ``S11`` or ``S22`` coincide. Differentiable.

    Raises ValueError when a covariance is singular (``ridge = 0`` with degenerate codes).
    """
    n = h1.shape[0]
    if h2.shape[0] != n or n < 2:
        raise ValueError(f"canonical correlations need the same N >= 2 rows in both views, got {n} and {h2.shape[0]}")
    h1 = h1 - h1.mean(0)
    h2 = h2 - h2.mean(0)
    s11 = h1.T @ h1 / n + ridge * torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    s22 = h2.T @ h2 / n + ridge * torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s12 = h1.T @ h2 / n
    l1, info1 = torch.linalg.cholesky_ex(s11)
    l2, info2 = torch.linalg.cholesky_ex(s22)
    if int(info1) or int(info2):
        raise ValueError(f"a view's covariance is singular on {n} rows; use a ridge r > 0")
    t = torch.linalg.solve_triangular(l1, s12, upper=False)
    t = torch.linalg.solve_triangular(l2, t.T, upper=False).T
    return torch.linalg.svdvals(t)


@dataclass
class DCCAEConfig(ModelConfig):
    """Options of :class:`DCCAE`.

    Attributes
    ----------
    reconstruction_weight : float
        The paper's ``lambda``, the weight of the reconstruction errors against the correlation
        (the loss is ``sum recon - (N / lambda) * corr``, the paper's objective times
        ``N / lambda``). The paper tunes it per task; 1 (multi-view-AE's default) weighs the two
        as the paper's formula reads with ``lambda = 1``.
    top_k : int or None
        ``k``, the canonical correlations counted per pair of modalities (the paper's ``L``,
        the dimension of the projections ``U``, ``V``); ``None``: all ``latent_dim`` of them
        (DCCA's "total correlation").
    ridge : float
        ``r``, added to the diagonal of each code covariance (the paper's ``r_x``, ``r_y``; 1e-4
        as in the DCCA code of Andrew et al. 2013 — the DCCAE paper tunes it, value not verified).
    min_pair_rows : int or None
        A pair of modalities is scored on the rows observing both only when there are at least
        this many; ``None``: ``latent_dim + 2`` (with ``N - 1 <= D`` centred rows, perfect
        canonical correlations exist whatever the codes, so fewer rows carry no signal).
    """

    reconstruction_weight: float = 1.0
    top_k: int | None = None
    ridge: float = 1e-4
    min_pair_rows: int | None = None

    def validate(self) -> None:
        super().validate()
        check_deterministic_config(self, "DCCAE")
        if not self.reconstruction_weight > 0:
            raise ValueError(f"DCCAE reconstruction_weight (lambda) must be > 0, got {self.reconstruction_weight}")
        if self.top_k is not None and not 1 <= self.top_k <= self.latent_dim:
            raise ValueError(f"DCCAE top_k must be in [1, latent_dim={self.latent_dim}] or None, got {self.top_k}")
        if not self.ridge >= 0:
            raise ValueError(f"DCCAE ridge must be >= 0, got {self.ridge}")
        if self.min_pair_rows is not None and self.min_pair_rows < 2:
            raise ValueError(f"DCCAE min_pair_rows must be >= 2 or None, got {self.min_pair_rows}")


@register_model("dccae")
class DCCAE(DeterministicAutoencoder):
    r"""Deep canonically correlated autoencoders (Wang, Arora, Livescu & Bilmes, ICML 2015, Sec. 2.3).

    Each modality has a deterministic autoencoder ``x_m -> z_m = f_m(x_m) -> p(x_m | z_m)``; the
    codes of every pair of modalities are pushed to be canonically correlated:

    .. math:: \mathcal L = \sum_b \sum_{m \in O_b} -\log p(x_{bm} | z_{bm})
              - \frac1\lambda \sum_{m < n} N_{mn} \sum_{j=1}^k \rho_j(Z_m, Z_n)

    with ``rho_j`` the ``j``-th canonical correlation of the two modalities' codes on the
    ``N_mn`` rows of the batch observing both, ridge ``r`` on the covariances
    (:func:`canonical_correlations`). For two complete modalities this is the paper's
    ``-corr + (lambda / N) sum recon`` times ``N / lambda``; the paper's constrained
    projections ``U``, ``V`` are solved in closed form inside the correlation.

    Missing data (the paper has none): a row's reconstruction covers what it observes; a pair's
    correlation uses the rows observing both and is left out of a batch with fewer than
    ``min_pair_rows`` of them. Batch statistics: the gradient is that of the batch objective
    (the paper's minibatch procedure), a biased estimate of the full-data correlation's gradient.

    Cross-generation decodes the mean of a row's observed codes (:meth:`posterior`): the
    objective does not train decoders on other modalities' codes (correlation is invariant to
    an invertible linear map of each code), so expect poor cross-generations.
    """

    config_class = DCCAEConfig
    cross_reconstruction = False

    def __init__(self, modalities, config: DCCAEConfig | None = None) -> None:
        super().__init__(modalities, config)
        if len(self.modalities) < 2:
            raise ValueError(f"DCCAE correlates pairs of modalities: it needs at least two, got {self.names}")

    @property
    def pair_rows(self) -> int:
        """Fewest rows observing both modalities for a pair's correlation to count (``min_pair_rows``, by
        default ``latent_dim + 2``: with fewer, perfect correlations exist for free)."""
        c = self.config
        return c.latent_dim + 2 if c.min_pair_rows is None else c.min_pair_rows

    def total_correlation(self, codes: Tensor, strata: Tensor) -> Tensor:
        """``sum_{m<n} N_mn sum_{j<=k} rho_j`` over the pairs with enough rows (a scalar)."""
        k = self.config.top_k or self.latent_dim
        total = codes.new_zeros(())
        for i, j in combinations(range(len(self.names)), 2):
            rows = strata[i] & strata[j]
            n = int(rows.sum())
            if n < self.pair_rows:
                continue
            # in float64: the whitening's round-off in float32 moves the gradient by ~1e-3 relative
            rho = canonical_correlations(codes[i][rows].double(), codes[j][rows].double(), self.config.ridge)
            total = total + n * rho[:k].sum().to(codes.dtype)
        return total

    def penalties(self, batch: MultimodalBatch, codes: Tensor, strata: Tensor, training: bool, plates) -> None:
        """``pyro.factor("dccae_correlation", -total_correlation / lambda)`` (deterministic)."""
        corr = self.total_correlation(codes, strata)
        pyro.factor("dccae_correlation", -corr / self.config.reconstruction_weight, has_rsample=True)
