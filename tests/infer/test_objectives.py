"""Objectives: ELBO (analytic and Monte Carlo KL, beta), IWAE, SubsampledELBO, KL warm-up,
latent scaling and per-datum importance weights."""

import itertools
import math
from collections import Counter

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from torch.testing import assert_close

from pyromv.data import Modality, MultimodalBatch, make_batch
from pyromv.infer import (
    ELBO,
    IWAE,
    KLWarmup,
    LatentScaleMessenger,
    SubsampledELBO,
    importance_log_weights,
    iwae_bound,
    scale_latents,
)
from pyromv.models import MVAE, MVAEConfig

B, D = 6, 2
SMALL = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MASKS = {
    "a": [1, 1, 0, 1, 0, 1],
    "b": [1, 0, 1, 1, 0, 0],
    "c": [1, 1, 1, 0, 1, 0],
}


def _mods(decoder=SMALL, learn_scale=False, rescale_b=1.0):
    kw = {"scale": 0.7, "learn_scale": learn_scale}
    return [
        Modality("a", (3,), "normal", kw, encoder=SMALL, decoder=decoder),
        Modality("b", (4,), "normal", {"scale": 0.5}, encoder=SMALL, decoder=decoder,
                 rescale=rescale_b),
        Modality("c", (2,), "normal", {"scale": 1.3}, encoder=SMALL, decoder=decoder),
    ]


def _batch(mods=None, partial=True, n=B, seed=3):
    mods = mods or _mods()
    g = torch.Generator().manual_seed(seed)
    data = {m.name: torch.randn(n, *m.shape, generator=g) for m in mods}
    masks = None
    if partial:
        masks = {k: torch.tensor(v, dtype=torch.bool)[:n] for k, v in MASKS.items()}
    return make_batch(mods, data, masks)


def _model(mods=None, **cfg):
    torch.manual_seed(11)
    return MVAE(mods or _mods(), MVAEConfig(latent_dim=D, **cfg))


def _restricted(batch, subset):
    """The batch with every modality outside ``subset`` marked missing (built here by hand)."""
    return MultimodalBatch(
        batch.data,
        {m: (v if m in subset else torch.zeros_like(v)) for m, v in batch.obs_mask.items()},
        batch.labels,
    )


def _log_lik(model, batch, z):
    """sum_b sum_m mask_bm * rescale_m * log p(x_bm | z_b), computed from the decoders."""
    total = 0.0
    for m in model.modalities:
        lp = model.decode(z)[m.name].log_prob(batch.data[m.name])
        total = total + (m.rescale * lp * batch.row_mask(m.name)).sum()
    return total


# ====================================================================== ELBO


