"""Closed forms of the linear-Gaussian multimodal model, the oracle of tests/oracles.

``z ~ N(0, I_D)``, ``x_m = W_m z + b_m + N(0, s_m^2 I)``. Every quantity here is computed from
the true parameters with plain torch (float64), independently of pyromv:

* ``log p(X_obs) = log N(x_obs; b_obs, W_obs W_obs^T + diag(s^2)_obs)`` (a Gaussian marginal,
  evaluated with ``torch.distributions.MultivariateNormal`` once per observation pattern);
* the exact posterior ``p(z | X_obs) = N(mu, Sigma)``,
  ``Sigma = (I + sum_obs W^T W / s^2)^-1``, ``mu = Sigma sum_obs W^T (x - b) / s^2``;
* the ELBO of a diagonal Gaussian ``q = N(m, diag v)`` in closed form:
  ``sum_obs [log N(x; W m + b, s^2) - (W diag(v) W^T)_jj / (2 s^2)] - KL(q || N(0, I))``.

When each ``W_m = Q_m diag(d_m)`` has orthogonal columns, ``W_m^T W_m = diag(d_m^2)`` and the
posterior of every subset of modalities is the product of the prior and the experts
``N(A_m (x_m - b_m), diag(s_m / d_m)^2)`` with ``A_m = diag(d_m^-2) W_m^T``: a PoE of linear
experts is then the exact posterior (:func:`set_exact_encoders`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pyromv.data import Modality
from pyromv.models.mvae import MVAE, MVAEConfig

DTYPE = torch.float64


def orthogonal_columns(d: int, D: int, norms: Tensor, generator: torch.Generator) -> Tensor:
    """A ``(d, D)`` matrix ``Q diag(norms)`` with orthonormal ``Q`` (needs ``d >= D``)."""
    q, r = torch.linalg.qr(torch.randn(d, D, generator=generator, dtype=DTYPE))
    q = q * torch.sign(torch.diagonal(r))  # a unique, well defined Q
    return q * norms.to(DTYPE)


@dataclass
class LinearGaussian:
    """True parameters: ``W[m]`` of shape ``(d_m, D)``, ``b[m]`` ``(d_m,)``, noise std ``s[m]``."""

    W: dict[str, Tensor]
    b: dict[str, Tensor]
    s: dict[str, float]

    @property
    def names(self) -> list[str]:
        return list(self.W)

    @property
    def latent_dim(self) -> int:
        return next(iter(self.W.values())).shape[1]

    def dim(self, name: str) -> int:
        return self.W[name].shape[0]

    @classmethod
    def random(
        cls, dims: Mapping[str, int], latent_dim: int, scales: Mapping[str, float], seed: int,
        orthogonal: bool = True, noise_features: Mapping[str, int] | None = None,
    ) -> LinearGaussian:
        """Random parameters; with ``orthogonal`` each ``W_m`` has orthogonal columns.

        ``noise_features[m]`` trailing features of modality ``m`` get a zero row of ``W_m``:
        pure noise, independent of ``z`` (so the exact posterior ignores them).
        """
        g = torch.Generator().manual_seed(seed)
        noise_features = dict(noise_features or {})
        W, b = {}, {}
        for m, d in dims.items():
            if orthogonal:
                norms = 0.5 + 1.5 * torch.rand(latent_dim, generator=g, dtype=DTYPE)
                k = noise_features.get(m, 0)
                W[m] = torch.cat([
                    orthogonal_columns(d - k, latent_dim, norms, g),
                    torch.zeros(k, latent_dim, dtype=DTYPE),
                ])
            else:
                W[m] = torch.randn(d, latent_dim, generator=g, dtype=DTYPE)
            b[m] = torch.randn(d, generator=g, dtype=DTYPE)
        return cls(W, b, {m: float(scales[m]) for m in dims})

    def sample(self, n: int, seed: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=DTYPE)
        return {
            m: z @ self.W[m].T + self.b[m]
            + self.s[m] * torch.randn(n, self.dim(m), generator=g, dtype=DTYPE)
            for m in self.names
        }

    # ------------------------------------------------------------------ masks
    def feature_masks(self, obs_mask: Mapping[str, Tensor] | None, n: int) -> dict[str, Tensor]:
        """``(n, d_m)`` boolean masks from row masks ``(n,)`` or feature masks ``(n, d_m)``."""
        out = {}
        for m in self.names:
            mask = None if obs_mask is None else obs_mask.get(m)
            if mask is None:
                mask = torch.ones(n, dtype=torch.bool)
            mask = mask.bool()
            out[m] = mask[:, None].expand(n, self.dim(m)) if mask.dim() == 1 else mask
        return out

    def _stack(self, data, obs_mask):
        x = torch.cat([data[m].to(DTYPE) for m in self.names], -1)
        n = x.shape[0]
        fm = self.feature_masks(obs_mask, n)
        mask = torch.cat([fm[m] for m in self.names], -1)
        W = torch.cat([self.W[m] for m in self.names], 0)
        b = torch.cat([self.b[m] for m in self.names], 0)
        var = torch.cat(
            [torch.full((self.dim(m),), self.s[m] ** 2, dtype=DTYPE) for m in self.names]
        )
        return x, mask, W, b, var

    # ------------------------------------------------------------------ closed forms
    def log_marginal(
        self, data: Mapping[str, Tensor], obs_mask: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """``log p(X_obs)`` of each row ``(n,)``: a multivariate normal per observation pattern."""
        x, mask, W, b, var = self._stack(data, obs_mask)
        out = torch.zeros(x.shape[0], dtype=DTYPE)
        for pattern in torch.unique(mask, dim=0):
            rows = (mask == pattern).all(-1)
            cols = pattern.nonzero().flatten()
            if cols.numel() == 0:
                continue  # nothing observed: log p = log 1 = 0
            Ws = W[cols]
            cov = Ws @ Ws.T + torch.diag(var[cols])
            mvn = torch.distributions.MultivariateNormal(b[cols], covariance_matrix=cov)
            out[rows] = mvn.log_prob(x[rows][:, cols])
        return out

    def posterior(self, data: Mapping[str, Tensor], obs_mask: Mapping[str, Tensor] | None = None):
        """Exact ``p(z | X_obs) = N(mu, Sigma)``: ``mu (n, D)`` and ``Sigma (n, D, D)``."""
        x, mask, W, b, var = self._stack(data, obs_mask)
        w = mask.to(DTYPE) / var  # observed precision of each feature, 0 where missing
        eye = torch.eye(self.latent_dim, dtype=DTYPE)
        precision = eye + torch.einsum("jk,nj,jl->nkl", W, w, W)
        sigma = torch.linalg.inv(precision)
        rhs = torch.einsum("jk,nj->nk", W, w * (x - b))
        mu = torch.einsum("nkl,nl->nk", sigma, rhs)
        return mu, sigma

    def log_lik(
        self, data: Mapping[str, Tensor], z: Tensor, obs_mask: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """``log p(X_obs | z)`` of each row (observed features only); ``z`` of shape ``(n, D)``."""
        x, mask, W, b, var = self._stack(data, obs_mask)
        lp = -0.5 * (math.log(2 * math.pi) + var.log() + (x - z.to(DTYPE) @ W.T - b) ** 2 / var)
        return (lp * mask).sum(-1)

    def elbo(
        self, data: Mapping[str, Tensor], q_loc: Tensor, q_scale: Tensor,
        obs_mask: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Closed form of ``E_q[log p(X_obs | z)] - KL(q || p(z))``, ``q = N(m, diag v)``."""
        x, mask, W, b, var = self._stack(data, obs_mask)
        m, v = q_loc.to(DTYPE), q_scale.to(DTYPE) ** 2
        resid = (x - m @ W.T - b) ** 2 + v @ (W**2).T  # E_q (x_j - (Wz + b)_j)^2
        expected = (-0.5 * (math.log(2 * math.pi) + var.log() + resid / var) * mask).sum(-1)
        kl = 0.5 * (v + m**2 - 1 - v.log()).sum(-1)
        return expected - kl


