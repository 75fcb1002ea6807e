"""MVTCAE: the objective against a torch reference, its identities, masking = removing, and the
linear-Gaussian oracle (the training objective against its closed form, the reported ELBO below
log p). The oracle helpers here are shared with tests/models/test_crmvae.py."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from pyromv.data import MultimodalBatch, make_batch
from pyromv.infer import ELBO
from pyromv.models import MVTCAE, ModelConfig, MVTCAEConfig
from pyromv.testing import assert_matches_reference, assert_same_loss_and_grads
from pyromv.testing.reference.mvtcae import mvtcae_reference_loss
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    mixed_row_masks,
    modalities,
    set_decoders,
    set_unimodal_posterior_encoders,
)

MODALITIES = MODS


def batch_of(missing: float, n: int = 24) -> MultimodalBatch:
    return shared.batch(missing, n)


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", [{}, {"alpha": 0.3, "beta": 1.0}, {"alpha": 1.0}, {"alpha": 0.0, "beta": 0.5}])
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = MVTCAE(MODALITIES, MVTCAEConfig(latent_dim=4, **cfg))
    batch = batch_of(missing)
    if missing:
        assert (batch.observed_counts() < 3).any() and (batch.observed_counts() == 3).any()
    assert_matches_reference(model, mvtcae_reference_loss, batch)


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_alpha_zero_is_the_beta_elbo_of_the_product(beta, missing):
    """``a = 0``: weight 1 on the likelihood, no expert KLs: the beta-ELBO of q(z|X_O) itself."""
    model = MVTCAE(MODALITIES, MVTCAEConfig(latent_dim=4, alpha=0.0, beta=beta))
    batch = batch_of(missing)
    assert_same_loss_and_grads(
        model, lambda: model.default_loss().differentiable_loss(model.model, model.guide, batch),
        lambda: ELBO(beta=beta, max_plate_nesting=1).differentiable_loss(model.iw_model, model.iw_guide, batch))


def test_evaluation_loss_is_the_elbo_without_the_extra_terms():
    model = MVTCAE(MODALITIES, MVTCAEConfig(latent_dim=4))
    batch = batch_of(0.4)
    assert_same_loss_and_grads(
        model,
        lambda: model.evaluation_loss().differentiable_loss(model.evaluation_model(), model.evaluation_guide(), batch),
        lambda: ELBO(max_plate_nesting=1).differentiable_loss(model.iw_model, model.iw_guide, batch))
    torch.manual_seed(0)
    trained = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(0)
    reported = model.evaluation_loss().differentiable_loss(model.evaluation_model(), model.evaluation_guide(), batch)
    assert abs(trained.item() - reported.item()) > 1.0  # the training objective is another quantity


def row_losses(model, batch: MultimodalBatch, seed: int = 5) -> torch.Tensor:
    """The default loss of each row on its own (same seed per row)."""
    out = []
    for i in range(batch.batch_size):
        torch.manual_seed(seed + i)
        out.append(model.default_loss().differentiable_loss(model.model, model.guide,
                                                          batch.index(slice(i, i + 1))).detach())
    return torch.stack(out)


def removed_twin(cls, config, model, keep: list[str]):
    """The model built on the modalities ``keep`` only, holding ``model``'s networks."""
    twin = cls([model.modality(m) for m in keep], config)
    state = {k: v for k, v in model.state_dict().items() if k.startswith("prior") or k.split(".")[1] in keep}
    twin.load_state_dict(state)
    return twin


def assert_masking_equals_removing(cls, config) -> None:
    # precondition of comparing draws: torch's first draws of a short normal vector do not depend
    # on its length (each row draws (M, D) numbers, and modality "tag" is drawn last)
    torch.manual_seed(0)
    long = torch.randn(3 * config.latent_dim)
    torch.manual_seed(0)
    assert torch.equal(long[: 2 * config.latent_dim], torch.randn(2 * config.latent_dim))
    model = cls(MODALITIES, config)
    twin = removed_twin(cls, config, model, ["img", "vec"])
    full = batch_of(0.3, n=10)
    masked = full.restrict(["img", "vec"])
    removed = MultimodalBatch({m: full.data[m] for m in ("img", "vec")},
                              {m: masked.obs_mask[m] for m in ("img", "vec")})
    keep = masked.observed_counts() > 0
    assert keep.sum() >= 6
    got, expected = row_losses(model, masked), row_losses(twin, removed)
    torch.testing.assert_close(got[keep], expected[keep], rtol=1e-5, atol=1e-4)
    assert (got[~keep].abs() < 1e-5).all()  # rows left with nothing add nothing
    assert not torch.allclose(row_losses(model, full), got)  # the masked modality did count


def test_masking_a_modality_equals_removing_it():
    assert_masking_equals_removing(MVTCAE, MVTCAEConfig(latent_dim=3, alpha=0.5, beta=1.5))


@pytest.mark.parametrize("cfg", [{"alpha": -0.1}, {"alpha": 1.5}, {"beta": -1.0}, {"latent_dim": 0}])
def test_invalid_config(cfg):
    key = next(iter(cfg))
    with pytest.raises(ValueError, match=key):
        MVTCAE(MODALITIES, MVTCAEConfig(**cfg))


def test_wrong_config_type_and_batch():
    with pytest.raises(TypeError, match="MVTCAEConfig"):
        MVTCAE(MODALITIES, ModelConfig())
    model = MVTCAE(MODALITIES, MVTCAEConfig(latent_dim=3))
    partial = make_batch(MODALITIES[:2], {k: v for k, v in batch_of(0.0, 4).data.items() if k != "tag"})
    with pytest.raises(ValueError, match="tag"):
        model.default_loss().differentiable_loss(model.model, model.guide, partial)


