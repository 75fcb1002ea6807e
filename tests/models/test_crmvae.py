"""CRMVAE: the objective against a torch reference, its identities, masking = removing, and the
linear-Gaussian oracle (the training objective against its closed form, the reported ELBO below
log p)."""

from __future__ import annotations

import pytest
import torch
from pyro import poutine

from pyromv.data import MultimodalBatch
from pyromv.infer import ELBO
from pyromv.models import CRMVAE, CRMVAEConfig, ModelConfig
from pyromv.testing import assert_matches_reference, assert_same_loss_and_grads
from pyromv.testing.reference.crmvae import crmvae_reference_loss
from tests.models.test_mvtcae import (
    MODALITIES,
    assert_masking_equals_removing,
    assert_objective_matches,
    assert_reported_elbo_below_log_p,
    batch_of,
    closed_form_terms,
    oracle_batch,
    oracle_model,
)


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", [{}, {"beta": 1.0}, {"beta": 0.3, "likelihood_rescaling": "dims"}])
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = CRMVAE(MODALITIES, CRMVAEConfig(latent_dim=4, **cfg))
    batch = batch_of(missing)
    if missing:
        assert (batch.observed_counts() < 3).any() and (batch.observed_counts() == 3).any()
    assert_matches_reference(model, crmvae_reference_loss, batch)


def test_unimodal_terms_decode_each_modality_once_from_its_own_expert():
    """Each decoder runs once on the joint draws and once on its own expert's draws, only on the
    rows observing its modality."""
    model = CRMVAE(MODALITIES, CRMVAEConfig(latent_dim=4))
    batch = batch_of(0.4)
    calls = {m: [] for m in model.names}
    for m in model.names:
        model.decoders[m].register_forward_hook(lambda mod, inp, out, m=m: calls[m].append(inp[0].shape[0]))
    model.default_loss().differentiable_loss(model.model, model.guide, batch)
    for m in model.names:
        assert calls[m] == [int(batch.row_mask(m).sum())] * 2, m


def test_expert_kl_vanishes_on_one_modality_rows():
    """On a row observing one modality the product is that expert: KL(q || q_m) = 0 there, and
    positive on rows observing several."""
    model = CRMVAE(MODALITIES, CRMVAEConfig(latent_dim=4))
    batch = batch_of(0.5)
    n = batch.observed_counts()
    assert (n == 1).sum() >= 3 and (n > 1).sum() >= 3
    trace = poutine.trace(model.guide).get_trace(batch)
    kl = trace.nodes["crmvae_kl"]["fn"].log_factor  # the factor: beta * sum_m KL(q || q_m)
    assert (kl[n == 1].abs() < 1e-5).all()
    assert (kl[n > 1] > 1e-3).all()
    assert torch.equal(trace.nodes["z"]["scale"], 1.0 / (n + 1.0))  # pi = 1 / (|O| + 1)


def test_evaluation_loss_is_the_elbo_without_the_extra_terms():
    model = CRMVAE(MODALITIES, CRMVAEConfig(latent_dim=4))
    batch = batch_of(0.4)
    assert_same_loss_and_grads(
        model,
        lambda: model.evaluation_loss().differentiable_loss(model.evaluation_model(), model.evaluation_guide(), batch),
        lambda: ELBO(max_plate_nesting=1).differentiable_loss(model.iw_model, model.iw_guide, batch))


def test_rows_observing_nothing_add_nothing():
    model = CRMVAE(MODALITIES, CRMVAEConfig(latent_dim=4))
    batch = batch_of(0.0, n=3).restrict([])
    assert isinstance(batch, MultimodalBatch) and (batch.observed_counts() == 0).all()
    loss = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    assert loss.abs().item() < 1e-5


def test_masking_a_modality_equals_removing_it():
    assert_masking_equals_removing(CRMVAE, CRMVAEConfig(latent_dim=3, beta=1.5))


def test_invalid_config_and_types():
    with pytest.raises(ValueError, match="beta"):
        CRMVAE(MODALITIES, CRMVAEConfig(beta=-1.0))
    with pytest.raises(TypeError, match="CRMVAEConfig"):
        CRMVAE(MODALITIES, ModelConfig())


# ---------------------------------------------------------------------- linear-Gaussian oracle
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("cfg", [{}, {"beta": 1.0, "analytic_kl": False}])
def test_objective_equals_its_closed_form_on_the_oracle(cfg):
    """The estimator's mean is the closed form of the paper's objective, the ``|O|``-normalised
    weights and the unimodal reconstructions E_{q_m} log p(x_m | z) included."""
    model = oracle_model(CRMVAE, **cfg)
    data, masks, _ = oracle_batch(model)
    joint, own, kl_prior, kl_experts, mask = closed_form_terms(model, data, masks)
    pi = 1.0 / (mask.sum(-1).double() + 1.0)
    beta = model.config.beta
    closed = pi * (joint.sum(-1) + (own * mask).sum(-1) - beta * (kl_experts.sum(-1) + kl_prior))
    assert_objective_matches(model, closed)


@pytest.mark.usefixtures("float64")
def test_reported_elbo_is_below_log_p():
    assert_reported_elbo_below_log_p(oracle_model(CRMVAE))
