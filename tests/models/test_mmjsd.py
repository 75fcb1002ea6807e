"""mmJSD: reference equality, the Jensen-Shannon term against closed forms, masking = removing,
and the reported bound against the linear-Gaussian oracle."""

from __future__ import annotations

import functools
import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import Normal, kl_divergence

from pyromv.data import Modality, MultimodalBatch, MultimodalDataset, make_batch, mcar
from pyromv.infer.importance import PARTICLE_PLATE
from pyromv.models import MMJSD, MMJSDConfig, get_model_class, registered_models
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.mmjsd import mmjsd_reference_loss
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    mixed_row_masks,
    modalities,
    set_decoders,
    set_unimodal_posterior_encoders,
)

D = 3
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality("img", (1, 8, 8), "continuous_bernoulli", encoder="conv", decoder="conv"),
    Modality("vec", (5,), "normal", {"scale": 0.7}, encoder=MLP, decoder=MLP),
    Modality("tag", (3,), "categorical", {"num_categories": 4}, encoder=MLP, decoder=MLP),
]
LINEAR = [Modality(m, (d,), "normal", {"scale": 0.5}, encoder="linear", decoder="linear")
          for m, d in (("a", 3), ("b", 2), ("c", 4))]


def _data(n: int = 24, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.rand(n, 1, 8, 8, generator=g), "vec": torch.randn(n, 5, generator=g),
            "tag": torch.randint(0, 4, (n, 3), generator=g)}


def _batch(missing: float = 0.0):
    dataset = MultimodalDataset(MODS, _data())
    return (mcar(dataset, missing, seed=1) if missing else dataset).batch()


def _linear_batch(n: int = 10, seed: int = 0, masks=None):
    g = torch.Generator().manual_seed(seed)
    data = {m.name: torch.randn(n, *m.shape, generator=g) for m in LINEAR}
    return make_batch(LINEAR, data, masks)


def test_registered():
    assert "mmjsd" in registered_models() and get_model_class("mmjsd") is MMJSD


# ---------------------------------------------------------------------- reference equality
CONFIGS = [
    {},
    {"alpha": 1.0, "num_particles": 3},
    {"private_latent_dim": 2, "beta": 0.5, "num_particles": 2},
    {"private_latent_dim": 2, "alpha": 0.0, "likelihood_rescaling": "dims", "prior_scale": 2.0},
]


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "alpha1-K3", "private", "private-alpha0-dims"])
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    torch.manual_seed(0)
    model = MMJSD(MODS, MMJSDConfig(latent_dim=D, **cfg))
    batch = _batch(missing)
    assert_matches_reference(model, mmjsd_reference_loss, batch, unreached=())


# ---------------------------------------------------------------------- the JS term
def _normal(loc, scale):
    return Normal(loc, scale)


def test_one_modality_dynamic_prior_is_the_geometric_mean_and_js_has_its_closed_form():
    """One expert q_1: f = sqrt(p q_1) / Z, so ``log f(z) - (log p(z) + log q_1(z)) / 2`` is the
    same at every z; f's precision is the mean of the two precisions and
    ``JS = (KL(p || f) + KL(q_1 || f)) / 2`` (torch's Normal KL, per dimension, summed)."""
    torch.manual_seed(0)
    model = MMJSD(LINEAR[:1], MMJSDConfig(latent_dim=D, prior_scale=1.5))
    with torch.no_grad():
        model.encoders["a"].log_scale.copy_(torch.tensor([-0.5, 0.3, 0.9]))
    batch = _linear_batch()
    loc, scale, mask = model.experts(batch)
    q1 = _normal(loc[:, 0], scale[:, 0])
    p = _normal(torch.zeros(D), torch.full((D,), 1.5))
    f = model.dynamic_prior(loc, scale, mask)
    prec = (p.scale**-2 + q1.scale**-2) / 2
    torch.testing.assert_close(f.scale, prec.rsqrt())
    torch.testing.assert_close(f.loc, (p.loc * p.scale**-2 + q1.loc * q1.scale**-2) / (2 * prec))
    z = 3 * torch.randn(50, *f.loc.shape)
    gap = f.log_prob(z) - 0.5 * (p.log_prob(z) + q1.log_prob(z)).sum(-1)  # (50, B)
    torch.testing.assert_close(gap, gap[:1].expand_as(gap), atol=1e-4, rtol=0)
    f_ = _normal(f.loc, f.scale)
    expected = 0.5 * (kl_divergence(p, f_) + kl_divergence(q1, f_)).sum(-1)
    torch.testing.assert_close(model.js_divergence(batch), expected)
    assert (expected > 0).all()


