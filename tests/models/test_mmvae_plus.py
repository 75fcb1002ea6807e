"""MMVAE+: reference equality, the strata's auxiliary draws, missing modalities never seen,
the reported bound against the objective, and clear errors."""

from __future__ import annotations

import pytest
import torch
from pyro import poutine

from pyromv.data import Modality, MultimodalBatch, MultimodalDataset, mcar
from pyromv.infer import StratifiedELBO
from pyromv.models import MMVAEPlus, MMVAEPlusConfig
from pyromv.testing import assert_matches_reference, assert_same_loss_and_grads
from pyromv.testing.reference.mmvae_plus import mmvae_plus_log_weights, mmvae_plus_reference_loss

MODS = [
    Modality("img", (1, 8, 8), likelihood="continuous_bernoulli", encoder="conv", decoder="conv"),
    Modality("vec", (5,), likelihood="laplace", likelihood_kwargs={"scale": 0.75}),
    Modality("tag", (3,), likelihood="categorical", likelihood_kwargs={"num_categories": 4}),
]
NAMES = [m.name for m in MODS]


def _data(n=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.rand(n, 1, 8, 8, generator=g), "vec": torch.randn(n, 5, generator=g),
            "tag": torch.randint(0, 4, (n, 3), generator=g)}


def _batch(missing: float) -> MultimodalBatch:
    dataset = MultimodalDataset(MODS, _data())
    return (mcar(dataset, missing, seed=1) if missing else dataset).batch()


def _model(seed=0, **cfg) -> MMVAEPlus:
    torch.manual_seed(seed)
    cfg = {"latent_dim": 4, "private_latent_dim": 3, **cfg}
    return MMVAEPlus(MODS, MMVAEPlusConfig(**cfg))


CONFIGS = {
    "default": {},  # DReG, K = 1, beta 2.5, Laplace, learned auxiliary scales
    "dreg-k3": {"num_particles": 3},
    "iwae-k3-normal": {"objective": "iwae", "num_particles": 3, "distribution": "normal", "beta": 1.0},
    "siwae-k2": {"objective": "siwae", "num_particles": 2},
    "elbo-k2-fixed": {"objective": "elbo", "num_particles": 2, "learn_auxiliary_scale": False,
                      "learn_prior_scale": True, "likelihood_rescaling": "dims"},
}


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = _batch(missing)
    assert_matches_reference(model, mmvae_plus_reference_loss, batch)


def test_defaults_are_the_papers_reproduction_setting():
    c = MMVAEPlusConfig()
    assert (c.latent_dim, c.private_latent_dim, c.beta, c.num_particles) == (32, 32, 2.5, 1)
    assert (c.distribution, c.objective, c.learn_auxiliary_scale) == ("laplace", "dreg", True)


def test_auxiliary_scales_sum_to_the_private_size_and_reach_the_cross_reconstructions():
    model = _model()
    scale = model.auxiliary_prior().base_dist.scale
    assert scale.shape == (3, 3)
    torch.testing.assert_close(scale.sum(-1), torch.full((3,), 3.0))
    loss = model.default_loss().differentiable_loss(model.model, model.guide, _batch(0.0))
    (grad,) = torch.autograd.grad(loss, [model.auxiliary_logits])
    assert grad.abs().sum() > 0


def test_cross_reconstructions_decode_auxiliary_draws_not_the_targets_encoder():
    """Stratum m decodes modality n != m from ``r_n``: the private encoder of ``n`` reaches only
    its own stratum, so zeroing the rows of stratum ``n`` leaves its encoder without gradient."""
    model = _model(objective="iwae")
    batch = _batch(0.0)
    trace = poutine.trace(model.guide).get_trace(batch)
    assert trace.nodes["w"]["value"].shape == (3, batch.batch_size, 3)
    # drop every stratum but img's (a row observing img only has no cross terms, so keep all
    # modalities observed and mask the strata instead)
    lw, strata, _ = mmvae_plus_log_weights(model, batch)
    keep = torch.zeros_like(strata)
    keep[0] = True
    loss = -(lw * keep).sum()
    grads = torch.autograd.grad(loss, list(model.private_encoders.parameters()), allow_unused=True)
    by_name = dict(zip([n for n, _ in model.private_encoders.named_parameters()], grads))
    for name, g in by_name.items():
        reached = g is not None and bool(g.abs().any())
        assert reached == name.startswith("img."), name


def test_data_of_missing_modalities_is_never_seen():
    model = _model(objective="iwae", num_particles=2)
    batch = _batch(0.4)
    changed = {m: batch.data[m].clone() for m in NAMES}
    for m in NAMES:
        gone = ~batch.row_mask(m)
        changed[m][gone] = torch.flip(changed[m], [0])[gone]  # other (valid) values, same shapes
    other = MultimodalBatch(changed, batch.obs_mask)
    assert any(not torch.equal(other.data[m], batch.data[m]) for m in NAMES)
    loss = model.default_loss()
    assert_same_loss_and_grads(model, lambda: loss.differentiable_loss(model.model, model.guide, batch),
                               lambda: loss.differentiable_loss(model.model, model.guide, other))


def test_reported_bound_is_the_stratified_elbo_of_the_generative_model():
    """``evaluation_loss`` (beta = 1, prior ``p(w)`` for every modality, no auxiliary draws)
    equals the objective computed by hand: per stratum m, ``u ~ q(u | x_m)`` scored by the
    mixture, ``w_n ~ q(w_n | x_n)`` for every observed n, all decoded with their own ``w_n``."""
    import torch.distributions as D

    from pyromv.testing.reference._common import experts, log_likelihood, mixture_log_prob

    model = _model()
    batch = _batch(0.4)
    torch.manual_seed(5)
    got = model.evaluation_loss().differentiable_loss(model.evaluation_model(), model.evaluation_guide(), batch)
    torch.manual_seed(5)
    loc, scale, mask = experts(model, batch)
    loc, scale, strata = loc.transpose(0, 1), scale.transpose(0, 1), mask.transpose(0, 1)
    u = D.Laplace(loc, scale).rsample()  # (M, B, D)
    log_q = mixture_log_prob(D.Laplace, loc, scale, strata, u.unsqueeze(0)).squeeze(0)
    log_p = D.Laplace(0.0, 1.0).log_prob(u).sum(-1)
    private = {}
    for m in NAMES:
        q = model.private_posterior(batch, m).base_dist
        w = D.Laplace(q.loc, q.scale).rsample((len(NAMES),))  # (M, B, Dw), one per stratum
        observed = batch.row_mask(m)
        log_p = log_p + torch.where(observed, D.Laplace(0.0, 1.0).log_prob(w).sum(-1), 0.0)
        log_q = log_q + torch.where(observed, D.Laplace(q.loc, q.scale).log_prob(w).sum(-1), 0.0)
        private[m] = w
    lw = log_likelihood(model, batch, u, scored=strata, private=private) + log_p - log_q
    weights = strata / strata.sum(0, keepdim=True).clamp(min=1)
    torch.testing.assert_close(got, -(weights * torch.where(strata, lw, 0.0)).sum())
    assert isinstance(model.evaluation_loss(), StratifiedELBO)


@pytest.mark.parametrize("cfg,match", [
    ({"private_latent_dim": 0}, "private_latent_dim"),
    ({"objective": "nope"}, "objective"),
    ({"distribution": "cauchy"}, "distribution"),
])
def test_bad_options_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        _model(**cfg)