def test_elbo_analytic_and_monte_carlo_agree_with_closed_form():
    # linear decoders + Gaussian likelihood: E_q[log p(x|z)] is known in closed form
    mods = _mods(decoder={"name": "linear", "kwargs": {}})
    model = _model(mods)
    batch = _batch(mods)
    with torch.no_grad():
        q = model.encode(batch)
        mu, sd = q.loc, q.scale
        elbo = 0.0
        for m in model.modalities:
            W, c = model.decoders[m.name].linear.weight, model.decoders[m.name].linear.bias
            s = model.likelihoods[m.name].scale
            x = batch.data[m.name]
            resid2 = (x - (mu @ W.T + c)) ** 2
            spread = (sd**2) @ (W**2).T  # sum_j W_ij^2 sigma_j^2
            ell = (-0.5 * math.log(2 * math.pi) - torch.log(s) - (resid2 + spread) / (2 * s**2))
            elbo = elbo + m.rescale * (ell.sum(-1) * batch.row_mask(m.name)).sum()
        kl = (-sd.log() + (sd**2 + mu**2) / 2 - 0.5).sum()
        expected = -(elbo - kl).item()

    R, P = 25, 200
    estimates = {}
    for analytic in (True, False):
        obj = ELBO(num_particles=P, analytic_kl=analytic, max_plate_nesting=1)
        with torch.no_grad():
            vals = torch.tensor(
                [float(obj.differentiable_loss(model.model, model.guide, batch)) for _ in range(R)]
            )
        estimates[analytic] = (vals.mean().item(), (vals.std() / math.sqrt(R)).item())
        mean, se = estimates[analytic]
        # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 (normal approx.)
        assert abs(mean - expected) < 5 * se + 1e-3 * abs(expected), (analytic, mean, se, expected)
    (ma, sa), (mm, sm) = estimates[True], estimates[False]
    assert abs(ma - mm) < 5 * math.hypot(sa, sm) + 1e-3 * abs(expected)
    # analytic KL has lower variance than the Monte Carlo KL here
    assert sa < sm


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0, 4.0])
def test_elbo_beta_analytic_is_recon_plus_beta_kl(beta):
    model = _model()
    batch = _batch()
    obj = ELBO(beta=beta, max_plate_nesting=1)
    torch.manual_seed(5)
    loss = obj.differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(5)
    q = model.encode(batch)
    z = q.rsample()
    kl = kl_divergence(q, model.prior()).sum()
    expected = -_log_lik(model, batch, z) + beta * kl
    assert_close(loss, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_elbo_beta_monte_carlo_kl(beta):
    model = _model()
    batch = _batch()
    obj = ELBO(beta=beta, analytic_kl=False, max_plate_nesting=1)
    torch.manual_seed(6)
    loss = obj.differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(6)
    q = model.encode(batch)
    z = q.rsample()
    log_ratio = (q.log_prob(z) - model.prior().log_prob(z)).sum()
    expected = -_log_lik(model, batch, z) + beta * log_ratio
    assert_close(loss, expected, rtol=1e-5, atol=1e-4)


def test_elbo_kl_anneal_multiplies_beta():
    model = _model()
    batch = _batch()
    annealed = ELBO(beta=2.0, max_plate_nesting=1)
    annealed.kl_anneal = 0.25
    assert annealed.latent_scale == 0.5
    torch.manual_seed(7)
    a = annealed.differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(7)
    b = ELBO(beta=0.5, max_plate_nesting=1).differentiable_loss(model.model, model.guide, batch)
    assert_close(a, b)


def test_elbo_loss_and_differentiable_loss_agree():
    model = _model()
    batch = _batch()
    obj = ELBO(max_plate_nesting=1)
    torch.manual_seed(8)
    a = obj.loss(model.model, model.guide, batch)
    torch.manual_seed(8)
    b = obj.differentiable_loss(model.model, model.guide, batch)
    assert isinstance(a, float)
    assert a == pytest.approx(b.item(), rel=1e-5)


def test_elbo_equals_pyros_trace_mean_field_elbo():
    """pyromv's ELBO skips the latent log-densities that analytic KL never reads; the value and the
    gradients are Pyro's TraceMeanField_ELBO's, with and without validation."""
    model = _model(objective="elbo")
    batch = _batch()
    params = list(model.parameters())
    for validate in (True, False):
        with pyro.validation_enabled(validate):
            torch.manual_seed(4)
            ours = ELBO(num_particles=3, max_plate_nesting=1).differentiable_loss(model.model, model.guide, batch)
            g1 = torch.autograd.grad(ours, params)
            torch.manual_seed(4)
            pyros = pyro.infer.TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
            theirs = pyros.differentiable_loss(model.model, model.guide, batch)
            g2 = torch.autograd.grad(theirs, params)
        assert_close(ours, theirs)
        for a, b in zip(g1, g2):
            assert_close(a, b)


def _student_pair(data):
    """A Normal guide for a Student-t latent (no closed-form KL in torch) next to a Normal latent,
    and a guide factor."""
    def model():
        with pyro.plate("rows", 4):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            v = pyro.sample("v", dist.StudentT(3.0, 0.0, 1.0))
            pyro.sample("x", dist.Normal(u + v, 0.5), obs=data)

    def guide():
        with pyro.plate("rows", 4):
            pyro.sample("u", dist.Normal(torch.full((4,), 0.3), 0.8))
            pyro.sample("v", dist.Normal(torch.full((4,), -0.2), 0.6))
            pyro.factor("penalty", torch.full((4,), 0.1), has_rsample=True)

    return model, guide


def test_elbo_falls_back_to_monte_carlo_per_site():
    """Where a latent has no closed-form KL its term is log p(v) - log q(v) of the drawn value; the
    other keeps its closed form; a guide factor is subtracted: all on the same draws."""
    data = torch.tensor([0.5, -1.0, 2.0, 0.0])
    model, guide = _student_pair(data)
    torch.manual_seed(0)
    tr = poutine.trace(guide).get_trace()
    u, v = tr.nodes["u"]["value"], tr.nodes["v"]["value"]
    expected = (dist.Normal(u + v, 0.5).log_prob(data).sum()
                - kl_divergence(dist.Normal(torch.full((4,), 0.3), 0.8), dist.Normal(0.0, 1.0)).sum()
                + (dist.StudentT(3.0, 0.0, 1.0).log_prob(v) - dist.Normal(-0.2, 0.6).log_prob(v)).sum()
                - 0.4)
    torch.manual_seed(0)
    loss = ELBO(max_plate_nesting=1).differentiable_loss(model, guide)
    assert_close(-loss, expected)


def test_elbo_with_analytic_kl_refuses_guides_without_rsample():
    def model():
        pyro.sample("k", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("k", dist.Bernoulli(0.3))

    with pyro.validation_enabled(True), pytest.raises(NotImplementedError, match="'k' has no rsample"):
        ELBO(max_plate_nesting=0).differentiable_loss(model, guide)


# ====================================================================== latent scaling


def test_latent_scale_messenger_scales_only_latent_sites():
    mods = _mods(rescale_b=2.0)
    model = _model(mods)
    batch = _batch(mods, partial=False)
    scaled_model = LatentScaleMessenger(0.3)(model.model)
    scaled_guide = LatentScaleMessenger(0.3)(model.guide)
    guide_tr = poutine.trace(scaled_guide).get_trace(batch)
    model_tr = poutine.trace(poutine.replay(scaled_model, trace=guide_tr)).get_trace(batch)
    assert guide_tr.nodes["z"]["scale"] == pytest.approx(0.3)
    assert model_tr.nodes["z"]["scale"] == pytest.approx(0.3)
    assert model_tr.nodes["x_a"]["scale"] == 1.0
    assert model_tr.nodes["x_b"]["scale"] == 2.0  # the modality's own rescale, untouched
    assert model_tr.nodes["x_c"]["scale"] == 1.0
    # the unscaled model has scale 1 on z
    plain = poutine.trace(model.model).get_trace(batch)
    assert plain.nodes["z"]["scale"] == 1.0


def test_latent_scale_messenger_leaves_factors_and_composes_with_scale():
    def fn():
        with pyro.plate("batch", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(3))
            pyro.factor("f", -z**2)
            with poutine.scale(scale=0.5):
                pyro.sample("w", dist.Normal(0.0, 1.0))

    tr = poutine.trace(LatentScaleMessenger(0.2)(fn)).get_trace()
    assert tr.nodes["z"]["scale"] == pytest.approx(0.2)
    assert tr.nodes["w"]["scale"] == pytest.approx(0.1)
    assert tr.nodes["x"]["scale"] == 1.0
    assert tr.nodes["f"]["scale"] == 1.0


def test_scale_latents_identity_at_one():
    def fn():
        pass

    assert scale_latents(fn, 1.0) is fn
    assert scale_latents(fn, 0.5) is not fn


# ====================================================================== IWAE


def test_iwae_k1_equals_monte_carlo_elbo():
    model = _model()
    batch = _batch()
    torch.manual_seed(9)
    iwae = IWAE(num_particles=1, max_plate_nesting=1)
    a = iwae.differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(9)
    b = ELBO(analytic_kl=False, max_plate_nesting=1).differentiable_loss(
        model.model, model.guide, batch
    )
    assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_iwae_is_logmeanexp_of_importance_weights():
    model = _model()
    batch = _batch()
    obj = IWAE(num_particles=7, max_plate_nesting=1)
    torch.manual_seed(10)
    lw = obj.log_weights(model.model, model.guide, batch)
    assert lw.shape == (7, B)
    torch.manual_seed(10)
    loss = obj.differentiable_loss(model.model, model.guide, batch)
    expected = -(torch.logsumexp(lw, 0) - math.log(7)).sum()
    assert_close(loss, expected)


def test_iwae_differentiable_loss_has_gradients():
    model = _model()
    batch = _batch(partial=False)
    loss = IWAE(num_particles=5, max_plate_nesting=1).differentiable_loss(
        model.model, model.guide, batch
    )
    assert loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_iwae_needs_a_particle():
    with pytest.raises(ValueError, match="num_particles"):
        IWAE(num_particles=0)


def test_iwae_bound_values():
    lw = torch.tensor([[0.0, -1.0], [math.log(3.0), 2.0]])
    expected = torch.tensor([math.log((1 + 3) / 2), math.log((math.exp(-1) + math.exp(2)) / 2)])
    assert_close(iwae_bound(lw), expected)


# ====================================================================== plain pyro.infer.SVI


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: ELBO(max_plate_nesting=1),
        lambda: IWAE(num_particles=4, max_plate_nesting=1),
        lambda: SubsampledELBO(ELBO(max_plate_nesting=1), num_random_subsets=1),
    ],
    ids=["elbo", "iwae", "subsampled"],
)
def test_plain_svi_trains_every_parameter(make_loss):
    mods = _mods(learn_scale=True)
    model = _model(mods)
    n = 32
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(n, 2, generator=g)
    data = {
        "a": zs @ torch.randn(2, 3, generator=g),
        "b": zs @ torch.randn(2, 4, generator=g),
        "c": zs @ torch.randn(2, 2, generator=g),
    }
    masks = {"a": torch.ones(n, dtype=torch.bool), "b": torch.rand(n, generator=g) < 0.7,
             "c": torch.ones(n, dtype=torch.bool)}
    batch = make_batch(mods, data, masks)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 0.02}), loss=make_loss())
    losses = [svi.step(batch) for _ in range(100)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10])
    for k, v in model.named_parameters():
        assert not torch.equal(v.detach(), before[k]), f"{k} was not trained"
    assert any(k.startswith("encoders.") for k in before)
    assert any(k.startswith("decoders.") for k in before)
    assert "likelihoods.a.raw_scale" in before
    assert len(pyro.get_param_store()) == 0
    assert list(pyro.get_param_store().keys()) == []


