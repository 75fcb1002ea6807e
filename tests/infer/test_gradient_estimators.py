"""Unbiasedness of the STL and DReG gradient estimators on the linear-Gaussian oracle.

The model ``z ~ N(0, I)``, ``x_m = W_m z + b_m + N(0, s_m^2 I)`` (tests/oracles/linear_gaussian.py)
with linear encoders that are deliberately inexact. For a fixed small batch we draw independent
replicates of the gradient of each bound with respect to the encoder (and decoder) parameters
and compare the estimators' means.

Design of the statistical checks
--------------------------------
* Paired draws: the three estimators (``gradient="standard" | "stl" | "dreg"``) are evaluated on
  the same particles (same seed), so ``d = g_est - g_standard`` is one draw of the difference of
  two estimators whose expectations we compare; pairing removes the shared noise.
* Blocks: one call on the batch repeated ``REPS`` times returns the sum of ``REPS`` independent
  replicates (rows are independent given the parameters); dividing by ``REPS`` gives a block
  mean. ``BLOCKS`` such calls give ``BLOCKS`` i.i.d., nearly Gaussian block means (CLT over
  ``REPS`` draws), so ``t_j = mean_j(d) / (sd_j(d) / sqrt(BLOCKS))`` is Student-t with
  ``BLOCKS - 1`` degrees of freedom under "equal expectations".
* Multiple coordinates: the null is rejected when ``max_j |t_j|`` exceeds the Bonferroni
  threshold ``t_{BLOCKS-1}^{-1}(1 - ALPHA / (2 P))`` for ``P`` coordinates, a family-wise false
  alarm probability of at most ``ALPHA = 1e-3`` (every draw is seeded, so the outcome is fixed).
* Power: the same criterion flags STL at ``K > 1``, whose bias is known (Tucker et al. 2019,
  "Doubly reparameterized gradient estimators for Monte Carlo objectives", Sec. 3), so passing
  the check is informative.

Measured (``REPS=25``, ``BLOCKS=40``, threshold 4.69 for P = 30): MVAE at ``K=10``, DReG
``max |t|`` 2.2-2.8 with 10-26% of the standard estimator's total encoder-gradient variance; STL
``max |t|`` 110-180 (biased) with about 20%. At ``K=1`` STL gives 1.8 (MVAE) and 2.3 (MMVAE).
The stratified DReG of MMVAE (Shi et al. 2019's code, ``m_dreg_looser``) is biased for ``K > 1``
on rows mixing several experts (``max |t|`` 15.8; see :func:`test_stratified_dreg_is_unbiased`).
SIWAE's DReG (normalised weights over experts and particles) is biased on rows mixing experts
too: ``max |t|`` 8.5 at ``K = 1`` with ``REPS=100`` (about 1% of the mean gradient's norm; 2% at
``K = 10``, measured with 32,000 draws), and unbiased on one-expert rows (1.9 at ``K = 10``).
"""

from __future__ import annotations

import functools
import math

import pyro
import pytest
import torch
from scipy import stats

from pyromv.data import make_batch
from pyromv.infer import IWAE, SIWAE, StratifiedELBO, StratifiedIWAE
from pyromv.models import MMVAE, MVAE, MMVAEConfig, MVAEConfig
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    mixed_row_masks,
    modalities,
    set_decoders,
    set_exact_encoders,
    set_unimodal_posterior_encoders,
)

DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT = 2
ROWS = 7  # one row of each observation pattern
REPS, BLOCKS = 25, 40
ALPHA = 1e-3
GRADIENTS = ("standard", "stl", "dreg")


pytestmark = pytest.mark.usefixtures("float64")


# ---------------------------------------------------------------------- the oracle and models
@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)




@torch.no_grad()
def _perturb(model, amount: float = 0.3, seed: int = 9) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.names:
        enc = model.encoders[m]
        w = enc.linear.weight
        w.mul_(1 + amount * torch.randn(w.shape, generator=g, dtype=w.dtype))
        bias = enc.linear.bias
        bias.add_(amount * torch.randn(bias.shape, generator=g, dtype=bias.dtype))
        enc.log_scale.add_(amount)  # experts too wide


def _mvae(exact: bool = False) -> MVAE:
    lg = _lg()
    model = MVAE(modalities(lg), MVAEConfig(latent_dim=LATENT, objective="iwae"))
    set_decoders(model, lg)
    set_exact_encoders(model, lg)
    if not exact:
        _perturb(model)
    return model


