"""Each fusion's bounds against the closed forms of the linear-Gaussian model.

With linear decoders holding the true ``W_m, b_m`` and a Normal likelihood of the true scale,
every model here (MVAE, JMVAE, MMVAE with ``distribution="normal"``, MoPoE) *is* the
linear-Gaussian model ``z ~ N(0, I)``, ``x_m = W_m z + b_m + N(0, s_m^2 I)``, whatever its guide,
so ``log p(X_O)`` is known in closed form (tests/oracles/linear_gaussian.py), rows with missing
modalities included. Each model's own bound classes are checked per datum (means over rows with
their standard errors; rows are independent):

* ELBO <= IWAE_1 (equal in expectation, except MoPoE's per-subset ELBO, which is lower) and
  IWAE_1 < IWAE_10 < IWAE_100 < IWAE_1000 <= log p(X_O);
* each bound's value against an independent computation from the oracle (closed-form ELBOs of
  Gaussian guides; a hand-written importance sampler for the others);
* the limit of IWAE_K. For one proposal (MVAE, JMVAE) it is ``log p``. For the *stratified* bound
  of the mixtures (MMVAE, MoPoE; Shi et al. 2019, eq. 4) each stratum ``e`` is an IWAE whose
  samples come from ``q_e`` but are weighted by the mixture ``q``, so it tends to
  ``log E_{q_e}[p(X, z) / q(z)] = log p(X) + log E_{p(z|X)}[q_e(z) / q(z)]``, and

  .. math:: L_\\infty = \\log p(X) + \\sum_e w_e \\log E_{p(z|X)}[q_e(z) / q(z)] \\le \\log p(X)

  (Jensen, as ``sum_e w_e q_e / q = 1``), with equality only where the experts agree on the
  posterior's support; rows observing one modality (one expert) reach ``log p``. The tests check
  that IWAE_1000 is within its delta-method bias of ``L_inf`` and that ``L_inf`` is clearly
  below ``log p`` on rows mixing several experts: the stratified IWAE does *not* converge to
  ``log p`` (Shi et al.'s code calls this estimator "looser").

Bias of IWAE_K (delta method): ``E[log p_hat_K] ~ log E[w] - Var(w) / (2 K E[w]^2)``, estimated
from the normalised weights of K = 1000 hand-drawn particles.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from pyromv.data import make_batch
from pyromv.infer import ELBO, IWAE, StratifiedELBO, StratifiedIWAE
from pyromv.infer.importance import log_weights_from_traces, strata_weights, trace_pair
from pyromv.models import (
    JMVAE,
    MMVAE,
    MVAE,
    JMVAEConfig,
    MMVAEConfig,
    MoPoE,
    MoPoEConfig,
    MVAEConfig,
)
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
N = 70  # 10 rows of each of the 7 observation patterns
EXACT = 1e-9
MIXTURES = ("mmvae", "mopoe")
MODELS = ("mvae", "jmvae", "mmvae", "mopoe")


@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


def _data(n: int = N):
    lg = _lg()
    return lg.sample(n, seed=2), mixed_row_masks(lg.names, n, seed=3)


def _nobs(masks) -> torch.Tensor:
    return sum(v.long() for v in masks.values())


# ---------------------------------------------------------------------- encoders of known quality


@torch.no_grad()
def _joint_exact(model: JMVAE, lg: LinearGaussian) -> None:
    """JMVAE's joint MLP encoder (one hidden layer of 2 x 9 ReLUs) set to ``p(z | X)``:
    ``h = [relu(x), relu(-x)]`` so ``x = h_+ - h_-``; loc ``= S W^T diag(s^-2) (x - b)``, scale
    ``= sqrt(diag S)`` (``S = (I + W^T diag(s^-2) W)^-1`` diagonal: orthogonal ``W_m``)."""
    enc = model.joint_encoder
    W = torch.cat([lg.W[m] for m in model.names])
    b = torch.cat([lg.b[m] for m in model.names])
    prec = torch.cat([torch.full((lg.dim(m),), lg.s[m] ** -2) for m in model.names])
    S = torch.linalg.inv(torch.eye(LATENT) + W.T @ (prec[:, None] * W))
    M = S @ W.T * prec
    width = W.shape[0]
    first, head = enc.body[0], enc.head
    first.weight.copy_(torch.cat([torch.eye(width), -torch.eye(width)]))
    first.bias.zero_()
    head.linear.weight.zero_()
    head.linear.weight[:LATENT].copy_(torch.cat([M, -M], 1))
    head.linear.bias[:LATENT].copy_(-M @ b)
    head.linear.bias[LATENT:].copy_(torch.expm1(torch.diagonal(S).sqrt() - head.min_scale).log())


@torch.no_grad()
def _perturb(model, amount: float = 0.3, seed: int = 9) -> None:
    """Inexact guides: every encoder's weights shaken, its scales widened."""
    g = torch.Generator().manual_seed(seed)
    for m in model.names:
        enc = model.encoders[m]
        enc.linear.weight.mul_(1 + amount * torch.randn(enc.linear.weight.shape, generator=g))
        enc.log_scale.add_(amount)
    if isinstance(model, JMVAE):
        head = model.joint_encoder.head.linear
        head.weight[:LATENT].mul_(1 + amount * torch.randn(head.weight[:LATENT].shape, generator=g))
        head.bias[LATENT:].add_(2 * amount)