# ====================================================================== SubsampledELBO


def _row_sets(terms, names):
    """``terms`` ``(T, B, M)`` as, for each row, the list of its non-empty term sets."""
    return [[frozenset(n for n, on in zip(names, t[b].tolist()) if on) for t in terms if t[b].any()]
            for b in range(terms.shape[1])]


def _observed(rows, names):
    return torch.tensor([[m in r for m in names] for r in rows])


def test_terms_of_complete_rows_are_the_papers():
    names = ["a", "b", "c", "d"]
    obj = SubsampledELBO(num_random_subsets=3)
    terms = obj.terms(_observed([set(names)] * 5, names))
    assert terms.shape == (1 + 4 + 3, 5, 4)
    for sets in _row_sets(terms, names):
        assert sets[0] == frozenset(names)
        assert sets[1:5] == [frozenset(m) for m in names]
        assert len(sets) == 8 and all(2 <= len(s) <= 3 for s in sets[5:])


def test_terms_of_incomplete_rows_count_each_subset_once():
    """A row observing ``O`` gets the paper's objective over ``O``: joint over ``O``, one unimodal
    term per observed modality, random subsets of ``O`` of size 2..|O|-1; one modality -> one term."""
    names = ["a", "b", "c", "d"]
    rows = [{"a"}, {"b", "c"}, {"a", "c", "d"}, set(), set(names)]
    obj = SubsampledELBO(num_random_subsets=6)
    torch.manual_seed(0)
    for sets, seen in zip(_row_sets(obj.terms(_observed(rows, names)), names), rows):
        if not seen:
            assert sets == []
            continue
        expected = [frozenset(seen)] + ([frozenset(m) for m in sorted(seen)] if len(seen) > 1 else [])
        assert sets[:len(expected)] == expected
        randoms = sets[len(expected):]
        assert len(randoms) == (6 if len(seen) >= 3 else 0)
        assert all(r < frozenset(seen) and len(r) >= 2 for r in randoms)
    # without the joint term the lone unimodal term stays
    sets = _row_sets(SubsampledELBO(num_random_subsets=0, joint=False).terms(_observed([{"b"}], names)), names)
    assert sets == [[frozenset("b")]]