def _mmvae(exact: bool = False) -> MMVAE:
    lg = _lg()
    model = MMVAE(modalities(lg), MMVAEConfig(latent_dim=LATENT, distribution="normal"))
    set_decoders(model, lg)
    set_unimodal_posterior_encoders(model, lg)
    if not exact:
        _perturb(model)
    return model


def _masks(kind: str) -> dict[str, torch.Tensor] | None:
    if kind == "mixed":  # every observation pattern once
        return mixed_row_masks(list(DIMS), ROWS, seed=3)
    if kind == "single":  # each row observes exactly one modality
        return {m: torch.arange(ROWS) % len(DIMS) == i for i, m in enumerate(DIMS)}
    return None  # complete rows


def _batch(model, kind: str, reps: int = 1):
    lg = _lg()
    data = lg.sample(ROWS, seed=2)
    masks = _masks(kind)
    data = {m: v.repeat(reps, 1) for m, v in data.items()}
    masks = None if masks is None else {m: v.repeat(reps) for m, v in masks.items()}
    return make_batch(model.modalities, data, masks)


def _loss(model, K: int, gradient: str, bound: str = "iwae"):
    if isinstance(model, MMVAE):
        cls = {"iwae": StratifiedIWAE, "elbo": StratifiedELBO, "siwae": SIWAE}[bound]
        return cls(num_particles=K, gradient=gradient, max_plate_nesting=2)
    return IWAE(num_particles=K, gradient=gradient, max_plate_nesting=1)


def _groups(model):
    return {"encoder": list(model.encoders.parameters()),
            "decoder": list(model.decoders.parameters())}


def _flat_grad(params, scale: float) -> torch.Tensor:
    return torch.cat([
        torch.zeros(p.numel()) if p.grad is None else -p.grad.flatten() / scale for p in params
    ])


@functools.cache
def _draws(model_name: str, rows: str, K: int, bound: str = "iwae", exact: bool = False, reps: int = REPS):
    """``{gradient: {"encoder": (BLOCKS, P), "decoder": (BLOCKS, P')}}``: block means of the
    gradient of the bound (``-d loss``) over ``reps`` replicates, paired across estimators by seed."""
    model = {"mvae": _mvae, "mmvae": _mmvae}[model_name](exact)
    batch = _batch(model, rows, reps)
    groups = _groups(model)
    gradients = {"elbo": ("standard", "stl"), "siwae": ("standard", "dreg")}.get(bound, GRADIENTS)
    out = {}
    for gradient in gradients:
        loss = _loss(model, K, gradient, bound)
        loss.differentiable_loss(model.model, model.guide, batch)  # one validated run
        draws = {name: [] for name in groups}
        with pyro.validation_enabled(False):
            for r in range(BLOCKS):
                torch.manual_seed(1000 + r)
                model.zero_grad()
                loss.differentiable_loss(model.model, model.guide, batch).backward()
                for name, params in groups.items():
                    draws[name].append(_flat_grad(params, reps))
        out[gradient] = {name: torch.stack(v) for name, v in draws.items()}
    return out


def _threshold(P: int) -> float:
    """Bonferroni threshold on ``max |t|`` over ``P`` coordinates, family-wise level ``ALPHA``."""
    return float(stats.t.ppf(1 - ALPHA / (2 * P), BLOCKS - 1))


