"""SIWAE (Morningstar et al., AISTATS 2021) on the linear-Gaussian oracle and against a
hand-written estimator.

The oracle: ``z ~ N(0, I)``, ``x_m = W_m z + b_m + N(0, s_m^2 I)`` (tests/oracles/linear_gaussian.py),
an MMVAE with Normal prior and experts set to the exact unimodal posteriors ``p(z | x_m)``: the
mixture ``(1/|O|) sum_m p(z | x_m)`` is *not* ``p(z | X_O)`` on rows observing several
modalities, and is exact on rows observing one.

Statistical checks and their false-alarm rates (every draw is seeded, so outcomes are fixed):
per-row means over ``R = 200`` independent replicates, their standard errors ``se``, and Gaussian
criteria (CLT over 200 draws).

* "increases with K": ``mean_{K'} - mean_K > -4 se_diff`` for consecutive ``K < K'`` on every row;
  the true difference is ``>= 0``, so each check alarms with probability ``<= P(Z < -4) = 3.2e-5``,
  at most ``7e-4`` over the 21 checks of a case (Bonferroni).
* "bound": ``log p - mean_K > -4 se`` (one-sided, probability ``<= 3.2e-5`` per row).
* "close at the largest K": ``log p - mean_64 < 4 se + 0.01``; the bias at ``K = 64`` was
  measured at ``<= 0.005`` nats (``K = 1024``: ``<= 0.003``), so the alarm probability is
  ``<= P(Z > 4) = 3.2e-5`` per row.
* Positive controls, on the same draws: SIWAE with ``K = 1``, averaged over the rows with
  several modalities, is more than ``4 se`` below ``log p`` (measured 0.15 nats, ``8 se``); the
  stratified IWAE of MMVAE at ``K = 64`` stays below ``log p`` by ``4 se`` on every such row and
  by 0.2 nats on average (measured 0.02-4.7 nats, ``>= 5 se``). So the checks can tell a bound
  that reaches ``log p`` from one that does not.

The remaining checks are exact identities (value and gradient equal draw for draw).
"""

from __future__ import annotations

import functools
import math

import pyro
import pytest
import torch

from pyromv.data import make_batch
from pyromv.distributions.fusion import StratifiedMixture
from pyromv.infer import SIWAE, StratifiedIWAE
from pyromv.models import MMVAE, MMVAEConfig, MoPoE, MoPoEConfig
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    mixed_row_masks,
    modalities,
    set_decoders,
    set_unimodal_posterior_encoders,
)

pytestmark = pytest.mark.usefixtures("float64")

DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT = 2
ROWS = 7
REPLICATES = 200
KS = (1, 4, 16, 64)


@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


def _mmvae(perturb: bool = False, **config) -> MMVAE:
    lg = _lg()
    model = MMVAE(modalities(lg), MMVAEConfig(latent_dim=LATENT, distribution="normal", **config))
    set_decoders(model, lg)
    set_unimodal_posterior_encoders(model, lg)
    if perturb:
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            for enc in model.encoders.values():
                enc.linear.weight.add_(0.3 * torch.randn(enc.linear.weight.shape, generator=g))
                enc.log_scale.add_(0.3)
    return model


def _masks(kind: str) -> dict[str, torch.Tensor] | None:
    if kind == "mixed":  # every observation pattern once
        return mixed_row_masks(list(DIMS), ROWS, seed=3)
    if kind == "single":
        return {m: torch.arange(ROWS) % len(DIMS) == i for i, m in enumerate(DIMS)}
    return None


def _data(kind: str, reps: int = 1):
    data = _lg().sample(ROWS, seed=2)
    masks = _masks(kind)
    return ({m: v.repeat(reps, 1) for m, v in data.items()},
            None if masks is None else {m: v.repeat(reps) for m, v in masks.items()})


def _batch(model, kind: str, reps: int = 1):
    return make_batch(model.modalities, *_data(kind, reps))


def _per_row(objective, model, batch) -> torch.Tensor:
    """``(REPLICATES, ROWS)`` per-datum bounds of a batch holding the rows ``REPLICATES`` times."""
    with torch.no_grad(), pyro.validation_enabled(False):
        return objective.per_datum(model.model, model.guide, batch).reshape(-1, ROWS)


# ---------------------------------------------------------------------- the oracle
@functools.cache
def _sweep(kind: str):
    model = _mmvae()
    batch = _batch(model, kind, REPLICATES)
    out = {}
    for K in KS:
        torch.manual_seed(100 + K)
        siwae = _per_row(SIWAE(K, max_plate_nesting=2), model, batch)
        torch.manual_seed(100 + K)
        stratified = _per_row(StratifiedIWAE(K, max_plate_nesting=2), model, batch)
        out[K] = siwae, stratified
    data, masks = _data(kind)
    return out, _lg().log_marginal(data, masks)