def _build(name: str, exact: bool = False, **config):
    """The model with the true decoders and near-exact encoders (exact when ``exact``)."""
    lg = _lg()
    mods = modalities(lg)
    if name == "mvae":
        model = MVAE(mods, MVAEConfig(latent_dim=LATENT, objective="iwae", **config))
        set_exact_encoders(model, lg)  # PoE with the prior: the exact posterior of every subset
    elif name == "jmvae":
        width = sum(DIMS.values())
        cfg = {"alpha": 0.0, "joint_hidden_dims": [2 * width], **config}
        model = JMVAE(mods, JMVAEConfig(latent_dim=LATENT, **cfg))
        _joint_exact(model, lg)
        set_unimodal_posterior_encoders(model, lg)
    elif name == "mmvae":
        model = MMVAE(mods, MMVAEConfig(latent_dim=LATENT, distribution="normal", **config))
        set_unimodal_posterior_encoders(model, lg)
    elif name == "mopoe":
        cfg = {"objective": "iwae", "prior_expert": True, **config}
        model = MoPoE(mods, MoPoEConfig(latent_dim=LATENT, **cfg))
        set_exact_encoders(model, lg)  # each subset's PoE is p(z | X_s)
    else:
        raise ValueError(name)
    set_decoders(model, lg)
    if not exact:
        _perturb(model)
    return model


def _iwae(model, K: int):
    if isinstance(model, (MMVAE, MoPoE)):
        return StratifiedIWAE(num_particles=K, max_plate_nesting=2)
    return IWAE(num_particles=K, max_plate_nesting=1)


def _replicated(model, data, masks, reps: int):
    return make_batch(model.modalities, {m: v.repeat(reps, 1) for m, v in data.items()},
                      {m: v.repeat(reps) for m, v in masks.items()})


def _per_datum(bound, model, data, masks, reps: int = 1) -> torch.Tensor:
    """The bound of each row, averaged over ``reps`` independent draws (rows repeated)."""
    batch = _replicated(model, data, masks, reps)
    with torch.no_grad():
        return bound.per_datum(model.model, model.guide, batch).reshape(reps, -1).mean(0)


# ---------------------------------------------------------------------- independent computations
def _log_joint(data, masks, z: torch.Tensor) -> torch.Tensor:
    """``log p(X_O, z)`` of the true model for ``z`` of shape ``(..., B, D)``."""
    lg = _lg()
    out = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    for m in lg.names:
        mean = z @ lg.W[m].T + lg.b[m]
        lp = torch.distributions.Normal(mean, lg.s[m]).log_prob(data[m]).sum(-1)
        out = out + torch.where(masks[m], lp, torch.zeros_like(lp))
    return out