def test_defaults_are_the_papers_polymnist_setting():
    c = MVTCAEConfig()
    assert c.alpha == pytest.approx(5 / 6) and c.beta == 2.5
    model = MVTCAE(MODALITIES, MVTCAEConfig(latent_dim=3))
    assert model.default_loss().beta == pytest.approx(2.5 / 6)


# ---------------------------------------------------------------------- linear-Gaussian oracle
DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT, N = 2, 70


@functools.cache
def oracle() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


def oracle_model(cls, **config):
    """``cls`` with the true linear decoders and inexact linear experts (unimodal posteriors,
    weights shaken, scales widened)."""
    lg = oracle()
    model = cls(modalities(lg), cls.config_class(latent_dim=LATENT, **config))
    set_decoders(model, lg)
    set_unimodal_posterior_encoders(model, lg)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for m in model.names:
            enc = model.encoders[m]
            enc.linear.weight.mul_(1 + 0.3 * torch.randn(enc.linear.weight.shape, generator=g))
            enc.log_scale.add_(0.3)
    return model


def oracle_batch(model, reps: int = 1):
    data, masks = oracle().sample(N, seed=2), mixed_row_masks(list(DIMS), N, seed=3)
    batch = make_batch(model.modalities, {m: v.repeat(reps, 1) for m, v in data.items()},
                       {m: v.repeat(reps) for m, v in masks.items()})
    return data, masks, batch


def closed_form_terms(model, data, masks):
    """From the oracle's closed forms: ``E_q log p(x_m|z)`` of the product q and of each expert
    ``q_m`` (rows x modalities, 0 where unobserved), ``KL(q||p)`` and ``KL(q||q_m)``."""
    lg = oracle()
    batch = make_batch(model.modalities, data, masks)
    with torch.no_grad():
        loc, scale, mask = model.experts(batch)
        q = model.encode(batch)
        mu, sd = q.mean, q.base_dist.scale

    def kl(m1, s1, m2, s2):
        return (torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5).sum(-1)

    zero, one = torch.zeros(LATENT), torch.ones(LATENT)
    joint, own = [], []
    for j, m in enumerate(DIMS):
        only = {k: (masks[k] if k == m else torch.zeros_like(masks[k])) for k in DIMS}
        joint.append(lg.elbo(data, mu, sd, only) + kl(mu, sd, zero, one))  # E_q log p(x_m | z)
        own.append(lg.elbo(data, loc[:, j], scale[:, j], only) + kl(loc[:, j], scale[:, j], zero, one))
    kl_experts = torch.stack([kl(mu, sd, loc[:, j], scale[:, j]) for j in range(len(DIMS))], -1)
    return (torch.stack(joint, -1), torch.stack(own, -1), kl(mu, sd, zero, one),
            torch.where(mask, kl_experts, torch.zeros(())), mask)


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    return x.mean().item(), x.std().item() / math.sqrt(len(x))


def assert_objective_matches(model, closed: torch.Tensor, reps: int = 40, repeats: int = 6) -> None:
    """The default loss (summed over ``reps`` copies of the rows, averaged per copy) estimates
    ``-sum_b closed_b``: within 4 standard errors over independent repeats."""
    _, _, batch = oracle_batch(model, reps)
    loss = model.default_loss()
    with torch.no_grad():
        est = torch.tensor([-loss.differentiable_loss(model.model, model.guide, batch).item() / reps
                            for _ in range(repeats)])
    mean, se = mean_se(est)
    assert se > 0
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(mean - closed.sum().item()) < 4 * se + 1e-9


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("cfg", [{}, {"alpha": 0.4, "beta": 1.3}, {"analytic_kl": False}])
def test_objective_equals_its_closed_form_on_the_oracle(cfg):
    model = oracle_model(MVTCAE, **cfg)
    data, masks, _ = oracle_batch(model)
    joint, _, kl_prior, kl_experts, mask = closed_form_terms(model, data, masks)
    a, beta = model.config.alpha, model.config.beta
    n = mask.sum(-1).double()
    closed = (n - a) / n * joint.sum(-1) - beta * ((1 - a) * kl_prior + a / n * kl_experts.sum(-1))
    assert_objective_matches(model, closed)


def assert_reported_elbo_below_log_p(model) -> None:
    """The reported loss estimates the closed-form ELBO of q(z|X_O) (within 4 SE), which lies
    below the closed-form log p(X_O) on every row; per-row mean of the gap well above its SE."""
    lg = oracle()
    data, masks, batch = oracle_batch(model)
    joint, _, kl_prior, _, _ = closed_form_terms(model, data, masks)
    elbo = joint.sum(-1) - kl_prior  # closed form: E_q log p(X_O|z) - KL(q || p)
    log_p = lg.log_marginal(data, masks)
    assert (elbo < log_p).all()
    mean, se = mean_se(log_p - elbo)
    # statistical check: detection at 4 SE: an absent effect would pass with probability 3.2e-5
    assert mean > 4 * se
    _, _, big = oracle_batch(model, reps=40)
    loss = model.evaluation_loss()
    with torch.no_grad():
        est = torch.tensor([-loss.loss(model.evaluation_model(), model.evaluation_guide(), big) / 40
                            for _ in range(6)])
    mean, se = mean_se(est)
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(mean - elbo.sum().item()) < 4 * se
    assert mean < log_p.sum().item()


@pytest.mark.usefixtures("float64")
def test_reported_elbo_is_below_log_p():
    assert_reported_elbo_below_log_p(oracle_model(MVTCAE))