def _several(kind: str) -> torch.Tensor:
    masks = _masks(kind)
    if masks is None:
        return torch.ones(ROWS, dtype=torch.bool)
    return torch.stack([v for v in masks.values()]).sum(0) > 1


def _mean_se(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), x.std(0) / math.sqrt(x.shape[0])


@pytest.mark.parametrize("kind", ["complete", "mixed"])
def test_siwae_increases_to_the_log_marginal(kind):
    out, log_p = _sweep(kind)
    several = _several(kind)
    for K, K2 in zip(KS, KS[1:]):
        (m1, s1), (m2, s2) = _mean_se(out[K][0]), _mean_se(out[K2][0])
        diff, se = (m2 - m1)[several], (s1**2 + s2**2).sqrt()[several]
        assert (diff > -4 * se).all(), (K, K2, diff, se)
    for K in KS:
        mean, se = _mean_se(out[K][0])
        assert (log_p - mean > -4 * se - 1e-9).all(), K  # a lower bound
    # K = 1 is clearly below log p on rows mixing experts (positive control, pooled over rows) ...
    mean, se = _mean_se(out[KS[0]][0])
    gap, se = (log_p - mean)[several], se[several]
    assert gap.mean() > 4 * (se**2).sum().sqrt() / len(se)
    # ... and the gap has closed at K = 64
    mean, se = _mean_se(out[KS[-1]][0])
    assert ((log_p - mean)[several] < 4 * se[several] + 0.01).all(), log_p - mean


@pytest.mark.parametrize("kind", ["complete", "mixed"])
def test_stratified_iwae_stays_below_the_log_marginal(kind):
    """MMVAE's stratified IWAE tends to sum_e a_e log E_{q_e}[w], below log p by Jensen where
    the experts disagree: at K = 64 it is still far below, where SIWAE is not."""
    out, log_p = _sweep(kind)
    several = _several(kind)
    mean, se = _mean_se(out[KS[-1]][1])
    gap, se = (log_p - mean)[several], se[several]
    assert (gap > 4 * se).all() and gap.mean() > 0.2, (gap, se)


def test_rows_with_one_exact_expert_give_log_p_every_draw():
    """One observed modality: one active stratum whose expert is p(z | x_m), so every log-weight
    equals log p(x_m) and SIWAE (= IWAE of that expert) is exact for every K and draw."""
    model = _mmvae()
    batch = _batch(model, "single", 3)
    data, masks = _data("single")
    log_p = _lg().log_marginal(data, masks)
    for K in (1, 5):
        values = _per_row(SIWAE(K, max_plate_nesting=2), model, batch)
        torch.testing.assert_close(values, log_p.expand_as(values), rtol=0, atol=1e-9)


@pytest.mark.parametrize("K", [1, 6])
def test_siwae_is_above_the_stratified_iwae_draw_for_draw(K):
    """log sum_e a_e mean_k w_ek >= sum_e a_e log mean_k w_ek on the same particles (Jensen),
    with equality on rows with one active stratum."""
    model = _mmvae(perturb=True)
    batch = _batch(model, "mixed", 5)
    torch.manual_seed(3)
    siwae = _per_row(SIWAE(K, max_plate_nesting=2), model, batch)
    torch.manual_seed(3)
    stratified = _per_row(StratifiedIWAE(K, max_plate_nesting=2), model, batch)
    several = _several("mixed")
    assert (siwae[:, several] > stratified[:, several] + 1e-6).all()
    torch.testing.assert_close(siwae[:, ~several], stratified[:, ~several], rtol=0, atol=1e-10)


# ---------------------------------------------------------------------- the estimator by hand
def _hand_siwae(model: MMVAE, batch, eps: torch.Tensor) -> torch.Tensor:
    """``sum_b log sum_{e in O_b} (1/|O_b|) (1/K) sum_k p(X_O, z_ekb) / q(z_ekb | X_O)`` with
    ``z_ek = mu_e + s_e eps_ek`` and ``q = (1/|O_b|) sum_{j in O_b} N(mu_j, s_j)``."""
    lg = _lg()
    names = model.names
    observed = torch.stack([batch.row_mask(m) for m in names]).double()  # (M, B)
    a = observed / observed.sum(0)
    locs, scales = zip(*(model.encoders[m](batch.data[m]) for m in names))
    loc, scale = torch.stack(locs), torch.stack(scales)  # (M, B, D)
    z = loc + scale * eps  # (K, M, B, D)
    normal = torch.distributions.Normal
    comp = normal(loc, scale).log_prob(z[:, :, None]).sum(-1)  # (K, M_e, M_j, B)
    log_a = torch.where(a > 0, a, torch.ones_like(a)).log().masked_fill(a == 0, -math.inf)
    log_q = torch.logsumexp(comp + log_a, 2)  # (K, M, B)
    log_p = normal(0.0, 1.0).log_prob(z).sum(-1)
    for i, m in enumerate(names):
        mean = z @ lg.W[m].T + lg.b[m]
        log_p = log_p + observed[i] * normal(mean, lg.s[m]).log_prob(batch.data[m]).sum(-1)
    terms = torch.where(a > 0, log_p - log_q + log_a, torch.full_like(log_p, -math.inf))
    K = eps.shape[0]
    return (torch.logsumexp(terms.flatten(0, 1), 0) - math.log(K)).sum()