@pytest.mark.parametrize("observed", [("a", "b", "c", "d"), ("a", "b", "d"), ("a", "b", "c", "d", "e")])
def test_random_subsets_are_uniform_over_middle_sizes(observed):
    k = 3000
    names = ["a", "b", "c", "d", "e"]
    obj = SubsampledELBO(num_random_subsets=k, joint=False, unimodal=False)
    torch.manual_seed(1)
    subs = _row_sets(obj.terms(_observed([set(observed)], names)), names)[0]
    assert len(subs) == k
    middle = [frozenset(s) for r in range(2, len(observed)) for s in itertools.combinations(observed, r)]
    counts = Counter(subs)
    assert set(counts) == set(middle)  # every subset of size 2..|O|-1 of the row's modalities, nothing else
    expected = k / len(middle)
    sd = math.sqrt(k * (1 / len(middle)) * (1 - 1 / len(middle)))
    for s in middle:
        # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 (normal approx.)
        assert abs(counts[s] - expected) < 5 * sd


def test_subsets_with_two_modalities_have_no_random_terms():
    terms = SubsampledELBO(num_random_subsets=4).terms(_observed([{"a", "b"}], ["a", "b"]))
    assert _row_sets(terms, ["a", "b"]) == [[frozenset("ab"), frozenset("a"), frozenset("b")]]
    with pytest.raises(ValueError, match="no terms"):
        SubsampledELBO(num_random_subsets=0, joint=False, unimodal=False)
    with pytest.raises(ValueError, match="num_random_subsets"):
        SubsampledELBO(num_random_subsets=-1)