def _proposal(model, data, masks):
    """The guide as strata: ``loc, scale (E, B, D)``, weights ``w (E, B)`` and ``log q(z)`` of
    the whole guide for ``z (..., E, B, D)``. One stratum for MVAE and JMVAE."""
    with torch.no_grad():
        q = model.encode(make_batch(model.modalities, data, masks))
        if hasattr(q, "components"):  # MixtureOfExperts over (B, E) Normal experts
            base = q.components.base_dist
            loc, scale = base.loc.transpose(0, 1), base.scale.transpose(0, 1)
            return loc, scale, q.log_weights.exp().T, q.log_prob
        return q.mean[None], q.base_dist.scale[None], torch.ones(1, q.mean.shape[0]), q.log_prob


def _hand_iwae(model, data, masks, K: int, seed: int = 123):
    """Stratified IWAE_K per row, drawn by hand, and its delta-method bias per row."""
    loc, scale, w, log_q = _proposal(model, data, masks)
    g = torch.Generator().manual_seed(seed)
    z = loc + scale * torch.randn((K, *loc.shape), generator=g)  # (K, E, B, D)
    lw = _log_joint(data, masks, z) - log_q(z)  # (K, E, B)
    per_stratum = torch.logsumexp(lw, 0) - math.log(K)
    w_norm = torch.softmax(lw, 0) * K
    bias = w_norm.var(0) / (2 * K)
    ess = 1.0 / (torch.softmax(lw, 0) ** 2).sum(0)
    active = w > 0
    zero = torch.zeros(())
    return ((w * torch.where(active, per_stratum, zero)).sum(0),
            (w * torch.where(active, bias, zero)).sum(0),
            ess[active].min())


def _hand_elbo(model, data, masks, K: int, seed: int = 321):
    """``sum_e w_e E_{q_e}[log p(X, z) - log q(z)]`` per row (the ELBO of the whole guide) and
    the standard error of each row's Monte Carlo estimate."""
    loc, scale, w, log_q = _proposal(model, data, masks)
    g = torch.Generator().manual_seed(seed)
    z = loc + scale * torch.randn((K, *loc.shape), generator=g)
    lw = _log_joint(data, masks, z) - log_q(z)
    lw = torch.where(w > 0, lw, torch.zeros(()))
    return (w * lw.mean(0)).sum(0), ((w**2) * lw.var(0) / K).sum(0).sqrt()


def _limit(model, data, masks, draws: int = 2000, seed: int = 7) -> torch.Tensor:
    """``L_inf = log p + sum_e w_e log E_{p(z|X)}[q_e(z) / q(z)]`` per row: the K -> infinity
    value of the stratified IWAE (``log p`` for a single proposal). The ratios ``w_e q_e / q`` are
    responsibilities in [0, 1], so the Monte Carlo average over posterior draws is well behaved."""
    lg = _lg()
    log_p = lg.log_marginal(data, masks)
    loc, scale, w, _ = _proposal(model, data, masks)
    if loc.shape[0] == 1:
        return log_p
    mu, sigma = lg.posterior(data, masks)
    g = torch.Generator().manual_seed(seed)
    z = mu + torch.einsum("bij,nbj->nbi", torch.linalg.cholesky(sigma),
                          torch.randn(draws, *mu.shape, generator=g))  # (n, B, D)
    comp = torch.distributions.Normal(loc, scale).log_prob(z[:, None]).sum(-1)  # (n, E, B)
    log_w = torch.where(w > 0, w.log(), torch.full_like(w, -math.inf))
    resp = torch.softmax(comp + log_w, 1)  # w_e q_e(z) / q(z)
    ratio = resp.mean(0) / w.clamp_min(1e-300)
    terms = torch.where(w > 0, w * ratio.log(), torch.zeros(()))
    return log_p + terms.sum(0)


def _gaussian_kl(m1, s1, m2, s2) -> torch.Tensor:
    """``KL(N(m1, s1^2) || N(m2, s2^2))`` summed over the last dim (diagonal Gaussians)."""
    return (torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5).sum(-1)


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    return x.mean().item(), x.std().item() / math.sqrt(len(x))