@pytest.mark.parametrize("kind", ["complete", "mixed"])
def test_siwae_value_and_gradient_equal_the_hand_written_estimator(kind):
    model = _mmvae(perturb=True)
    batch = _batch(model, kind)
    params = list(model.encoders.parameters())
    K, M = 5, len(DIMS)
    for seed in range(2):
        torch.manual_seed(seed)
        loss = SIWAE(K, max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch)
        ours = torch.autograd.grad(loss, params)
        torch.manual_seed(seed)  # the guide draws eps ~ N(0, I) of shape (K, M, B, D) first
        bound = _hand_siwae(model, batch, torch.randn(K, M, ROWS, LATENT))
        expected = torch.autograd.grad(-bound, params)
        torch.testing.assert_close(loss.detach(), -bound.detach(), rtol=0, atol=1e-9)
        for g, e in zip(ours, expected):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_one_active_stratum_equals_the_stratified_iwae_and_its_gradients(gradient):
    """Rows observing one modality: SIWAE is the IWAE of that expert, as is StratifiedIWAE:
    the same loss and encoder gradient draw for draw (DReG included, where it is unbiased)."""
    model = _mmvae(perturb=True)
    batch = _batch(model, "single")
    params = list(model.encoders.parameters())
    grads = {}
    for cls in (SIWAE, StratifiedIWAE):
        torch.manual_seed(4)
        loss = cls(6, gradient=gradient, max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch)
        grads[cls] = (loss.detach(), torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    torch.testing.assert_close(grads[SIWAE][0], grads[StratifiedIWAE][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[SIWAE][1], grads[StratifiedIWAE][1], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------- MoPoE and the options
def _mopoe(**config) -> MoPoE:
    torch.manual_seed(0)
    return MoPoE(modalities(_lg()), MoPoEConfig(latent_dim=LATENT, **config))


def test_rows_without_an_active_stratum_add_nothing():
    """MoPoE with subsets {a, b} and {c}: a row observing only ``a`` lies in no subset. Its SIWAE
    is 0 (as for the stratified IWAE), and loss and gradients stay finite."""
    model = _mopoe(objective="siwae", subsets=[["a", "b"], ["c"]], num_particles=3)
    data = _lg().sample(4, seed=2)
    masks = {"a": torch.tensor([1, 1, 1, 0]).bool(), "b": torch.tensor([1, 0, 0, 0]).bool(),
             "c": torch.tensor([1, 0, 1, 1]).bool()}
    batch = make_batch(model.modalities, data, masks)
    loss_fn = model.default_loss()
    assert isinstance(loss_fn, SIWAE)
    torch.manual_seed(1)
    values = loss_fn.per_datum(model.model, model.guide, batch)
    assert values[1] == 0 and torch.isfinite(values).all() and (values[[0, 2, 3]] != 0).all()
    torch.manual_seed(1)
    stratified = StratifiedIWAE(3, max_plate_nesting=2).per_datum(model.model, model.guide, batch)
    assert stratified[1] == 0
    for gradient in ("standard", "dreg"):
        model.zero_grad()
        SIWAE(3, gradient=gradient, max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch).backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (gradient, name)


def test_models_wire_the_siwae_objective():
    mmvae = _mmvae(objective="siwae", num_particles=7, beta=0.5)
    loss = mmvae.default_loss()
    assert isinstance(loss, SIWAE) and loss.num_particles == 7 and loss.beta == 0.5
    assert loss.gradient == "standard" and loss.strata_plate == "experts"
    mopoe = _mopoe(objective="siwae", num_particles=4)
    assert mopoe.stratified and isinstance(mopoe.default_loss(), SIWAE)
    batch = _batch(mopoe, "mixed")
    trace = pyro.poutine.trace(mopoe.guide).get_trace(batch)
    assert isinstance(trace.nodes["z"]["fn"], StratifiedMixture)  # scored by the mixture density
    for cls, cfg in ((MMVAEConfig, {}), (MoPoEConfig, {})):
        with pytest.raises(ValueError, match="siwae"):
            cls(latent_dim=2, objective="bogus", **cfg).validate()


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="num_particles"):
        SIWAE(num_particles=0)
    with pytest.raises(ValueError, match="gradient"):
        SIWAE(gradient="reinforce")
    with pytest.raises(ValueError, match="stl"):
        SIWAE(gradient="stl")
