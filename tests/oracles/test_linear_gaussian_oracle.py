"""MVAE against the closed forms of the linear-Gaussian multimodal model (see linear_gaussian.py).

Everything runs in float64 (tests/oracles/conftest.py). Identities that hold exactly (the PoE
is the exact posterior; log-weights of an exact guide are constant) are checked to ~1e-9;
Monte Carlo statements are checked against standard errors estimated from the same draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from linear_gaussian import (
    LinearGaussian,
    build_mvae,
    mixed_row_masks,
    subsets,
)
from pyro import poutine

from pyromv.data import MultimodalBatch, make_batch
from pyromv.infer import ELBO, IWAE, SubsampledELBO, importance_log_weights, iwae_bound

DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT = 2
EXACT = 1e-9  # float64 round-off of identities that hold exactly


def _lg(**kw) -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1, **kw)


def _batch(model, lg, n, masks=None, seed=2):
    data = lg.sample(n, seed)
    return data, make_batch(model.modalities, data, masks)


def _restricted(masks: dict, keep) -> dict:
    return {m: (v if m in keep else torch.zeros_like(v)) for m, v in masks.items()}


def _close(actual, expected, atol=EXACT):
    torch.testing.assert_close(actual.detach(), expected.detach(), rtol=0.0, atol=atol)


# ---------------------------------------------------------------------- the oracle itself
def test_oracle_closed_forms_are_consistent():
    """Two independent routes to log p(X_obs) agree (so the oracle can be trusted):
    the MVN marginal vs Bayes' rule log p(x|z) + log p(z) - log p(z|x) at an arbitrary z;
    and the closed-form ELBO equals log p at q = the exact (diagonal) posterior."""
    lg = LinearGaussian.random(DIMS, LATENT, SCALES, seed=7, orthogonal=False)
    n = 64
    data = lg.sample(n, 3)
    g = torch.Generator().manual_seed(4)
    masks = mixed_row_masks(lg.names, n, 5)
    masks["c"] = masks["c"][:, None] & (torch.rand(n, 4, generator=g) < 0.7)  # feature-level
    z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
    mu, sigma = lg.posterior(data, masks)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    bayes = (lg.log_lik(data, z, masks) + prior
             - torch.distributions.MultivariateNormal(mu, sigma).log_prob(z))
    _close(bayes, lg.log_marginal(data, masks))

    lg = _lg()  # orthogonal columns: every posterior without feature masks is diagonal
    masks_rows = masks | {"c": masks["c"].any(-1)}
    mu, sigma = lg.posterior(data, masks_rows)
    diag = torch.diagonal(sigma, dim1=-2, dim2=-1)
    _close(sigma, torch.diag_embed(diag))
    _close(lg.elbo(data, mu, diag.sqrt(), masks_rows), lg.log_marginal(data, masks_rows))


# ---------------------------------------------------------------------- 1. PoE = posterior
@pytest.mark.parametrize("keep", subsets(list(DIMS)), ids=lambda s: "".join(s))
def test_poe_equals_exact_posterior_for_each_subset(keep):
    lg = _lg()
    model = build_mvae(lg, objective="elbo")
    n = 16
    data, batch = _batch(model, lg, n)
    q = model.encode(batch.restrict(keep))
    ones = {m: torch.ones(n, dtype=torch.bool) for m in DIMS}
    mu, sigma = lg.posterior(data, _restricted(ones, keep))
    diag = torch.diagonal(sigma, dim1=-2, dim2=-1)
    _close(sigma, torch.diag_embed(diag))  # precondition: the exact posterior is diagonal
    _close(q.loc, mu)
    _close(q.scale, diag.sqrt())


def test_poe_equals_exact_posterior_with_mixed_missingness():
    lg = _lg()
    model = build_mvae(lg, objective="elbo")
    n = 70
    masks = mixed_row_masks(lg.names, n, 3)
    data, batch = _batch(model, lg, n, masks)
    q = model.encode(batch)
    mu, sigma = lg.posterior(data, masks)
    _close(q.loc, mu)
    _close(q.scale, torch.diagonal(sigma, dim1=-2, dim2=-1).sqrt())
    # restricting further fuses only what is left; nothing left is the prior N(0, I)
    q = model.encode(batch.restrict(["a", "c"]))
    mu, sigma = lg.posterior(data, _restricted(masks, ["a", "c"]))
    _close(q.loc, mu)
    _close(q.scale, torch.diagonal(sigma, dim1=-2, dim2=-1).sqrt())
    q = model.encode(batch.restrict([]))
    _close(q.loc, torch.zeros(n, LATENT))
    _close(q.scale, torch.ones(n, LATENT))


# ---------------------------------------------------------------------- 2. exact guide
def test_exact_guide_log_weights_equal_log_marginal():
    """With q = p(z|X_obs), log w = log p(X_obs, z) - log q(z) = log p(X_obs) for every z:
    ELBO = IWAE_K = log p per datum for every K, rows with missing modalities included."""
    lg = _lg()
    model = build_mvae(lg, objective="iwae", num_particles=5)
    n = 70
    masks = mixed_row_masks(lg.names, n, 3)
    data, batch = _batch(model, lg, n, masks)
    log_p = lg.log_marginal(data, masks)
    for K in (1, 7, 64):
        lw = importance_log_weights(model.model, model.guide, batch, num_particles=K,
                                    max_plate_nesting=1)
        assert lw.shape == (K, n)
        _close(lw, log_p.expand(K, n))
        iwae = IWAE(num_particles=K, max_plate_nesting=1)
        _close(iwae.log_weights(model.model, model.guide, batch), log_p.expand(K, n))
        _close(iwae_bound(lw), log_p)
        assert iwae.loss(model.model, model.guide, batch) == pytest.approx(-log_p.sum().item(),
                                                                          rel=0, abs=1e-8)
        mc_elbo = ELBO(num_particles=K, analytic_kl=False, max_plate_nesting=1)
        assert mc_elbo.loss(model.model, model.guide, batch) == pytest.approx(
            -log_p.sum().item(), rel=0, abs=1e-8)
    assert model.default_loss().loss(model.model, model.guide, batch) == pytest.approx(
        -log_p.sum().item(), rel=0, abs=1e-8)
    # per datum: one row of each observation pattern on its own
    pattern = torch.stack([masks[m] for m in DIMS], -1)
    firsts = [int((pattern == p).all(-1).nonzero()[0]) for p in torch.unique(pattern, dim=0)]
    assert len(firsts) == 7
    mc_elbo = ELBO(num_particles=3, analytic_kl=False, max_plate_nesting=1)
    for i in firsts:
        row = batch.index(torch.tensor([i]))
        assert mc_elbo.loss(model.model, model.guide, row) == pytest.approx(-log_p[i].item(),
                                                                            rel=0, abs=1e-9)


def test_exact_guide_analytic_kl_elbo_is_log_marginal_in_expectation():
    """E_q[log p(x|z)] - KL(q||p) = log p when q is exact; its estimator is not constant,
    so compare the mean of R independent estimates with log p within 4 standard errors."""
    lg = _lg()
    model = build_mvae(lg, objective="elbo", num_particles=50)
    n = 64
    masks = mixed_row_masks(lg.names, n, 3)
    data, batch = _batch(model, lg, n, masks)
    log_p = lg.log_marginal(data, masks).sum().item()
    loss = model.default_loss()
    assert loss.analytic_kl and loss.num_particles == 50
    est = torch.tensor([-loss.loss(model.model, model.guide, batch) for _ in range(30)])
    se = est.std().item() / math.sqrt(len(est))
    assert se > 0  # the estimator does vary: this is a genuine Monte Carlo check
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(est.mean().item() - log_p) < 4 * se


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("k", [0, 2])
def test_exact_guide_subsampled_elbo_sums_subset_log_marginals(k, vectorize):
    """Each term of the sub-sampled objective is the ELBO of the batch restricted to a subset,
    whose PoE guide is again exact: the loss is ``-sum_b sum_{S in terms(b)} log p(X_S)``, whether
    the terms are separate passes or one vectorised pass (MVAE's default). A row's terms are the
    paper's over what it observes, so a row observing one modality counts ``log p(x_m)`` once."""
    lg = _lg()
    model = build_mvae(lg)
    n = 70
    masks = mixed_row_masks(lg.names, n, 3)
    data, batch = _batch(model, lg, n, masks)
    obj = SubsampledELBO(ELBO(analytic_kl=False, max_plate_nesting=2), num_random_subsets=k, vectorize=vectorize)
    observed = torch.stack([masks[m] for m in lg.names], -1)
    torch.manual_seed(11)
    terms = obj.terms(observed)
    expected = 0.0
    for b in range(n):
        seen = [m for j, m in enumerate(lg.names) if observed[b, j]]
        row = {m: v[b:b + 1] for m, v in masks.items()}
        chosen = [seen] + ([[m] for m in seen] if len(seen) > 1 else [])
        assert [[m for j, m in enumerate(lg.names) if t[b, j]] for t in terms[:1 + len(DIMS)] if t[b].any()] == chosen
        chosen += [[m for j, m in enumerate(lg.names) if t[b, j]] for t in terms[1 + len(DIMS):] if t[b].any()]
        one = {m: v[b:b + 1] for m, v in data.items()}
        expected += sum(lg.log_marginal(one, _restricted(row, s)).sum().item() for s in chosen)
    assert any(observed.sum(-1) == 1)
    torch.manual_seed(11)
    assert obj.loss(model.model, model.guide, batch) == pytest.approx(-expected, rel=0, abs=1e-8)


OBJECTIVES = {
    "elbo": lambda: ELBO(num_particles=32, max_plate_nesting=1),
    "elbo_mc": lambda: ELBO(num_particles=32, analytic_kl=False, max_plate_nesting=1),
    "iwae": lambda: IWAE(num_particles=32, max_plate_nesting=1),
    "iwae_stl": lambda: IWAE(num_particles=32, gradient="stl", max_plate_nesting=1),
    "iwae_dreg": lambda: IWAE(num_particles=32, gradient="dreg", max_plate_nesting=1),
}


def _gradient_draws(model, loss, batch, params, repeats=16):
    """``(R, P)``: ``-d loss / d params`` (the gradient of the bound) from R independent draws."""
    out = []
    for _ in range(repeats):
        model.zero_grad()
        loss.differentiable_loss(model.model, model.guide, batch).backward()
        out.append(torch.cat([
            torch.zeros(p.numel()) if p.grad is None else -p.grad.flatten() for p in params
        ]))
    return torch.stack(out)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_exact_guide_decoder_gradient_is_the_score(objective):
    """ELBO(theta) <= log p_theta with equality at the current theta (exact guide, encoder
    held fixed), and likewise IWAE_K, so E[grad_theta bound] = grad_theta log p(X_obs): compare
    the mean of R gradient draws with autograd of the closed-form marginal, within 5 SE."""
    lg = _lg()
    model = build_mvae(lg)
    n = 64
    masks = mixed_row_masks(lg.names, n, 3)
    data, batch = _batch(model, lg, n, masks)
    params = [getattr(model.decoders[m].linear, p) for m in DIMS for p in ("weight", "bias")]
    grads = _gradient_draws(model, OBJECTIVES[objective](), batch, params)

    W = {m: lg.W[m].clone().requires_grad_() for m in DIMS}
    b = {m: lg.b[m].clone().requires_grad_() for m in DIMS}
    LinearGaussian(W, b, lg.s).log_marginal(data, masks).sum().backward()
    score = torch.cat([t.grad.flatten() for m in DIMS for t in (W[m], b[m])])
    se = grads.std(0) / math.sqrt(len(grads))
    assert (score.abs() > 1).any()  # a non-trivial gradient
    # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 per entry, summed over entries (normal approx.)
    assert ((grads.mean(0) - score).abs() <= 5 * se + 1e-8).all(), (grads.mean(0) - score) / se


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_exact_guide_encoder_gradient_vanishes(objective):
    """At the exact posterior every bound is maximal in the guide's parameters, so its
    gradient is zero in expectation (within 5 SE of R draws). The sticking-the-landing and
    DReG estimators drop the score term, whose expectation is zero, and what is left,
    d(log p(X, z) - log q(z))/dz = d log p(X)/dz = 0, vanishes in every single draw."""
    lg = _lg()
    model = build_mvae(lg)
    n = 64
    masks = mixed_row_masks(lg.names, n, 3)
    _, batch = _batch(model, lg, n, masks)
    params = list(model.encoders.parameters())
    grads = _gradient_draws(model, OBJECTIVES[objective](), batch, params)
    if objective in ("iwae_stl", "iwae_dreg"):
        assert grads.abs().max() < 1e-8
        # not vacuous: with an inexact guide the same estimator does reach the encoders
        inexact = _perturbed_model(lg)
        params = list(inexact.encoders.parameters())
        grads = _gradient_draws(inexact, OBJECTIVES[objective](), batch, params, repeats=1)
        assert grads.abs().max() > 1e-2
    else:
        se = grads.std(0) / math.sqrt(len(grads))
        assert se.max() > 1e-3  # the standard estimator is noisy: a genuine Monte Carlo check
        # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 per entry, summed over entries (normal approx.)
        assert (grads.mean(0).abs() <= 5 * se + 1e-8).all(), grads.mean(0) / se


# ---------------------------------------------------------------------- 3. inexact guide
def _perturbed_model(lg):
    model = build_mvae(lg, objective="elbo")
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for m in lg.names:
            enc = model.encoders[m]
            w = enc.linear.weight
            w.mul_(1 + 0.1 * torch.randn(w.shape, generator=g, dtype=w.dtype))
            enc.log_scale.add_(0.4)  # experts 1.5x too wide
    return model


def test_inexact_guide_bounds_are_ordered():
    """ELBO <= IWAE_1 = ELBO (in expectation) < IWAE_10 < IWAE_100 < IWAE_1000 <= log p.

    From one draw of K = 1000 log-weights per row, IWAE_K is estimated per row as the average
    over the 1000 / K disjoint groups of K. Rows are independent, so every comparison uses the
    mean over B = 256 rows and the standard error of that mean (paired across rows)."""
    lg = _lg()
    model = _perturbed_model(lg)
    B, K = 256, 1000
    masks = mixed_row_masks(lg.names, B, 3)
    data, batch = _batch(model, lg, B, masks)
    log_p = lg.log_marginal(data, masks)
    q = model.encode(batch)
    elbo = lg.elbo(data, q.loc.detach(), q.scale.detach(), masks)  # closed form for this guide
    assert (elbo < log_p - 1e-3).all()  # precondition: the guide is inexact in every row

    with torch.no_grad():
        lw = IWAE(num_particles=K, max_plate_nesting=1).log_weights(model.model, model.guide, batch)
    assert lw.shape == (K, B)
    bounds = {}
    for k in (1, 10, 100, 1000):
        groups = lw.reshape(K // k, k, B)
        bounds[k] = (torch.logsumexp(groups, 1) - math.log(k)).mean(0)

    def mean_se(x):
        return x.mean().item(), x.std().item() / math.sqrt(len(x))

    # the Monte Carlo ELBO (mean log-weight) is unbiased for the closed-form ELBO
    se_mc = (lw.var(0) / K).sum().sqrt().item() / B
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs((bounds[1] - elbo).mean().item()) < 4 * se_mc
    # ... and so is the objective's analytic-KL estimate (R independent repeats)
    loss = ELBO(num_particles=100, max_plate_nesting=1)
    est = torch.tensor([-loss.loss(model.model, model.guide, batch) / B for _ in range(10)])
    # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 (normal approx.)
    assert abs(est.mean().item() - elbo.mean().item()) < 5 * est.std().item() / math.sqrt(10)
    # strictly increasing in K
    for k1, k2 in [(1, 10), (10, 100), (100, 1000)]:
        mean, se = mean_se(bounds[k2] - bounds[k1])
        # statistical check: detection at 3 SE: an absent effect would pass with probability 1.3e-3
        assert mean > 3 * se, (k1, k2, mean, se)
    # IWAE_1000 is within its (delta-method) bias plus 4 standard errors of log p:
    # E[log p - IWAE_K] ~ Var_q(w / p) / (2K), estimated from the normalised weights.
    w_norm = torch.softmax(lw, 0) * K
    ess = 1.0 / (torch.softmax(lw, 0) ** 2).sum(0)
    assert ess.min() > 50  # the delta method needs enough effective samples
    bias = (w_norm.var(0) / (2 * K)).mean().item()
    mean, se = mean_se(log_p - bounds[K])
    # statistical check: two one-sided 4-SE limits: false-alarm rate 2 x 3.2e-5 (normal approx.)
    assert -4 * se < mean < bias + 4 * se, (mean, bias, se)
    assert bias + 4 * se < 0.05  # the tolerance is small in absolute terms
    # IWAE's objective is -sum of the per-datum bound of its own log-weights (same draws)
    iwae = IWAE(num_particles=50, max_plate_nesting=1)
    torch.manual_seed(3)
    lw50 = iwae.log_weights(model.model, model.guide, batch)
    torch.manual_seed(3)
    _close(iwae.differentiable_loss(model.model, model.guide, batch), -iwae_bound(lw50).sum())


# ---------------------------------------------------------------------- 4. masking a modality
def _two_and_three(lg):
    three = build_mvae(lg, objective="elbo")
    two = build_mvae(lg, names=["a", "b"], objective="elbo")
    return three, two


def _log_weights(model, batch, K, seed):
    torch.manual_seed(seed)
    return IWAE(num_particles=K, max_plate_nesting=1).log_weights(model.model, model.guide, batch)


def test_masking_a_modality_equals_removing_it():
    lg = _lg()
    three, two = _two_and_three(lg)
    _perturb = _perturbed_model(lg)  # an inexact guide: the weights then depend on z
    for m in DIMS:
        three.encoders[m].load_state_dict(_perturb.encoders[m].state_dict())
        if m != "c":
            two.encoders[m].load_state_dict(_perturb.encoders[m].state_dict())
    n = 40
    data = lg.sample(n, 2)
    c_rows = torch.arange(n) % 3 == 0  # c observed in a third of the rows only
    batch3 = make_batch(three.modalities, data, {"c": c_rows})
    batch2 = make_batch(two.modalities, {m: data[m] for m in ("a", "b")})
    lw3, lw2 = _log_weights(three, batch3, 20, 0), _log_weights(two, batch2, 20, 0)
    assert not torch.allclose(lw2[0], lw2[1])  # genuinely random weights
    _close(lw3[:, ~c_rows], lw2[:, ~c_rows])
    assert ((lw3[:, c_rows] - lw2[:, c_rows]).abs() > 1e-3).all()  # c counts where observed

    # c missing in every row: every objective agrees exactly under the same seed
    batch3 = batch3.restrict(["a", "b"])
    for loss in (ELBO(num_particles=4, max_plate_nesting=1),
                 ELBO(num_particles=4, analytic_kl=False, max_plate_nesting=1),
                 IWAE(num_particles=4, max_plate_nesting=1)):
        torch.manual_seed(5)
        l3 = loss.loss(three.model, three.guide, batch3)
        torch.manual_seed(5)
        l2 = loss.loss(two.model, two.guide, batch2)
        assert l3 == pytest.approx(l2, rel=1e-12, abs=EXACT)


def test_masked_sites_log_prob_and_gradient():
    lg = _lg()
    three, two = _two_and_three(lg)
    n = 40
    data = lg.sample(n, 2)
    c_rows = torch.arange(n) % 3 == 0
    batch3 = make_batch(three.modalities, data, {"c": c_rows})
    batch2 = make_batch(two.modalities, {m: data[m] for m in ("a", "b")})
    z = torch.randn(n, LATENT)

    def trace(model, batch):
        tr = poutine.trace(poutine.condition(model.model, {"z": z})).get_trace(batch)
        tr.compute_log_prob()
        return tr

    t3, t2 = trace(three, batch3), trace(two, batch2)
    for m in ("z", "x_a", "x_b"):
        _close(t3.nodes[m]["log_prob"], t2.nodes[m]["log_prob"])
    lp_c = t3.nodes["x_c"]["log_prob"]
    assert (lp_c[~c_rows] == 0).all()
    only_c = {"a": torch.zeros(n, dtype=torch.bool), "b": torch.zeros(n, dtype=torch.bool),
              "c": c_rows}
    _close(lp_c, lg.log_lik(data, z, only_c))

    # the value filled in for the missing rows does not matter (finite junk instead of zeros)
    junk = data["c"] + 1e3 * torch.randn(n, DIMS["c"])
    filled = MultimodalBatch({**batch3.data, "c": torch.where(c_rows[:, None], data["c"], junk)},
                             batch3.obs_mask)
    _close(_log_weights(three, filled, 8, 1), _log_weights(three, batch3, 8, 1), atol=0.0)

    # no gradient reaches c's networks from rows that miss c ...
    three.zero_grad()
    lw = _log_weights(three, filled, 8, 1)
    iwae_bound(lw)[~c_rows].sum().backward()
    for net in (three.decoders["c"], three.encoders["c"]):
        for p in net.parameters():
            assert p.grad is None or (p.grad == 0).all()
    assert three.decoders["a"].linear.weight.grad.abs().sum() > 0
    # ... nor from a batch where c is missing everywhere (the decoder is not even called)
    three.zero_grad()
    ELBO(max_plate_nesting=1).differentiable_loss(three.model, three.guide,
                                                  filled.restrict(["a", "b"])).backward()
    for net in (three.decoders["c"], three.encoders["c"]):
        for p in net.parameters():
            assert p.grad is None or (p.grad == 0).all()


# ---------------------------------------------------------------------- 5. feature masks
def test_feature_mask_log_likelihood_is_the_observed_marginal():
    """For fixed z, the model's log p(x_m | z) site sums exactly the observed features."""
    lg = _lg()
    model = build_mvae(lg)
    n = 50
    g = torch.Generator().manual_seed(6)
    masks = {"a": torch.rand(n, DIMS["a"], generator=g) < 0.6,
             "b": torch.rand(n, generator=g) < 0.7,
             "c": torch.rand(n, DIMS["c"], generator=g) < 0.5}
    masks["b"] |= ~(masks["a"].any(-1) | masks["c"].any(-1))  # every row observes something
    data, batch = _batch(model, lg, n, masks)
    z = torch.randn(n, LATENT)
    tr = poutine.trace(poutine.condition(model.model, {"z": z})).get_trace(batch)
    tr.compute_log_prob()
    none = {m: torch.zeros(n, dtype=torch.bool) for m in DIMS}
    for m in DIMS:
        _close(tr.nodes[f"x_{m}"]["log_prob"], lg.log_lik(data, z, none | {m: masks[m]}))


def test_feature_mask_with_exact_guide_gives_observed_marginal():
    """Mask features that carry no information about z (zero rows of W_m): the PoE guide stays
    exact, so the log-weights equal log p of the observed features (an MVN marginal), which
    differs from log p of all features by the masked features' own densities."""
    lg = LinearGaussian.random({"a": 4, "b": 2, "c": 5}, LATENT, SCALES, seed=1,
                               noise_features={"a": 2, "c": 1})
    model = build_mvae(lg, objective="iwae")
    n = 60
    g = torch.Generator().manual_seed(8)
    masks = mixed_row_masks(lg.names, n, 3)
    noise_a = torch.rand(n, 2, generator=g) < 0.5
    masks["a"] = masks["a"][:, None] & torch.cat([torch.ones(n, 2, dtype=torch.bool), noise_a], -1)
    masks["c"] = masks["c"][:, None] & torch.cat(
        [torch.ones(n, 4, dtype=torch.bool), torch.rand(n, 1, generator=g) < 0.5], -1)
    assert (~masks["a"][:, 2:]).any() and (~masks["c"][masks["c"].any(-1), 4]).any()
    data, batch = _batch(model, lg, n, masks)
    log_p = lg.log_marginal(data, masks)
    lw = importance_log_weights(model.model, model.guide, batch, num_particles=16,
                                max_plate_nesting=1)
    _close(lw, log_p.expand(16, n))
    # sanity: ignoring the feature masks would give a different answer
    rows = {m: (v.any(-1) if v.dim() == 2 else v) for m, v in masks.items()}
    assert (lg.log_marginal(data, rows) - log_p).abs().max() > 0.1


def test_feature_mask_elbo_matches_closed_form_for_any_guide():
    """With informative features masked the guide is not exact, but the (unbiased) Monte Carlo
    ELBO still estimates the closed-form ELBO of the observed features under that guide."""
    lg = _lg()
    model = build_mvae(lg)
    B, K = 128, 400
    g = torch.Generator().manual_seed(6)
    masks = {"a": torch.rand(B, DIMS["a"], generator=g) < 0.6,
             "b": torch.ones(B, dtype=torch.bool),
             "c": torch.rand(B, DIMS["c"], generator=g) < 0.5}
    data, batch = _batch(model, lg, B, masks)
    q = model.encode(batch)
    elbo = lg.elbo(data, q.loc.detach(), q.scale.detach(), masks)
    with torch.no_grad():
        lw = IWAE(num_particles=K, max_plate_nesting=1).log_weights(model.model, model.guide, batch)
    se = (lw.var(0) / K).sqrt()
    # rows that observe whole modalities only have an exact guide: zero variance, hence + EXACT
    # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 per entry, summed over entries (normal approx.)
    assert ((lw.mean(0) - elbo).abs() < 5 * se + EXACT).all()
    log_p = lg.log_marginal(data, masks)
    assert (elbo <= log_p + EXACT).all() and (elbo < log_p - 1e-3).any()