# ---------------------------------------------------------------------- pyromv models
def modalities(lg: LinearGaussian, names: Sequence[str] | None = None) -> list[Modality]:
    names = lg.names if names is None else list(names)
    return [
        Modality(m, shape=(lg.dim(m),), likelihood="normal", likelihood_kwargs={"scale": lg.s[m]},
                 encoder="linear", decoder="linear")
        for m in names
    ]


@torch.no_grad()
def set_decoders(model: MVAE, lg: LinearGaussian) -> None:
    for m in model.names:
        model.decoders[m].linear.weight.copy_(lg.W[m])
        model.decoders[m].linear.bias.copy_(lg.b[m])


@torch.no_grad()
def set_exact_encoders(model: MVAE, lg: LinearGaussian) -> None:
    """Experts ``N(A_m (x_m - b_m), diag(s_m / d_m)^2)``, exact when ``W_m^T W_m = diag(d_m^2)``."""
    for m in model.names:
        W = lg.W[m]
        d2 = (W**2).sum(0)  # diag(W^T W) = d_m^2
        gram = W.T @ W
        assert torch.allclose(gram, torch.diag(d2), atol=1e-12), "W_m needs orthogonal columns"
        A = W.T / d2[:, None]
        enc = model.encoders[m]
        enc.linear.weight.copy_(A)
        enc.linear.bias.copy_(-A @ lg.b[m])
        enc.log_scale.copy_(0.5 * (lg.s[m] ** 2 / d2).log())


@torch.no_grad()
def set_unimodal_posterior_encoders(model, lg: LinearGaussian) -> None:
    """Experts ``q_m(z | x_m) = p(z | x_m) = N(S W^T (x - b) / s^2, S)``,
    ``S = (I + W^T W / s^2)^-1`` (diagonal, since ``W_m`` has orthogonal columns): exact
    unimodal posteriors *without* a prior expert (MMVAE's and JMVAE's experts)."""
    latent = model.latent_dim
    for m in model.names:
        W, s2 = lg.W[m], lg.s[m] ** 2
        S = torch.linalg.inv(torch.eye(latent, dtype=W.dtype) + W.T @ W / s2)
        A = S @ W.T / s2
        enc = model.encoders[m]
        enc.linear.weight.copy_(A)
        enc.linear.bias.copy_(-A @ lg.b[m])
        enc.log_scale.copy_(0.5 * torch.diagonal(S).log())


def build_mvae(
    lg: LinearGaussian, names: Sequence[str] | None = None, exact_guide: bool = True, **config,
) -> MVAE:
    """An MVAE with linear networks holding the true decoder weights (and the exact encoders)."""
    config.setdefault("latent_dim", lg.latent_dim)
    model = MVAE(modalities(lg, names), MVAEConfig(**config))
    set_decoders(model, lg)
    if exact_guide:
        set_exact_encoders(model, lg)
    return model


def subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``."""
    out = []
    for mask in range(1, 2 ** len(names)):
        out.append(tuple(n for i, n in enumerate(names) if mask >> i & 1))
    return out


def mixed_row_masks(names: Sequence[str], n: int, seed: int) -> dict[str, Tensor]:
    """Row masks drawn from every non-empty subset, each ~n / (2^M - 1) times."""
    subs = subsets(names)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g) % len(subs)
    return {m: torch.tensor([m in subs[int(i)] for i in pick]) for m in names}