def test_a_row_with_one_observed_modality_has_the_one_modality_closed_form():
    """In a three-modality model, a row observing only ``b``: f and JS are those of {p, q_b}."""
    torch.manual_seed(1)
    model = MMJSD(LINEAR, MMJSDConfig(latent_dim=D))
    masks = {"a": torch.tensor([0, 1, 0, 1], dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool),
             "c": torch.tensor([0, 0, 1, 1], dtype=torch.bool)}
    batch = _linear_batch(4, masks=masks)
    loc, scale, _ = model.experts(batch)
    qb = _normal(loc[0, 1], scale[0, 1])
    p = _normal(torch.zeros(D), torch.ones(D))
    prec = (1.0 + qb.scale**-2) / 2
    f = _normal(qb.loc * qb.scale**-2 / (2 * prec), prec.rsqrt())
    expected = 0.5 * (kl_divergence(p, f) + kl_divergence(qb, f)).sum()
    js = model.js_divergence(batch)
    torch.testing.assert_close(js[0], expected)
    # pi = 1/3 with two observed experts, 1/4 with three: the other rows differ from row 0's form
    assert torch.isfinite(js).all() and (js > 0).all()


def test_js_is_nonnegative_and_zero_when_every_expert_is_the_prior():
    torch.manual_seed(2)
    model = MMJSD(MODS, MMJSDConfig(latent_dim=D))
    for missing in (0.0, 0.4):
        assert (model.js_divergence(_batch(missing)) >= 0).all()
    model = MMJSD(LINEAR, MMJSDConfig(latent_dim=D, prior_scale=2.0))
    with torch.no_grad():
        for m in model.names:
            model.encoders[m].linear.weight.zero_()
            model.encoders[m].linear.bias.zero_()
            model.encoders[m].log_scale.fill_(math.log(2.0))
    masks = mixed_row_masks(model.names, 14, seed=0)
    js = model.js_divergence(_linear_batch(14, masks=masks))
    torch.testing.assert_close(js, torch.zeros(14), atol=1e-6, rtol=0)
    # and it grows as one expert moves away from the prior
    with torch.no_grad():
        model.encoders["a"].linear.bias.fill_(1.0)
    js = model.js_divergence(_linear_batch(14, masks=masks))
    assert ((js > 1e-3) == masks["a"]).all()


def test_alpha_weights_the_js_factor_and_evaluation_drops_it():
    torch.manual_seed(3)
    model = MMJSD(MODS, MMJSDConfig(latent_dim=D, alpha=0.7))
    batch = _batch(0.4)
    tr = poutine.trace(model.guide).get_trace(batch)
    torch.testing.assert_close(tr.nodes["mmjsd_js"]["fn"].log_prob(torch.zeros(())).sum(),
                               0.7 * model.js_divergence(batch).sum())
    assert "mmjsd_js" not in poutine.trace(model.evaluation_guide()).get_trace(batch).nodes
    no_js = MMJSD(MODS, MMJSDConfig(latent_dim=D, alpha=0.0))
    assert "mmjsd_js" not in poutine.trace(no_js.guide).get_trace(batch).nodes


def test_posterior_is_the_mixture_of_the_observed_experts():
    torch.manual_seed(4)
    model = MMJSD(MODS, MMJSDConfig(latent_dim=D))
    batch = _batch(0.4)
    loc, scale, mask = model.experts(batch)
    z = torch.randn(5, batch.batch_size, D)
    comp = Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (5, B, M)
    n = mask.sum(-1)
    expected = torch.logsumexp(comp.masked_fill(~mask, -math.inf), -1) - n.log()
    torch.testing.assert_close(model.encode(batch).log_prob(z), expected)


# ---------------------------------------------------------------------- masking = removing
def _replayed(model, batch):
    """A guide trace drawn under a one-particle plate (the objective's layout), to replay."""
    return poutine.trace(pyro.plate(PARTICLE_PLATE, 1, dim=-3)(model.guide)).get_trace(batch)


@pytest.mark.parametrize("private", [0, 2])
def test_masking_a_modality_equals_removing_it(private):
    """``c`` missing in every row of the full model vs a model built without ``c`` (same
    networks), the same latent draws for the experts both have: per-row training bound, per-row
    evaluation bound, JS and posterior agree."""
    torch.manual_seed(5)
    full = MMJSD(LINEAR, MMJSDConfig(latent_dim=D, private_latent_dim=private, num_particles=1))
    reduced = MMJSD(LINEAR[:2], MMJSDConfig(latent_dim=D, private_latent_dim=private))
    reduced.load_state_dict({k: v for k, v in full.state_dict().items() if ".c." not in k})
    masks = {"a": torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool),
             "b": torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.bool)}
    big = _linear_batch(6, masks={**masks, "c": torch.ones(6, dtype=torch.bool)}).restrict(["a", "b"])
    small = MultimodalBatch({m: big.data[m] for m in "ab"}, {m: big.obs_mask[m] for m in "ab"})
    torch.testing.assert_close(full.js_divergence(big), reduced.js_divergence(small), rtol=0, atol=0)
    z = torch.randn(4, 6, D)
    torch.testing.assert_close(full.encode(big).log_prob(z), reduced.encode(small).log_prob(z))
    for train in (True, False):
        loss = full.default_loss() if train else full.evaluation_loss()
        pick = (lambda m: (m.model, m.guide)) if train else (lambda m: (m.evaluation_model(), m.evaluation_guide()))
        tr_full = _replayed(full, big)
        tr_small = _replayed(reduced, small)
        for name, site in tr_small.nodes.items():
            if name == "z" or name.startswith("w_"):
                site["value"] = tr_full.nodes[name]["value"][:, :2]  # the experts of a and b
        m_full, g_full = pick(full)
        m_small, g_small = pick(reduced)
        per_full = loss.per_datum(m_full, poutine.replay(g_full, trace=tr_full), big)
        per_small = loss.per_datum(m_small, poutine.replay(g_small, trace=tr_small), small)
        torch.testing.assert_close(per_full, per_small, rtol=1e-6, atol=1e-5)
        assert (per_full != 0).all()