# ---------------------------------------------------------------------- exact guides
@pytest.mark.parametrize("name", MODELS)
def test_exact_guides_reach_log_p(name):
    """Where the guide is the exact posterior, log w = log p(X_O) for every particle, so every
    bound equals log p per datum: MVAE on every pattern; JMVAE's joint encoder on complete rows
    and its unimodal experts on one-modality rows; the mixtures on one-modality rows (a single
    expert: p(z | x_m) itself for MMVAE; for MoPoE the product of the prior expert and the
    linear expert N(A_m (x_m - b_m), diag(s_m / d_m)^2), which is p(z | x_m))."""
    lg = _lg()
    data, masks = _data()
    model = _build(name, exact=True)
    nobs = _nobs(masks)
    rows = {"mvae": nobs > 0, "jmvae": (nobs == 1) | (nobs == 3)}.get(name, nobs == 1)
    assert rows.sum() >= 30
    log_p = lg.log_marginal(data, masks)
    batch = make_batch(model.modalities, data, masks)
    for K in (1, 5):
        got = _iwae(model, K).per_datum(model.model, model.guide, batch).detach()
        torch.testing.assert_close(got[rows], log_p[rows], rtol=0, atol=EXACT)
        if (~rows).any():  # elsewhere the guide is inexact: the weights vary
            assert (got[~rows] - log_p[~rows]).abs().max() > 1e-2
    if name in MIXTURES:
        elbo = StratifiedELBO(num_particles=3, max_plate_nesting=2)
        got = elbo.per_datum(model.model, model.guide, batch).detach()
        torch.testing.assert_close(got[rows], log_p[rows], rtol=0, atol=EXACT)


# ---------------------------------------------------------------------- the ELBOs
@pytest.mark.parametrize("name", ["mvae", "jmvae"])
def test_gaussian_guide_elbo_matches_closed_form(name):
    """MVAE's and JMVAE's ELBO (analytic KL) against the closed form of their Gaussian guide."""
    lg = _lg()
    data, masks = _data()
    model = _build(name)
    batch = make_batch(model.modalities, data, masks)
    q = model.encode(batch)
    closed = lg.elbo(data, q.mean.detach(), q.base_dist.scale.detach(), masks)
    assert (closed < lg.log_marginal(data, masks)).all()
    loss = ELBO(num_particles=50, max_plate_nesting=1)
    est = torch.tensor([-loss.loss(model.model, model.guide, batch) / N for _ in range(8)])
    assert est.std() > 0
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(est.mean() - closed.mean()) < 4 * est.std() / math.sqrt(len(est))


def test_mmvae_stratified_elbo_is_the_mixture_elbo():
    """StratifiedELBO on MMVAE estimates E_q[log p(X, z) - log q(z)] of the mixture q (rows
    independent: the mean difference from the hand estimate is within 4 SE), below log p."""
    data, masks = _data()
    model = _build("mmvae")
    ours = _per_datum(StratifiedELBO(num_particles=50, max_plate_nesting=2), model, data, masks)
    hand, _ = _hand_elbo(model, data, masks, K=2000)
    mean, se = _mean_se(ours - hand)
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(mean) < 4 * se
    mean, se = _mean_se(_lg().log_marginal(data, masks) - ours)
    # statistical check: detection at 4 SE: an absent effect would pass with probability 3.2e-5
    assert mean > 4 * se


