"""JNF's two stage objectives in plain torch (the flows written out layer by layer)."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import Tensor

from ...data.batch import MultimodalBatch
from ._common import experts, gaussian_kl, log_likelihood, poe


def _clamp(x: Tensor, low: float, high: float) -> Tensor:
    # the value is clamped, the gradient passes as if it were not (Pyro's affine layers)
    return x + (x.clamp(low, high) - x).detach()


def _layer(layer, u: Tensor) -> tuple[Tensor, Tensor]:
    """Density direction of one affine autoregressive layer: ``exp(s(u)) u + m(u)`` and ``sum s``."""
    mean, log_scale = layer.arn(u)
    log_scale = _clamp(log_scale, layer.log_scale_min_clip, layer.log_scale_max_clip)
    return torch.exp(log_scale) * u + mean, log_scale.sum(-1)


def _layer_inverse(layer, y: Tensor) -> Tensor:
    """Solve ``exp(s(x)) x + m(x) = y`` one coordinate at a time, in the network's order."""
    cols = [torch.zeros_like(y[..., 0]) for _ in range(y.shape[-1])]
    for i in layer.arn.permutation.tolist():
        mean, log_scale = layer.arn(torch.stack(cols, -1))
        log_scale = _clamp(log_scale[..., i], layer.log_scale_min_clip, layer.log_scale_max_clip)
        cols[i] = (y[..., i] - mean[..., i]) * torch.exp(-log_scale)
    return torch.stack(cols, -1)


def flow_log_prob(flow, loc: Tensor, scale: Tensor, z: Tensor) -> Tensor:
    """``log N(g(z); loc, scale) + log |det dg/dz|`` with ``g`` the layers in order."""
    u, total = z, torch.zeros_like(z[..., 0])
    for layer in flow:
        u, logdet = _layer(layer, u)
        total = total + logdet
    return D.Normal(loc, scale).log_prob(u).sum(-1) + total


def flow_sample(flow, loc: Tensor, scale: Tensor, K: int) -> Tensor:
    """``g^{-1}(u)``, ``u ~ N(loc, scale)`` (``K`` draws)."""
    z = D.Normal(loc, scale).rsample((K,))
    for layer in reversed(list(flow)):
        z = _layer_inverse(layer, z)
    return z


def _guide(model, batch: MultimodalBatch):
    """The draws ``z`` ``(K, B, D)`` and ``log q(z)`` of JNF's guide, in the guide's order: the
    Gaussian rows' distribution first (all rows), then each modality's flow that some row
    observing that modality alone uses."""
    K = model.config.num_particles
    loc, scale, mask = experts(model, batch)
    complete, empty = mask.all(-1), ~mask.any(-1)
    p_loc, p_scale = poe(loc, scale, mask.to(loc.dtype), model.prior_loc, model.prior_scale, False)
    p_loc = torch.where(empty.unsqueeze(-1), model.prior_loc, p_loc)
    p_scale = torch.where(empty.unsqueeze(-1), model.prior_scale, p_scale)
    j_loc, j_scale = model.joint_params(batch)
    g_loc = torch.where(complete.unsqueeze(-1), j_loc, p_loc)
    g_scale = torch.where(complete.unsqueeze(-1), j_scale, p_scale)
    z = D.Normal(g_loc, g_scale).rsample((K,))
    log_q = D.Normal(g_loc, g_scale).log_prob(z).sum(-1)
    single = (mask.sum(-1) == 1) & ~complete
    for j, m in enumerate(model.names):
        rows = single & mask[:, j]
        if not bool(rows.any()):
            continue
        zf = flow_sample(model.flows[m], loc[:, j], scale[:, j], K)
        z = torch.where(rows.unsqueeze(-1), zf, z)
        log_q = torch.where(rows, flow_log_prob(model.flows[m], loc[:, j], scale[:, j], zf), log_q)
    gaussian = not bool(single.any())
    return z, log_q, (g_loc, g_scale), gaussian, (loc, scale, mask, complete, empty)


def _kl_terms(model, z, log_q, gauss, gaussian: bool, empty: Tensor) -> Tensor:
    """``KL(q || p)`` per (particle, row): closed form where every row is Gaussian and the
    config asks for it, else ``log q(z) - log p(z)``."""
    if model.config.analytic_kl and gaussian:
        kl = gaussian_kl(*gauss, model.prior_loc, model.prior_scale).expand(z.shape[:-1])
    else:
        kl = log_q - D.Normal(model.prior_loc, model.prior_scale).log_prob(z).sum(-1)
    return torch.where(empty, torch.zeros_like(kl), kl)


def jnf_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """Stage 1 (the default loss): ``-E_q log p(X_O | z) + beta KL(q || p)`` summed over rows,
    ``q`` the joint encoder on complete rows, ``q_m`` (Gaussian + flow) on rows observing ``m``
    alone, the product of the observed Gaussian bases elsewhere (prior if none); ``K``
    particles averaged."""
    z, log_q, gauss, gaussian, (_, _, _, _, empty) = _guide(model, batch)
    recon = log_likelihood(model, batch, z)
    kl = _kl_terms(model, z, log_q, gauss, gaussian, empty)
    return -(recon - model.config.beta * kl).mean(0).sum()


def jnf_unimodal_reference_loss(model, batch: MultimodalBatch) -> Tensor:
    """Stage 2: complete rows ``-sum_m log q_m(z | x_m)`` with ``z ~ q(z | X)``; incomplete rows
    stage 1's negative ELBO; summed over rows, ``K`` particles averaged."""
    z, log_q, gauss, gaussian, (loc, scale, _, complete, empty) = _guide(model, batch)
    recon = log_likelihood(model, batch, z, scored=~complete)
    kl = _kl_terms(model, z, log_q, gauss, gaussian, empty)
    incomplete = recon - model.config.beta * kl
    lq = sum(flow_log_prob(model.flows[m], loc[:, j], scale[:, j], z) for j, m in enumerate(model.names))
    per_row = torch.where(complete, lq, incomplete)
    return -per_row.mean(0).sum()
