"""DReG for a guide latent that sits outside the strata plate (one value per row shared by
every stratum), checked against the estimator written out by hand.

Toy model (Normal, linear, float64), strata ``e`` under ``pyro.plate("experts", E, dim=-2)``::

    guide: g ~ N(U x + c, s_g)              (batch plate only: shared by every stratum)
           z_e ~ N(V_e x + d_e, s_e)        (inside the experts plate; masked where inactive)
    model: g ~ N(0, I), z_e ~ N(0, I), x ~ N(A z_e + C g + b, s_x)  (per stratum, masked alike)

With ``K`` particles ``g_k`` and ``z_ek``, ``lw_ek = log p(x, g_k, z_ek) - log q(g_k) - log q_e(z_ek)``.
For a bound whose surrogate weights are ``c_ek`` (StratifiedIWAE: ``a_e w~_ek`` with ``w~``
normalised over ``k`` in each stratum; SIWAE: ``W_ek``, normalised over ``(e, k)``), DReG's
gradient of the encoders is the path gradient ``sum_{e,k} c_ek h_ek d lw_ek / d phi`` (``h = w~``
resp. ``W``: each stratum's path weighted by its own weights) — for the shared ``g_k`` too,
which the earlier multiplicative hook (``mean_e w~_ek`` times the incoming gradient) missed.
The decoder keeps the plain gradient ``sum c_ek d lw_ek / d theta``. All checks are exact
identities on fixed draws (no statistics).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyromv.infer import SIWAE, StratifiedIWAE

pytestmark = pytest.mark.usefixtures("float64")

B, E, K, DX, DG, DZ = 5, 3, 4, 3, 2, 2
STRATA = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 0, 1], [1, 1, 0, 1, 1]], dtype=torch.bool)  # (E, B)


class Toy(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def p(*shape, s=0.5):
            return nn.Parameter(s * torch.randn(*shape, generator=g, dtype=torch.float64))

        self.U, self.c, self.log_sg = p(DG, DX), p(DG), p(DG, s=0.3)
        self.V, self.d, self.log_se = p(E, DZ, DX), p(E, 1, DZ), p(E, 1, DZ, s=0.3)
        self.A, self.C, self.b = p(DX, DZ, s=1.0), p(DX, DG, s=1.0), p(DX)
        self.log_sx = p(DX, s=0.1)
        self.x = torch.randn(B, DX, generator=g, dtype=torch.float64)

    def encoder(self) -> list[nn.Parameter]:
        return [self.U, self.c, self.log_sg, self.V, self.d, self.log_se]

    def shared_encoder(self) -> list[nn.Parameter]:
        return [self.U, self.c, self.log_sg]

    def decoder(self) -> list[nn.Parameter]:
        return [self.A, self.C, self.b, self.log_sx]

    def q_g(self):
        return self.x @ self.U.T + self.c, self.log_sg.exp()  # (B, DG)

    def q_z(self):
        return torch.einsum("edx,bx->ebd", self.V, self.x) + self.d, self.log_se.exp()  # (E, B, DZ)

    def likelihood_loc(self, z, g):
        return z @ self.A.T + g @ self.C.T + self.b

    def model(self) -> None:
        with pyro.plate("batch", B, dim=-1):
            g = pyro.sample("g", dist.Normal(0.0, 1.0).expand([DG]).to_event(1))
            with pyro.plate("experts", E, dim=-2), poutine.mask(mask=STRATA):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
                pyro.sample("x", dist.Normal(self.likelihood_loc(z, g), self.log_sx.exp()).to_event(1), obs=self.x)

    def guide(self) -> None:
        with pyro.plate("batch", B, dim=-1):
            pyro.sample("g", dist.Normal(*self.q_g()).to_event(1))
            with pyro.plate("experts", E, dim=-2), poutine.mask(mask=STRATA):
                pyro.sample("z", dist.Normal(*self.q_z()).to_event(1))


def _hand_log_weights(toy: Toy, seed: int) -> torch.Tensor:
    """``(K, E, B)`` path log-weights: the guide's densities with detached parameters, the
    samples ``g = m_g + s_g eps``, ``z = m_e + s_e eps`` live (the guide draws g's noise first)."""
    torch.manual_seed(seed)
    eps_g = torch.randn(K, 1, B, DG)
    eps_z = torch.randn(K, E, B, DZ)
    mg, sg = toy.q_g()
    mz, sz = toy.q_z()
    g, z = mg + sg * eps_g, mz + sz * eps_z
    normal = torch.distributions.Normal
    log_g = normal(0.0, 1.0).log_prob(g).sum(-1) - normal(mg.detach(), sg.detach()).log_prob(g).sum(-1)
    log_z = normal(0.0, 1.0).log_prob(z).sum(-1) + normal(
        toy.likelihood_loc(z, g), toy.log_sx.exp()).log_prob(toy.x).sum(-1)
    log_z = log_z - normal(mz.detach(), sz.detach()).log_prob(z).sum(-1)
    return log_g + log_z * STRATA  # inactive strata: their z terms are masked out


def _hand_weights(lw: torch.Tensor, bound: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, h)``: surrogate weights and the DReG factor, from detached log-weights."""
    a = STRATA / STRATA.sum(0)
    if bound == "stratified":
        w = torch.softmax(lw, 0)
        return a * w, w
    logits = (lw + a.log() - math.log(K)).flatten(0, 1)  # a_e = 0 gives -inf: left out
    w = torch.softmax(logits, 0).reshape(lw.shape)
    return w, w


def _grads(loss: torch.Tensor, params) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])


def _objective(bound: str, gradient: str):
    cls = StratifiedIWAE if bound == "stratified" else SIWAE
    return cls(num_particles=K, gradient=gradient, max_plate_nesting=2)


@pytest.mark.parametrize("bound", ["stratified", "siwae"])
@pytest.mark.parametrize("seed", [0, 1])
def test_dreg_gradient_equals_the_hand_written_formula(bound, seed):
    toy = Toy()
    torch.manual_seed(seed)
    loss = _objective(bound, "dreg").differentiable_loss(toy.model, toy.guide)
    ours_enc = _grads(loss, toy.encoder())
    torch.manual_seed(seed)
    ours_dec = _grads(_objective(bound, "dreg").differentiable_loss(toy.model, toy.guide), toy.decoder())

    lw = _hand_log_weights(toy, seed)
    c, h = _hand_weights(lw.detach(), bound)
    expected_enc = -_grads((c * h * lw).sum(), toy.encoder())
    expected_dec = -_grads((c * lw).sum(), toy.decoder())
    torch.testing.assert_close(ours_enc, expected_enc, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours_dec, expected_dec, rtol=1e-9, atol=1e-9)

    # the shared latent's gradient is not the old averaged-weights hook (positive control:
    # the check above can tell the two apart on this model)
    old_factor = h.mean(1, keepdim=True)  # mean over strata of the per-particle weights
    old_shared = -_grads((old_factor * c * lw).sum(), toy.shared_encoder())
    new_shared = expected_enc[: old_shared.numel()]
    assert (old_shared - new_shared).abs().max() > 1e3 * 1e-9 + 1e-3 * new_shared.abs().max()


@pytest.mark.parametrize("bound", ["stratified", "siwae"])
def test_dreg_correction_scales_with_the_loss(bound):
    """The correction for the shared latent is part of the loss graph: backpropagating ``3 * loss``
    gives three times the gradient (a hook replacing the gradient by a fixed tensor would not)."""
    toy = Toy()
    torch.manual_seed(5)
    g1 = _grads(_objective(bound, "dreg").differentiable_loss(toy.model, toy.guide), toy.encoder())
    torch.manual_seed(5)
    g3 = _grads(3.0 * _objective(bound, "dreg").differentiable_loss(toy.model, toy.guide), toy.encoder())
    torch.testing.assert_close(g3, 3.0 * g1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bound", ["stratified", "siwae"])
def test_dreg_value_and_decoder_gradient_equal_the_standard_estimator(bound):
    """DReG changes only the encoder's gradient: same loss value and decoder gradient as the
    standard (reparameterised) estimator on the same draws."""
    toy = Toy()
    out = {}
    for gradient in ("standard", "dreg"):
        torch.manual_seed(7)
        loss = _objective(bound, gradient).differentiable_loss(toy.model, toy.guide)
        out[gradient] = (loss.detach(), _grads(loss, toy.decoder()))
    torch.testing.assert_close(out["dreg"][0], out["standard"][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["dreg"][1], out["standard"][1], rtol=1e-10, atol=1e-10)