def test_subsampled_loss_is_sum_of_base_over_restricted_batches():
    """Term by term (``vectorize=False``): the loss is the base objective summed over the batch
    cut, row by row, to each term's subset (the vectorised pass against the same sums is
    checked on the exact-guide oracle, tests/oracles)."""
    model = _model()
    batch = _batch()
    obj = SubsampledELBO(ELBO(max_plate_nesting=1), num_random_subsets=2)
    torch.manual_seed(12)
    loss = obj.differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(12)
    terms = obj.terms(torch.stack([batch.row_mask(m) for m in batch.names], -1))
    assert terms.shape == (1 + 3 + 2, B, 3)
    base = ELBO(max_plate_nesting=1)
    expected = sum(
        base.differentiable_loss(model.model, model.guide, MultimodalBatch(
            batch.data, {m: batch.obs_mask[m] & t[:, j] for j, m in enumerate(batch.names)}))
        for t in terms if t.any()
    )
    assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    # loss() is the same number without a graph
    torch.manual_seed(12)
    assert obj.loss(model.model, model.guide, batch) == pytest.approx(loss.item(), rel=1e-5)


def test_subsampled_forwards_beta_and_kl_anneal_to_base():
    base = ELBO(max_plate_nesting=1)
    obj = SubsampledELBO(base)
    obj.beta = 3.0
    obj.kl_anneal = 0.5
    assert base.beta == 3.0 and base.kl_anneal == 0.5
    assert base.latent_scale == 1.5