def _max_t(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max_j |mean_j(a - b)| / se_j`` of paired block means ``(BLOCKS, P)``."""
    d = a - b
    se = d.std(0) / math.sqrt(len(d))
    mean = d.mean(0)
    exact = se == 0
    assert (mean[exact] == 0).all()  # a coordinate that never differs has equal means
    return float((mean[~exact] / se[~exact]).abs().max()) if (~exact).any() else 0.0


# ---------------------------------------------------------------------- IWAE (one proposal)
@pytest.mark.parametrize("rows", ["complete", "mixed"])
def test_dreg_is_unbiased_for_iwae(rows):
    draws = _draws("mvae", rows, 10)
    std, dreg = draws["standard"]["encoder"], draws["dreg"]["encoder"]
    threshold = _threshold(std.shape[1])
    assert _max_t(dreg, std) < threshold
    # a sizable gradient, and less variance
    assert std.mean(0).abs().max() > 1.0
    assert dreg.var(0).sum() < 0.5 * std.var(0).sum()


def test_stl_is_biased_for_iwae_with_several_particles():
    """Positive control: STL drops a score term whose expectation is not zero when K > 1
    (Tucker et al. 2019), and the paired test detects it."""
    draws = _draws("mvae", "complete", 10)
    std, stl = draws["standard"]["encoder"], draws["stl"]["encoder"]
    assert _max_t(stl, std) > 2 * _threshold(std.shape[1])


@pytest.mark.parametrize("rows", ["complete", "mixed"])
def test_stl_is_unbiased_for_the_elbo(rows):
    """K = 1: the dropped term is E_q[d log q / d phi] = 0. DReG with one particle has the
    normalised weight 1, so it is the STL estimator draw for draw."""
    draws = _draws("mvae", rows, 1)
    std, stl, dreg = (draws[g]["encoder"] for g in GRADIENTS)
    assert _max_t(stl, std) < _threshold(std.shape[1])
    torch.testing.assert_close(dreg, stl, rtol=0, atol=1e-12)
    assert stl.var(0).sum() < std.var(0).sum()  # measured about 30%


@pytest.mark.parametrize("model_name,K", [("mvae", 1), ("mvae", 10), ("mmvae", 1), ("mmvae", 10)])
def test_decoder_gradients_are_identical_draw_for_draw(model_name, K):
    """STL and DReG change only how the gradient reaches the guide's parameters: on the same
    particles the decoder gradient of all three estimators is the same number."""
    draws = _draws(model_name, "complete", K)
    std = draws["standard"]["decoder"]
    assert std.abs().max() > 1.0
    for g in ("stl", "dreg"):
        torch.testing.assert_close(draws[g]["decoder"], std, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------- exact guides
def _single_draws(model, batch, K: int, gradient: str, repeats: int = 5):
    loss = _loss(model, K, gradient)
    out = []
    for r in range(repeats):
        torch.manual_seed(r)
        model.zero_grad()
        loss.differentiable_loss(model.model, model.guide, batch).backward()
        out.append(_flat_grad(model.encoders.parameters(), 1.0))
    return torch.stack(out)


@pytest.mark.parametrize(
    "model_name,rows", [("mvae", "mixed"), ("mvae", "complete"), ("mmvae", "single")]
)
@pytest.mark.parametrize("K", [1, 10])
def test_exact_guide_stl_and_dreg_encoder_gradients_vanish_every_draw(model_name, rows, K):
    """At q = p(z | X_obs), log w = log p(X_obs) for every z: the pathwise term
    d(log p(X, z) - log q(z))/dz vanishes, so STL and DReG (which keep only it) give exactly
    zero in every draw, while the standard estimator keeps the zero-mean score term.
    MVAE's PoE of linear experts is exact on every pattern; MMVAE's mixture is exact on rows
    that observe one modality (one expert, set to p(z | x_m))."""
    model = _mvae(exact=True) if model_name == "mvae" else _mmvae(exact=True)
    batch = _batch(model, rows)
    for gradient in ("stl", "dreg"):
        assert _single_draws(model, batch, K, gradient).abs().max() < 1e-9, gradient
    assert _single_draws(model, batch, K, "standard").abs().max() > 1e-2


# ---------------------------------------------------------------------- stratified bounds
def test_stratified_stl_is_unbiased_with_one_particle():
    """MMVAE's stratified bound with K = 1 (StratifiedIWAE) and K = 3 (StratifiedELBO): the score
    term STL drops is sum_e w_e E_{q_e}[d log q_mix / d phi] = E_{q_mix}[d log q_mix / d phi] = 0,
    so STL is unbiased (draws on complete rows, an inexact mixture)."""
    for K, bound in [(1, "iwae"), (3, "elbo")]:
        draws = _draws("mmvae", "complete", K, bound)
        std, stl = draws["standard"]["encoder"], draws["stl"]["encoder"]
        assert _max_t(stl, std) < _threshold(std.shape[1]), (K, bound)


def test_stratified_dreg_is_unbiased_on_single_expert_rows():
    """A row with one observed modality has a one-expert mixture: the stratified bound is the
    plain IWAE of that expert, where DReG is unbiased."""
    draws = _draws("mmvae", "single", 10)
    std, dreg = draws["standard"]["encoder"], draws["dreg"]["encoder"]
    assert std.mean(0).abs().max() > 1.0
    assert _max_t(dreg, std) < _threshold(std.shape[1])


def test_stratified_dreg_is_biased_on_rows_mixing_experts():
    """A documented limitation (see StratifiedIWAE): the paper's stratified DReG rescales the
    score of log q_mix although samples come from one expert q_e, so Tucker et al.'s identity
    does not hold and the estimator is biased for K > 1 on rows mixing several experts
    (measured: max |t| ~ 16 against the threshold 4.69, about 7% of the mean gradient's norm).
    If this starts to pass the threshold, the docs' warning is stale."""
    draws = _draws("mmvae", "complete", 10)
    std, dreg = draws["standard"]["encoder"], draws["dreg"]["encoder"]
    assert _max_t(dreg, std) > _threshold(std.shape[1])


def _paper_stratified_iwae(model, batch, eps: torch.Tensor, dreg: bool) -> torch.Tensor:
    """MMVAE's stratified IWAE (complete rows, Normal experts) written out by hand:
    ``sum_b (1/M) sum_e log (1/K) sum_k p(x_b, z_ekb) / q_mix(z_ekb | x_b)``,
    ``z = mu_e + s_e eps``.

    With ``dreg`` the surrogate of Shi et al.'s code: ``log q_mix`` rescored with detached
    parameters and ``sum_k w~_k^2 lw_k`` (weights held constant), whose gradient is
    ``sum_k w~_k^2 d lw_k / dz dz / dphi``.
    """
    lg = _lg()
    names = model.names
    locs, scales = zip(*(model.encoders[m](batch.data[m]) for m in names))
    loc, scale = torch.stack(locs), torch.stack(scales)  # (M, B, D)
    z = loc + scale * eps  # (K, M, B, D)
    q_loc, q_scale = (loc.detach(), scale.detach()) if dreg else (loc, scale)
    # log q_mix(z) = logsumexp_j log N(z; mu_j, s_j) - log M
    # (K, M_e, M_j, B): sample of expert e scored by expert j
    comp = torch.distributions.Normal(q_loc, q_scale).log_prob(z[:, :, None]).sum(-1)
    log_q = torch.logsumexp(comp, 2) - math.log(len(names))  # (K, M, B)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    for m in names:
        mean = z @ lg.W[m].T + lg.b[m]
        log_p = log_p + torch.distributions.Normal(mean, lg.s[m]).log_prob(batch.data[m]).sum(-1)
    lw = log_p - log_q
    K = eps.shape[0]
    if not dreg:
        return (torch.logsumexp(lw, 0) - math.log(K)).mean(0).sum()
    w = torch.softmax(lw.detach(), 0)
    return ((w**2) * lw).sum(0).mean(0).sum()


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_stratified_gradients_equal_the_papers_estimator_draw_for_draw(gradient):
    """Independent check of what StratifiedIWAE computes: on the same particles, its loss and
    encoder gradient equal the hand-written stratified IWAE and DReG surrogate above (so the bias
    of the stratified DReG is the estimator's, not an implementation slip)."""
    model = _mmvae()
    batch = _batch(model, "complete")
    K, M = 6, len(DIMS)
    params = list(model.encoders.parameters())
    for seed in range(3):
        torch.manual_seed(seed)
        model.zero_grad()
        loss = _loss(model, K, gradient).differentiable_loss(model.model, model.guide, batch)
        loss.backward()
        ours = _flat_grad(params, 1.0)
        torch.manual_seed(seed)  # the guide draws eps ~ N(0, I) of shape (K, M, B, D) first
        eps = torch.randn(K, M, ROWS, LATENT)
        bound = _paper_stratified_iwae(model, batch, eps, dreg=False)
        torch.testing.assert_close(-loss.detach(), bound.detach(), rtol=0, atol=1e-9)
        surrogate = _paper_stratified_iwae(model, batch, eps, dreg=gradient == "dreg")
        expected = torch.cat([g.flatten() for g in torch.autograd.grad(surrogate, params)])
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------- SIWAE
def test_siwae_dreg_is_unbiased_on_single_expert_rows():
    """One active expert: SIWAE is the IWAE of that expert and its DReG is IWAE's (unbiased)."""
    draws = _draws("mmvae", "single", 10, "siwae")
    std, dreg = draws["standard"]["encoder"], draws["dreg"]["encoder"]
    assert std.mean(0).abs().max() > 1.0
    assert _max_t(dreg, std) < _threshold(std.shape[1])


def test_siwae_dreg_is_biased_on_rows_mixing_experts():
    """A documented limitation (see SIWAE): DReG's identity needs the score of the sampling
    density q_e, but SIWAE scores samples with the mixture, whose score holds every expert's.
    Measured ``max |t|`` 8.5 against the threshold 4.69 at K = 1 (``REPS=100``), about 1% of
    the mean gradient's norm; if this starts to pass the threshold, the docs' warning is stale."""
    draws = _draws("mmvae", "complete", 1, "siwae", reps=100)
    std, dreg = draws["standard"]["encoder"], draws["dreg"]["encoder"]
    assert _max_t(dreg, std) > _threshold(std.shape[1])
    assert dreg.var(0).sum() < std.var(0).sum()  # measured 74%
