"""DCCAE in plain torch (canonical correlations through the textbook inverse square roots)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, log_likelihood


def _inverse_sqrt(s: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(s)
    return vectors @ torch.diag(values.rsqrt()) @ vectors.T


def _correlations(a: Tensor, b: Tensor, ridge: float) -> Tensor:
    """Canonical correlations of two views, largest first: square roots of the eigenvalues of
    ``T T^T`` with ``T = S11^{-1/2} S12 S22^{-1/2}``."""
    n = a.shape[0]
    a, b = a - a.mean(0, keepdim=True), b - b.mean(0, keepdim=True)
    eye = torch.eye(a.shape[1], dtype=a.dtype)
    t = _inverse_sqrt(a.T @ a / n + ridge * eye) @ (a.T @ b / n) @ _inverse_sqrt(b.T @ b / n + ridge * eye)
    return torch.linalg.eigvalsh(t @ t.T).clamp(min=0).sqrt().flip(0)


def dccae_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """``-sum_b sum_{m in O_b} log p(x_bm | z_bm) - (1/lambda) sum_{m<n} N_mn sum_{j<=k} rho_j``,
    pairs with fewer than ``min_pair_rows`` (default ``latent_dim + 2``) common rows left out."""
    c = model.config
    loc, _, mask = experts(model, batch)  # (B, M, D), (B, M)
    names = model.names
    recon = loc.new_zeros(())
    for i, m in enumerate(names):
        own = {n: torch.tensor(n == m) for n in names}
        recon = recon + log_likelihood(model, batch, loc[:, i], term_masks=own).sum()
    k = c.top_k or c.latent_dim
    threshold = c.latent_dim + 2 if c.min_pair_rows is None else c.min_pair_rows
    corr = loc.new_zeros(())
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            rows = mask[:, i] & mask[:, j]
            n = int(rows.sum())
            if n >= threshold:
                rho = _correlations(loc[rows, i].double(), loc[rows, j].double(), c.ridge)
                corr = corr + n * rho[:k].sum().to(loc.dtype)
    return -recon - corr / c.reconstruction_weight