def test_rows_that_observe_nothing_of_a_subset_contribute_zero():
    model = _model()
    batch = _batch()
    base = ELBO(max_plate_nesting=1)
    # a subset that no row observes: every term is exactly zero
    no_b = MultimodalBatch(batch.data, {**batch.obs_mask, "b": torch.zeros(B, dtype=torch.bool)})
    nothing = _restricted(no_b, ("b",))
    assert base.differentiable_loss(model.model, model.guide, nothing).item() == 0.0
    # per row: a row missing every modality of the subset has posterior = prior and weight 1
    sub = _restricted(batch, ("b",))
    empty_rows = ~batch.row_mask("b")
    q = model.encode(sub)
    assert (kl_divergence(q, model.prior())[empty_rows] == 0).all()
    lw = importance_log_weights(model.model, model.guide, sub, num_particles=5, max_plate_nesting=1)
    assert (lw[:, empty_rows] == 0).all()
    assert (lw[:, ~empty_rows] != 0).all()
    # and their (unobserved) data does not matter
    data2 = {m: v.clone() for m, v in batch.data.items()}
    for m in data2:
        data2[m][empty_rows] = 5.0
    sub2 = _restricted(MultimodalBatch(data2, batch.obs_mask), ("b",))
    torch.manual_seed(13)
    l1 = base.differentiable_loss(model.model, model.guide, sub)
    torch.manual_seed(13)
    l2 = base.differentiable_loss(model.model, model.guide, sub2)
    assert torch.equal(l1, l2)


def test_subsampled_needs_a_multimodal_batch():
    model = _model()
    batch = _batch()
    with pytest.raises(TypeError, match="MultimodalBatch"):
        SubsampledELBO().differentiable_loss(model.model, model.guide, batch.data)


# ====================================================================== KL warm-up


def test_kl_warmup_factors():
    w = KLWarmup(steps=10)
    assert w.factor(0) == 0.0
    assert w.factor(5) == pytest.approx(0.5)
    assert w.factor(10) == 1.0
    assert w.factor(100) == 1.0
    w = KLWarmup(steps=4, start=0.2)
    assert w.factor(0) == pytest.approx(0.2)
    assert w.factor(2) == pytest.approx(0.6)
    assert w.factor(4) == 1.0
    factors = [w.factor(s) for s in range(8)]
    assert factors == sorted(factors)
    assert KLWarmup().factor(0) == 1.0
    assert KLWarmup(steps=0, start=0.3).factor(0) == 1.0


@pytest.mark.parametrize("kwargs", [{"steps": -1}, {"start": -0.1}, {"start": 1.5}])
def test_kl_warmup_errors(kwargs):
    with pytest.raises(ValueError):
        KLWarmup(**kwargs)


# ====================================================================== importance weights


def _conjugate_model(x):
    with pyro.plate("batch", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _conjugate_guide(x):
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))  # the exact posterior


def test_importance_log_weights_exact_posterior_gives_log_evidence():
    x = torch.tensor([0.3, -1.2, 2.0, 0.0, 4.0])
    lw = importance_log_weights(
        _conjugate_model, _conjugate_guide, x, num_particles=11, max_plate_nesting=1
    )
    assert lw.shape == (11, 5)
    log_evidence = -0.5 * x**2 / 2 - 0.5 * math.log(2 * math.pi * 2)  # x ~ N(0, 2)
    assert_close(lw, log_evidence.expand(11, 5), rtol=1e-5, atol=1e-5)


def test_importance_log_weights_shape_on_mvae():
    model = _model()
    batch = _batch()
    lw = importance_log_weights(
        model.model, model.guide, batch, num_particles=4, max_plate_nesting=1
    )
    assert lw.shape == (4, B)
    assert torch.isfinite(lw).all()
    # the particles differ (the guide is sampled K times)
    assert not torch.equal(lw[0], lw[1])


def test_importance_log_weights_site_outside_batch_plate():
    def model(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("x", dist.Normal(g, 1.0), obs=x)

    def guide(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'g'.*outside the plate 'batch'"):
        importance_log_weights(model, guide, torch.zeros(3), num_particles=2, max_plate_nesting=1)