@pytest.mark.parametrize("objective", ["elbo", "stratified_elbo"])
def test_mopoe_elbo_is_the_weighted_per_subset_elbo(objective):
    """MoPoE's objective (Sutter et al. 2021): sum_s w_s [E_{q_s} log p(X_O|z) - KL(q_s || p)]
    with analytic KL, i.e. the weighted closed-form ELBOs of the subset posteriors q_s. Both
    estimators estimate it per row without bias: ``"stratified_elbo"`` samples every subset,
    ``"elbo"`` (the paper's) one subset per row with the KL averaged over subsets in closed form
    (checked on the summed loss) and, per row, its Monte Carlo version log p(X, z) - log q_a(z).
    It is below the ELBO of the mixture, since H(sum_s w_s q_s) >= sum_s w_s H(q_s)."""
    lg = _lg()
    data, masks = _data()
    model = _build("mopoe", objective=objective, num_particles=20)
    loc, scale, w, _ = _proposal(model, data, masks)
    closed = sum(w[s] * lg.elbo(data, loc[s], scale[s], masks) for s in range(len(loc)))
    loss = model.default_loss()
    assert loss.analytic_kl
    if objective == "stratified_elbo":
        assert isinstance(loss, StratifiedELBO)
        ours = _per_datum(loss, model, data, masks)
    else:
        reps = 400
        batch = _replicated(model, data, masks, reps)
        with torch.no_grad():
            lw = log_weights_from_traces(*trace_pair(model.model, model.guide, (batch,), {}, 1, 2), 1, 2)
            ours = lw[0].reshape(reps, -1).mean(0)  # Monte Carlo KL: log q_a(z) - log p(z)
            analytic = -torch.tensor([loss.loss(model.model, model.guide, batch) / reps for _ in range(8)])
        mean, se = _mean_se(analytic)
        # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
        assert abs(mean - closed.sum().item()) < 4 * se
    mean, se = _mean_se(ours - closed)
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(mean) < 4 * se
    mixture, mixture_se = _hand_elbo(model, data, masks, K=800)
    multi = _nobs(masks) > 1
    mean, se = _mean_se((mixture - closed)[multi])
    # statistical check: detection at 4 SE: an absent effect would pass with probability 3.2e-5
    assert mean > 4 * se
    one = (mixture - closed)[~multi] / mixture_se[~multi]  # one subset: the same q, so equal
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(one.mean()) < 4 / math.sqrt(len(one))


def test_jmvae_kl_terms_shift_the_bounds_by_alpha_kl():
    """JMVAE-kl subtracts alpha sum_m KL(q(z|X) || q(z|x_m)) (a constant in z) on complete rows:
    on the same particles every bound moves by exactly that amount; incomplete rows keep theirs."""
    data, masks = _data()
    alpha = 0.7
    plain, kl_model = _build("jmvae"), _build("jmvae", alpha=alpha)
    batch = make_batch(plain.modalities, data, masks)
    with torch.no_grad():
        joint = plain.encode(batch)  # q(z | X) on complete rows
        kl = 0.0
        for m in DIMS:
            alone = plain.encode(batch.restrict([m]))  # q(z | x_m): the expert on its own
            kl = kl + _gaussian_kl(joint.mean, joint.base_dist.scale, alone.mean,
                                   alone.base_dist.scale)
    complete = _nobs(masks) == len(DIMS)
    shift = torch.where(complete, alpha * kl, torch.zeros(()))
    assert shift[complete].min() > 1e-3
    for bound in (IWAE(num_particles=5, max_plate_nesting=1),
                  IWAE(num_particles=1, max_plate_nesting=1)):
        torch.manual_seed(0)
        base = bound.per_datum(plain.model, plain.guide, batch).detach()
        torch.manual_seed(0)
        moved = bound.per_datum(kl_model.model, kl_model.guide, batch).detach()
        torch.testing.assert_close(moved, base - shift, rtol=0, atol=EXACT)
    analytic = ELBO(num_particles=3, max_plate_nesting=1)
    torch.manual_seed(0)
    base = analytic.loss(plain.model, plain.guide, batch)
    torch.manual_seed(0)
    moved = analytic.loss(kl_model.model, kl_model.guide, batch)
    assert moved == pytest.approx(base + shift.sum().item(), abs=1e-8)