# ---------------------------------------------------------------------- the oracle
DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT, N, REPS = 2, 70, 60


@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


@pytest.mark.usefixtures("float64")
def test_reported_bound_is_below_log_p_on_the_linear_gaussian_oracle():
    """The evaluation loss (stratified ELBO of the mixture guide, no JS) per row, averaged over
    ``REPS`` independent draws, against the closed-form ``log p(X_O)`` (10 rows of each of the 7
    observation patterns): never above it beyond 4 standard errors; exactly ``log p`` on rows
    observing one modality (the exact unimodal posterior is the whole mixture there); clearly
    below on rows mixing experts. Also equal, within its standard error, to a hand-drawn
    stratified ELBO of the same mixture."""
    lg = _lg()
    model = MMJSD(modalities(lg), MMJSDConfig(latent_dim=LATENT))
    set_decoders(model, lg)
    set_unimodal_posterior_encoders(model, lg)
    data, masks = lg.sample(N, seed=2), mixed_row_masks(lg.names, N, seed=3)
    batch = make_batch(model.modalities, {m: v.repeat(REPS, 1) for m, v in data.items()},
                       {m: v.repeat(REPS) for m, v in masks.items()})
    with torch.no_grad():
        per = model.evaluation_loss().per_datum(model.evaluation_model(), model.evaluation_guide(), batch)
    per = per.reshape(REPS, N)
    mean, se = per.mean(0), per.std(0) / math.sqrt(REPS)
    log_p = lg.log_marginal(data, masks)
    n_obs = sum(v.long() for v in masks.values())
    single = n_obs == 1
    torch.testing.assert_close(mean[single], log_p[single], rtol=0, atol=1e-8)
    # statistical check: 4 SE one-sided: false-alarm rate 3.2e-5 per entry, summed over entries (normal approx.)
    assert ((mean - log_p)[~single] < 4 * se[~single]).all()
    # statistical check: detection at 4 SE: an absent effect would pass with probability 3.2e-5
    assert ((log_p - mean)[~single] > 4 * se[~single]).float().mean() > 0.9
    # hand-drawn: z ~ q_e per observed expert, weight 1/|O|, log p(X, z) - log mixture(z)
    loc, scale, mask = (t.detach() for t in model.experts(make_batch(model.modalities, data, masks)))
    g = torch.Generator().manual_seed(7)
    z = loc + scale * torch.randn((4000, *loc.shape), generator=g)  # (K, B, E, D)
    comp = Normal(loc.unsqueeze(-3), scale.unsqueeze(-3)).log_prob(z.unsqueeze(-2)).sum(-1)  # (K, B, E, E')
    log_q = torch.logsumexp(comp.masked_fill(~mask[:, None, :], -math.inf), -1) - n_obs[:, None].log()
    log_joint = Normal(0.0, 1.0).log_prob(z).sum(-1)
    for m in lg.names:
        lp = Normal(z @ lg.W[m].T + lg.b[m], lg.s[m]).log_prob(data[m][:, None, :]).sum(-1)
        log_joint = log_joint + torch.where(masks[m][:, None], lp, torch.zeros(()))
    lw = torch.where(mask, log_joint - log_q, torch.zeros(()))  # (K, B, E)
    hand = (lw.mean(0) * mask).sum(-1) / n_obs
    hand_se = ((lw.var(0) / 4000) * mask).sum(-1).sqrt() / n_obs
    assert ((mean - hand).abs() < 4 * (se**2 + hand_se**2).sqrt() + 1e-9).all()


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("cfg", [{"alpha": -1.0}, {"alpha": float("nan")}, {"private_latent_dim": -1},
                                 {"beta": -0.5}, {"latent_dim": 0}])
def test_invalid_config(cfg):
    with pytest.raises(ValueError):
        MMJSD(MODS, MMJSDConfig(**cfg))


def test_wrong_config_type_and_batch():
    from pyromv.models import MMVAEConfig

    with pytest.raises(TypeError, match="MMJSDConfig"):
        MMJSD(MODS, MMVAEConfig())
    model = MMJSD(MODS, MMJSDConfig(latent_dim=D))
    wrong = MultimodalBatch({"vec": torch.zeros(2, 5)}, {"vec": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="modalities"):
        model.default_loss().differentiable_loss(model.model, model.guide, wrong)
