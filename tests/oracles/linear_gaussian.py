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

    @classmethod
    def axis_aligned(
        cls, dims: Mapping[str, int], latent_dim: int, scales: Mapping[str, float], seed: int,
        loadings: tuple[float, float] = (0.7, 1.5),
    ) -> LinearGaussian:
        """Random parameters where feature ``j`` loads only latent ``j mod D`` (a loading of
        random sign, magnitude uniform in ``loadings``): ``W^T diag(m) W`` is diagonal for every
        feature mask ``m``, so the exact posterior of every observation pattern has a diagonal
        covariance and natural parameters linear in the mask (a diagonal Gaussian can be exact)."""
        g = torch.Generator().manual_seed(seed)
        W, b = {}, {}
        for m, d in dims.items():
            lo, hi = loadings
            size = lo + (hi - lo) * torch.rand(d, generator=g, dtype=DTYPE)
            sign = torch.where(torch.rand(d, generator=g, dtype=DTYPE) < 0.5, -1.0, 1.0).to(DTYPE)
            W[m] = torch.zeros(d, latent_dim, dtype=DTYPE)
            W[m][torch.arange(d), torch.arange(d) % latent_dim] = sign * size
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


def masked_expert_coefficients(lg: LinearGaussian, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per-feature coefficients ``(alpha, beta, gamma)``, each ``(d_m, D)``, of the exact expert of
    modality ``name`` under a feature mask ``m``: ``eta = sum_j m_j (alpha_j x_j + beta_j)``,
    ``lambda = sum_j m_j gamma_j``, i.e. ``alpha = W / s^2``, ``beta = -W b / s^2``,
    ``gamma = W^2 / s^2`` (exact when ``W^T diag(m) W`` is diagonal: axis-aligned loadings or D = 1)."""
    W, b, s2 = lg.W[name], lg.b[name], lg.s[name] ** 2
    return W / s2, -W * b[:, None] / s2, W**2 / s2


@torch.no_grad()
def set_exact_mask_aware_encoders(model, lg: LinearGaussian) -> None:
    """Hand-set mask-aware encoders to the exact experts of :func:`masked_expert_coefficients`.

    Two kinds are supported: the ``linear`` encoder with ``head="natural"`` wrapped in
    :class:`~pyromv.nn.MaskConcat` (input ``(x * m, m)``; ``eta = [alpha^T | beta^T] (x m, m)``,
    ``lambda = [0 | gamma^T] (x m, m)``), and the ``set`` encoder with ``embed_dim = 3 D``,
    ``feature_hidden_dims = ()``, ``feature_dim = 2 D``, ``hidden_dims = ()``, ``head="natural"``
    (embedding ``e_j = [alpha_j, beta_j, gamma_j]``; ``h([x e, e]) = [x alpha + beta, gamma]``).
    """
    from pyromv.nn import MaskConcat, SetEncoder

    D = lg.latent_dim
    eye = torch.eye(D, dtype=DTYPE)
    for m in model.names:
        alpha, beta, gamma = masked_expert_coefficients(lg, m)
        enc = model.encoders[m]
        if isinstance(enc, MaskConcat):
            head = enc.net.natural.linear
            zeros = torch.zeros_like(alpha.T)
            head.weight.copy_(torch.cat([torch.cat([alpha.T, beta.T], 1), torch.cat([zeros, gamma.T], 1)], 0))
            head.bias.zero_()
        elif isinstance(enc, SetEncoder):
            assert enc.embedding.shape[1] == 3 * D and len(enc.feature_net) == 1 and len(enc.body) == 0
            enc.embedding.copy_(torch.cat([alpha, beta, gamma], 1))
            first = enc.feature_net[0]  # Linear(6D -> 2D) on [x e_j (3D), e_j (3D)]
            first.weight.zero_()
            first.weight[:D, :D] = eye  # x alpha_j
            first.weight[:D, 4 * D:5 * D] = eye  # + beta_j
            first.weight[D:, 5 * D:] = eye  # gamma_j
            first.bias.zero_()
            enc.head.linear.weight.copy_(torch.eye(2 * D, dtype=DTYPE))
            enc.head.linear.bias.zero_()
        else:
            raise TypeError(f"no exact mask-aware setting for a {type(enc).__name__}")


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


# ---------------------------------------------------------------------- private latents
@dataclass
class PrivateLinearGaussian:
    """The linear-Gaussian model with modality-private latents:

    ``z ~ N(0, I_D)``, ``w_m ~ N(0, I_P)``, ``x_m = W_m z + V_m w_m + b_m + N(0, s_m^2 I)``.

    Closed forms (plain torch, float64, independent of pyromv): the marginal of the stacked
    observed features is ``N(b_O, W_O W_O^T + blockdiag_m(V_m V_m^T + s_m^2 I)_O)``, so
    ``log p(X_O)`` is one multivariate normal per observation pattern and
    ``log p(X_T | X_S) = log p(X_{S u T}) - log p(X_S)``. The posterior of all latents
    ``u = (z, w_1, ..., w_M)`` is Gaussian with precision ``I + sum_obs G_j^T G_j / s_j^2``
    (``G_j`` the row of ``[W | blockdiag V]`` of feature ``j``).

    With :meth:`random`'s default ``orthogonal=True`` the columns of ``[W_m | V_m]`` are
    orthogonal, so ``W_m^T W_m``, ``V_m^T V_m`` are diagonal and ``V_m^T W_m = 0``: the
    likelihood splits into a ``z`` part and a ``w_m`` part, ``p(z, w | X_O) = p(z | X_O)
    prod_{m in O} p(w_m | x_m) prod_{m not in O} p(w_m)``, and linear encoders with a fixed
    diagonal scale can hold the exact factors (:func:`set_private_encoders`).
    """

    W: dict[str, Tensor]
    V: dict[str, Tensor]
    b: dict[str, Tensor]
    s: dict[str, float]

    @property
    def names(self) -> list[str]:
        return list(self.W)

    @property
    def latent_dim(self) -> int:
        return next(iter(self.W.values())).shape[1]

    @property
    def private_dim(self) -> int:
        return next(iter(self.V.values())).shape[1]

    def dim(self, name: str) -> int:
        return self.W[name].shape[0]

    @classmethod
    def random(
        cls, dims: Mapping[str, int], latent_dim: int, private_dim: int, scales: Mapping[str, float],
        seed: int, shared_norms: tuple[float, float] | Mapping[str, tuple[float, float]] = (0.5, 2.0),
        private_norms: tuple[float, float] | Mapping[str, tuple[float, float]] = (0.5, 2.0),
        orthogonal: bool = True,
    ) -> PrivateLinearGaussian:
        """Random parameters; column norms of ``W_m`` (``V_m``) uniform in ``shared_norms``
        (``private_norms``), one range for all modalities or one per modality. With
        ``orthogonal`` (needs ``d_m >= D + P``) the columns of ``[W_m | V_m]`` are orthogonal."""
        g = torch.Generator().manual_seed(seed)
        D, P = latent_dim, private_dim
        W, V, b = {}, {}, {}
        for m, d in dims.items():
            lo, hi = shared_norms if isinstance(shared_norms, tuple) else shared_norms[m]
            norms_w = lo + (hi - lo) * torch.rand(D, generator=g, dtype=DTYPE)
            lo, hi = private_norms if isinstance(private_norms, tuple) else private_norms[m]
            norms_v = lo + (hi - lo) * torch.rand(P, generator=g, dtype=DTYPE)
            if orthogonal:
                if d < D + P:
                    raise ValueError(f"modality {m!r}: orthogonal columns need d_m >= D + P = {D + P}, got {d}")
                cols = orthogonal_columns(d, D + P, torch.cat([norms_w, norms_v]), g)
                W[m], V[m] = cols[:, :D], cols[:, D:]
            else:
                W[m] = torch.randn(d, D, generator=g, dtype=DTYPE) * norms_w / math.sqrt(d)
                V[m] = torch.randn(d, P, generator=g, dtype=DTYPE) * norms_v / math.sqrt(d)
            b[m] = torch.randn(d, generator=g, dtype=DTYPE)
        return cls(W, V, b, {m: float(scales[m]) for m in dims})

    def sample(self, n: int, seed: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=DTYPE)
        out = {}
        for m in self.names:
            w = torch.randn(n, self.private_dim, generator=g, dtype=DTYPE)
            noise = self.s[m] * torch.randn(n, self.dim(m), generator=g, dtype=DTYPE)
            out[m] = z @ self.W[m].T + w @ self.V[m].T + self.b[m] + noise
        return out

    # ------------------------------------------------------------------ stacked parameters
    def feature_masks(self, obs_mask: Mapping[str, Tensor] | None, n: int) -> dict[str, Tensor]:
        """``(n, d_m)`` boolean masks from row masks ``(n,)`` or feature masks ``(n, d_m)``."""
        return LinearGaussian.feature_masks(self, obs_mask, n)  # type: ignore[arg-type]

    def loading(self) -> Tensor:
        """``G = [W | blockdiag V]`` of shape ``(sum d_m, D + M P)``: ``x = G u + b + noise``."""
        P, M = self.private_dim, len(self.names)
        rows = []
        for i, m in enumerate(self.names):
            priv = torch.zeros(self.dim(m), M * P, dtype=DTYPE)
            priv[:, i * P:(i + 1) * P] = self.V[m]
            rows.append(torch.cat([self.W[m], priv], -1))
        return torch.cat(rows, 0)

    def _stack(self, data, obs_mask):
        x = torch.cat([data[m].to(DTYPE) for m in self.names], -1)
        fm = self.feature_masks(obs_mask, x.shape[0])
        mask = torch.cat([fm[m] for m in self.names], -1)
        b = torch.cat([self.b[m] for m in self.names], 0)
        var = torch.cat([torch.full((self.dim(m),), self.s[m] ** 2, dtype=DTYPE) for m in self.names])
        return x, mask, self.loading(), b, var

    # ------------------------------------------------------------------ closed forms
    def log_marginal(
        self, data: Mapping[str, Tensor], obs_mask: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """``log p(X_obs)`` of each row ``(n,)``: a multivariate normal per observation pattern
        (0 for a row observing nothing)."""
        x, mask, G, b, var = self._stack(data, obs_mask)
        cov_all = G @ G.T + torch.diag(var)
        out = torch.zeros(x.shape[0], dtype=DTYPE)
        for pattern in torch.unique(mask, dim=0):
            rows = (mask == pattern).all(-1)
            cols = pattern.nonzero().flatten()
            if cols.numel() == 0:
                continue
            mvn = torch.distributions.MultivariateNormal(b[cols], covariance_matrix=cov_all[cols][:, cols])
            out[rows] = mvn.log_prob(x[rows][:, cols])
        return out

    def log_conditional(
        self, data: Mapping[str, Tensor], given: Sequence[str], targets: Sequence[str],
        obs_mask: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """``log p(X_T | X_S) = log p(X_{S u T}) - log p(X_S)`` of each row (observed entries only)."""
        n = next(iter(data.values())).shape[0]
        fm = self.feature_masks(obs_mask, n)
        none = torch.zeros(n, dtype=torch.bool)
        both = {m: fm[m] if m in given or m in targets else none for m in self.names}
        cond = {m: fm[m] if m in given else none for m in self.names}
        return self.log_marginal(data, both) - self.log_marginal(data, cond)

    def posterior(self, data: Mapping[str, Tensor], obs_mask: Mapping[str, Tensor] | None = None):
        """Exact ``p(u | X_obs) = N(mu, Sigma)`` of ``u = (z, w_1, ..., w_M)``: ``(n, D + M P)``
        and ``(n, D + M P, D + M P)``."""
        x, mask, G, b, var = self._stack(data, obs_mask)
        w = mask.to(DTYPE) / var
        precision = torch.eye(G.shape[1], dtype=DTYPE) + torch.einsum("jk,nj,jl->nkl", G, w, G)
        sigma = torch.linalg.inv(precision)
        mu = torch.einsum("nkl,nl->nk", sigma, torch.einsum("jk,nj->nk", G, w * (x - b)))
        return mu, sigma

    def log_joint(
        self, data: Mapping[str, Tensor], u: Tensor, obs_mask: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """``log p(X_obs, u)`` of each row for latents ``u`` ``(n, D + M P)``."""
        x, mask, G, b, var = self._stack(data, obs_mask)
        lp = -0.5 * (math.log(2 * math.pi) + var.log() + (x - u.to(DTYPE) @ G.T - b) ** 2 / var)
        prior = -0.5 * (math.log(2 * math.pi) + u.to(DTYPE) ** 2).sum(-1)
        return (lp * mask).sum(-1) + prior

    def conditional_log_rho(
        self, data: Mapping[str, Tensor], given: Sequence[str], targets: Sequence[str],
        obs_mask: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        r"""``log rho`` per row, ``rho = E[p(X_T | z, w_T)^2] / p(X_T | X_S)^2`` under
        ``z ~ p(z | X_S)``, ``w_T ~ p(w_T)`` (the targets' private latents from the prior):
        the relative second moment of the importance weights of a conditional estimate whose
        proposal is exact for ``z`` and ``w_S``. Gaussian integrals: with ``x_T = H v + b_T +
        eps``, ``v = (z, w_T) ~ N(mu, C)``,
        ``E[N(x_T; H v + b_T, s^2)^2] = prod_j (4 pi s_j^2)^{-1/2} N(x_T; H mu + b_T, H C H^T + s^2 / 2)``.
        """
        n = next(iter(data.values())).shape[0]
        D, P = self.latent_dim, self.private_dim
        fm = self.feature_masks(obs_mask, n)
        none = torch.zeros(n, dtype=torch.bool)
        mu_u, sigma_u = self.posterior(data, {m: fm[m] if m in given else none for m in self.names})
        mu_z, sigma_z = mu_u[:, :D], sigma_u[:, :D, :D]
        T = [m for m in self.names if m in targets]
        x = torch.cat([data[m].to(DTYPE) for m in T], -1)
        mask = torch.cat([fm[m] for m in T], -1)
        b = torch.cat([self.b[m] for m in T])
        var = torch.cat([torch.full((self.dim(m),), self.s[m] ** 2, dtype=DTYPE) for m in T])
        H = torch.zeros(x.shape[1], D + len(T) * P, dtype=DTYPE)
        start = 0
        for i, m in enumerate(T):
            H[start:start + self.dim(m), :D] = self.W[m]
            H[start:start + self.dim(m), D + i * P:D + (i + 1) * P] = self.V[m]
            start += self.dim(m)
        C = torch.zeros(n, H.shape[1], H.shape[1], dtype=DTYPE)
        C[:, :D, :D] = sigma_z
        C[:, D:, D:] = torch.eye(len(T) * P, dtype=DTYPE)
        mean = mu_z @ H[:, :D].T + b
        cov = H @ C @ H.T
        out = torch.zeros(n, dtype=DTYPE)
        for pattern in torch.unique(mask, dim=0):
            rows = (mask == pattern).all(-1)
            cols = pattern.nonzero().flatten()
            if cols.numel() == 0:
                continue
            c = cov[rows][:, cols][:, :, cols]
            v = var[cols]
            xr, mr = x[rows][:, cols], mean[rows][:, cols]
            second = torch.distributions.MultivariateNormal(mr, c + torch.diag(v / 2)).log_prob(xr)
            second = second - 0.5 * torch.log(4 * math.pi * v).sum()
            first = torch.distributions.MultivariateNormal(mr, c + torch.diag(v)).log_prob(xr)
            out[rows] = second - 2 * first
        return out


def private_modalities(plg: PrivateLinearGaussian) -> list[Modality]:
    return [
        Modality(m, shape=(plg.dim(m),), likelihood="normal", likelihood_kwargs={"scale": plg.s[m]},
                 encoder="linear", decoder="linear")
        for m in plg.names
    ]


@torch.no_grad()
def set_private_decoders(model, plg: PrivateLinearGaussian) -> None:
    """Linear decoders of ``[z, w_m]`` (the order of ``MultimodalVAE._decoder_input``) holding
    ``[W_m | V_m]`` and ``b_m``."""
    for m in model.names:
        model.decoders[m].linear.weight.copy_(torch.cat([plg.W[m], plg.V[m]], -1))
        model.decoders[m].linear.bias.copy_(plg.b[m])


@torch.no_grad()
def set_private_encoders(model, plg: PrivateLinearGaussian, shared: str | Mapping[str, str] = "poe") -> None:
    """Exact factors of the posterior (needs orthogonal columns of ``[W_m | V_m]``).

    Private encoders: ``q(w_m | x_m) = p(w_m | x_m) = N(S V^T (x - b) / s^2, S)``,
    ``S = (I + V^T V / s^2)^-1``. Shared experts, per modality (``shared`` a mode or a
    ``name -> mode`` mapping): ``"poe"`` the normalised likelihood ``N(A (x - b), diag(s^2 / d^2))``,
    ``A = diag(d^-2) W^T``, so that the prior times the experts of ``X_O`` is ``p(z | X_O)``;
    ``"posterior"`` the unimodal posterior ``p(z | x_m) = N(S W^T (x - b) / s^2, S)``,
    ``S = (I + W^T W / s^2)^-1`` (experts used without a prior expert).
    """
    for m in model.names:
        W, V, b, s2 = plg.W[m], plg.V[m], plg.b[m], plg.s[m] ** 2
        for M, name in ((W, "W"), (V, "V")):
            gram = M.T @ M
            diagonal = torch.allclose(gram, torch.diag(torch.diagonal(gram)), atol=1e-10)
            assert diagonal, f"{name}_{m} needs orthogonal columns"
        assert torch.allclose(V.T @ W, torch.zeros(V.shape[1], W.shape[1], dtype=DTYPE), atol=1e-10)
        mode = shared if isinstance(shared, str) else shared[m]
        d2 = (W**2).sum(0)
        if mode == "poe":
            A, var = W.T / d2[:, None], s2 / d2
        elif mode == "posterior":
            var = 1 / (1 + d2 / s2)
            A = var[:, None] * W.T / s2
        else:
            raise ValueError(f"shared expert mode must be 'poe' or 'posterior', got {mode!r}")
        enc = model.encoders[m]
        enc.linear.weight.copy_(A)
        enc.linear.bias.copy_(-A @ b)
        enc.log_scale.copy_(0.5 * var.log())
        e2 = (V**2).sum(0)
        var_w = 1 / (1 + e2 / s2)
        B = var_w[:, None] * V.T / s2
        penc = model.private_encoders[m]
        penc.linear.weight.copy_(B)
        penc.linear.bias.copy_(-B @ b)
        penc.log_scale.copy_(0.5 * var_w.log())