# ---------------------------------------------------------------------- ELBO <= IWAE_K <= log p
def _library_log_weights(model, batch, K: int):
    """``(K, E, B)`` log-weights and ``(E, B)`` stratum weights from the engine of the bound
    classes (:func:`pyromv.infer.importance.trace_pair` and friends); ``E = 1`` for MVAE/JMVAE."""
    nesting = model.max_plate_nesting
    with torch.no_grad():
        mt, gt = trace_pair(model.model, model.guide, (batch,), {}, K, nesting)
        if nesting == 1:
            lw = log_weights_from_traces(mt, gt, K, nesting)
            return lw[:, None], torch.ones(1, lw.shape[-1])
        lw = log_weights_from_traces(mt, gt, K, nesting, "batch", "experts")
        return lw, strata_weights(gt, -nesting - 1, "experts", "batch", lw.shape[1:])


def _grouped_iwae(lw: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """``(K / k, B)``: the stratified IWAE_k of each disjoint group of ``k`` particles."""
    groups = lw.reshape(lw.shape[0] // k, k, *lw.shape[1:])
    per_stratum = torch.logsumexp(groups, 1) - math.log(k)  # (K / k, E, B)
    return (w * torch.where(w > 0, per_stratum, torch.zeros(()))).sum(1)


def _increase(lw: torch.Tensor, w: torch.Tensor, k1: int, k2: int) -> tuple[float, float]:
    """Total over rows of ``IWAE_k2 - IWAE_k1`` and its Monte Carlo standard error given the data.

    Each group of ``k2`` particles gives one draw ``delta_g = IWAE_k2(group) - mean of IWAE_k1
    over its ``k2 / k1`` subgroups``, i.i.d. over the ``G = K / k2`` groups; per row the mean of
    ``delta_g`` estimates ``E[IWAE_k2] - E[IWAE_k1] >= 0`` with variance ``var_g / G``. Rows are
    independent, so the total's variance is the sum (the rows are fixed data: only the particles
    are random, and the spread of the gap across rows does not enter)."""
    G = lw.shape[0] // k2
    big = _grouped_iwae(lw, w, k2)  # (G, B)
    small = _grouped_iwae(lw, w, k1).reshape(G, k2 // k1, -1).mean(1)
    delta = big - small
    return delta.mean(0).sum().item(), (delta.var(0) / G).sum().sqrt().item()


@functools.cache
def _ladder(name: str):
    """IWAE_K per row for K = 1, 10, 100, 1000 from one draw of 1000 particles per stratum
    (IWAE_K averaged over the 1000 / K disjoint groups of K, so the comparisons across K are
    paired on the same particles), the ELBO, the hand-drawn IWAE_1000, its bias and the limit."""
    lg = _lg()
    data, masks = _data()
    model = _build(name)
    batch = make_batch(model.modalities, data, masks)
    out = {"log_p": lg.log_marginal(data, masks), "limit": _limit(model, data, masks)}
    K = 1000
    torch.manual_seed(5)
    lw, w = _library_log_weights(model, batch, K)
    out["weights"] = (lw, w)
    for k in (1, 10, 100, 1000):
        out[k] = _grouped_iwae(lw, w, k).mean(0)
    torch.manual_seed(5)  # the same particles through the bound class itself
    with torch.no_grad():
        out["per_datum_1000"] = _iwae(model, K).per_datum(model.model, model.guide, batch)
    out["hand_1000"], out["bias_1000"], out["ess_1000"] = _hand_iwae(model, data, masks, K)
    if name in MIXTURES:
        elbo = StratifiedELBO(num_particles=100, max_plate_nesting=2)
        out["elbo"] = _per_datum(elbo, model, data, masks)
    else:
        q = model.encode(batch)
        out["elbo"] = lg.elbo(data, q.mean.detach(), q.base_dist.scale.detach(), masks)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_bounds_are_ordered_and_converge(name):
    b = _ladder(name)
    # the bound class reduces exactly these log-weights
    torch.testing.assert_close(b["per_datum_1000"], b[1000], rtol=0, atol=EXACT)
    # ELBO = IWAE_1 in expectation (K = 1 is the ELBO of the same guide)
    mean, se = _mean_se(b[1] - b["elbo"])
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(mean) < 4 * se, (mean, se)
    # strictly increasing in K: IWAE_1 < IWAE_10 < IWAE_100, each gap > 5 Monte Carlo SE
    for k1, k2 in [(1, 10), (10, 100)]:
        total, se = _increase(*b["weights"], k1, k2)
        # statistical check: detection at 5 SE: an absent effect would pass with probability 2.9e-7
        assert total > 5 * se, (k1, k2, total, se)
    # the library's IWAE_1000 agrees with the independent importance sampler
    mean, se = _mean_se(b[1000] - b["hand_1000"])
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(mean) < 4 * se, (mean, se)
    # IWAE_1000 sits within its delta-method bias of its limit (log p for one proposal)
    if name not in MIXTURES:  # a mixture's broad experts give a few strata an ESS of about 5
        assert b["ess_1000"] > 20  # enough effective samples for the delta method
    bias = b["bias_1000"].mean().item()
    mean, se = _mean_se(b["limit"] - b[1000])
    # statistical check: two one-sided 4-SE limits: false-alarm rate 2 x 3.2e-5 (normal approx.)
    assert -4 * se < mean < bias + 4 * se, (mean, bias, se)
    assert bias + 4 * se < 0.05
    # ... and below log p
    mean, se = _mean_se(b["log_p"] - b[1000])
    # statistical check: 4 SE one-sided: false-alarm rate 3.2e-5 (normal approx.)
    assert mean > -4 * se


@pytest.mark.slow
@pytest.mark.parametrize("name", MIXTURES)
def test_stratified_iwae_limit_is_below_log_p(name):
    """The stratified IWAE's limit is log p on rows with one expert and strictly below it on rows
    mixing several: IWAE_1000 stays away from log p there (while it reaches its limit above)."""
    b = _ladder(name)
    data, masks = _data()
    multi = _nobs(masks) > 1
    torch.testing.assert_close(b["limit"][~multi], b["log_p"][~multi], rtol=0, atol=EXACT)
    mean, se = _mean_se((b["log_p"] - b["limit"])[multi])
    # statistical check: detection at 6 SE: an absent effect would pass with probability 1.0e-9
    assert mean > 6 * se and mean > 0.1, (mean, se)
    mean, se = _mean_se((b["log_p"] - b[1000])[multi])
    # statistical check: detection at 6 SE: an absent effect would pass with probability 1.0e-9
    assert mean > 6 * se and mean > 0.1, (mean, se)
    # one-expert rows: IWAE_1000 within bias + 4 SE of log p itself
    mean, se = _mean_se((b["log_p"] - b[1000])[~multi])
    # statistical check: two one-sided 4-SE limits: false-alarm rate 2 x 3.2e-5 (normal approx.)
    assert -4 * se < mean < b["bias_1000"][~multi].mean().item() + 4 * se


@pytest.mark.parametrize("name", MODELS)
def test_log_likelihood_estimates_log_p_for_every_fusion(name):
    """``pyromv.metrics.log_likelihood`` samples the fused posterior itself (the mixture for
    MMVAE/MoPoE, one z per row), so it is consistent for every model: with K = 2000 the mean over
    rows is within a few of its standard errors of the closed-form log p(X_O) (summing the
    strata of a stratified guide instead would give about |O| log p)."""
    from pyromv.metrics import log_likelihood

    lg = _lg()
    data, masks = _data()
    model = _build(name)
    batch = make_batch(model.modalities, data, masks)
    torch.manual_seed(5)
    ll = log_likelihood(model, batch, K=2000, khat=False, progress=False)
    log_p = lg.log_marginal(data, masks)
    gap = (log_p - ll.values).mean().item()
    se = (log_p - ll.values).std().item() / math.sqrt(len(log_p))
    # the estimate is biased low by O(Var(w)/K): allow 0.05 nats/row plus 4 standard errors
    # statistical check: two one-sided 4-SE limits: false-alarm rate 2 x 3.2e-5 (normal approx.)
    assert -4 * se <= gap <= 0.05 + 4 * se
