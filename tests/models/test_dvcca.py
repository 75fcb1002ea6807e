"""DVCCA: reference equality, the plain-VAE and q(z|x_1)-guide identities, masking = removing,
the extension for rows without the encoding view (and the clear error without it), the oracle."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyromv.data import make_batch
from pyromv.infer import ELBO, importance_log_weights
from pyromv.models import DVCCA, MVAE, DVCCAConfig, MVAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.dvcca import dvcca_reference_loss
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS, NAMES
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    mixed_row_masks,
    modalities,
    set_decoders,
    set_unimodal_posterior_encoders,
)


def _batch(missing: float, mods=MODS):
    return shared.batch(missing, mods=mods)


def _model(mods=MODS, seed=0, **cfg):
    torch.manual_seed(seed)
    return DVCCA(mods, DVCCAConfig(latent_dim=4, **cfg))


CONFIGS = [{}, {"private_latent_dim": 2}, {"encoding_view": "vec", "beta": 0.5},
           {"private_latent_dim": 3, "encoding_view": "tag", "likelihood_rescaling": "dims"}]


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["vcca", "private", "view-vec", "private-view-tag"])
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = _batch(missing)
    if missing:
        assert (~batch.row_mask(model.view)).any()
    # complete rows never use the other views' encoders (the extension)
    others = set() if missing else {n for n, _ in model.named_parameters()
                                    if n.startswith("encoders.") and not n.startswith(f"encoders.{model.view}.")}
    assert_matches_reference(model, dvcca_reference_loss, batch, unreached=others)


def test_without_the_extension_only_the_encoding_view_has_a_shared_encoder():
    model = _model(poe_extension=False, private_latent_dim=2)
    assert list(model.encoders) == ["img"]
    batch = _batch(0.0)
    torch.manual_seed(11)
    loss = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)  # no dead parameters
    torch.manual_seed(11)
    torch.testing.assert_close(loss, dvcca_reference_loss(model, batch), rtol=1e-5, atol=1e-4)


def test_rows_without_the_encoding_view_are_a_clear_error_without_the_extension():
    model = _model(poe_extension=False)
    batch = _batch(0.4)
    for call in (lambda: model.encode(batch),
                 lambda: model.default_loss().differentiable_loss(model.model, model.guide, batch),
                 lambda: model.cross_generate(batch.restrict(["vec"]))):
        with pytest.raises(ValueError, match="'img'.*poe_extension"):
            call()
    # rows observing nothing encode to the prior; rows with the view are fine
    q = model.encode(batch.restrict([]))
    torch.testing.assert_close(q.mean, torch.zeros(batch.batch_size, 4))
    rows = batch.row_mask("img")
    ok = model.encode(batch.with_row_masks({"vec": rows, "tag": rows}))
    assert torch.isfinite(ok.mean).all()


def test_extension_encodes_rows_without_the_view_by_a_product_of_experts():
    model = _model()
    batch = _batch(0.4)
    q = model.encode(batch)
    x = {m: model.likelihoods[m].encoder_input(batch.data[m]) for m in NAMES}
    own = model.encoders["img"](x["img"])
    has = batch.row_mask("img")
    torch.testing.assert_close(q.mean[has], own[0][has])
    torch.testing.assert_close(q.stddev[has], own[1][has])
    precision = torch.ones(batch.batch_size, 4)  # the prior expert
    weighted = torch.zeros(batch.batch_size, 4)
    for m in ("vec", "tag"):
        loc, scale = model.encoders[m](x[m])
        seen = batch.row_mask(m).unsqueeze(-1).float()
        precision = precision + seen / scale**2
        weighted = weighted + seen * loc / scale**2
    torch.testing.assert_close(q.mean[~has], (weighted / precision)[~has])
    torch.testing.assert_close(q.stddev[~has], precision.rsqrt()[~has])


def test_one_view_is_a_plain_vae():
    """With one modality the loss is the ELBO of a VAE written directly in Pyro on the same
    networks (same draws)."""
    model = _model(MODS[1:2], beta=1.0)
    enc, dec = model.encoders["vec"], model.decoders["vec"]
    batch = _batch(0.0, MODS[1:2])
    x = batch.data["vec"]

    def vae_model(_):
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(4), torch.ones(4)).to_event(1))
            pyro.sample("x_vec", dist.Normal(dec(z), 0.7).to_event(1), obs=x)

    def vae_guide(_):
        loc, scale = enc(x)
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    torch.manual_seed(2)
    got = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(2)
    expected = pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae_model, vae_guide, batch)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def test_complete_rows_are_the_elbo_of_the_model_with_guide_q_z_given_x1():
    """``private_latent_dim = 0``, complete rows: the loss is the ELBO of an MVAE holding the same
    decoders (the same generative model) with the guide ``q(z | x_vec)`` written out by hand."""
    model = _model(encoding_view="vec")
    mvae = MVAE(MODS, MVAEConfig(latent_dim=4, objective="elbo"))
    mvae.load_state_dict(model.state_dict())
    batch = _batch(0.0)

    def guide(b):
        loc, scale = model.encoders["vec"](b.data["vec"])
        with pyro.plate("batch", b.batch_size):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    for elbo in (ELBO(max_plate_nesting=1), ELBO(analytic_kl=False, num_particles=3, max_plate_nesting=1)):
        torch.manual_seed(3)
        got = elbo.differentiable_loss(model.model, model.guide, batch)
        torch.manual_seed(3)
        expected = elbo.differentiable_loss(mvae.model, guide, batch)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("cfg", [{}, {"private_latent_dim": 2}, {"poe_extension": False}])
def test_masking_a_non_encoding_view_equals_removing_it(cfg):
    full = _model(**cfg)
    small = DVCCA(MODS[:2], DVCCAConfig(latent_dim=4, **cfg))
    small.load_state_dict({k: v for k, v in full.state_dict().items() if "tag" not in k})
    for missing in ((0.0,) if cfg.get("poe_extension") is False else (0.0, 0.4)):
        batch = _batch(missing)
        masked = batch.restrict(NAMES[:2])
        removed = make_batch(MODS[:2], {m: batch.data[m] for m in NAMES[:2]},
                             {m: batch.obs_mask[m] for m in NAMES[:2]})
        out = []
        for model, b in ((full, masked), (small, removed)):
            torch.manual_seed(4)
            out.append(importance_log_weights(model.model, model.guide, b, num_particles=3, max_plate_nesting=1))
        torch.testing.assert_close(out[0], out[1], rtol=1e-6, atol=1e-5)


def test_config_errors():
    with pytest.raises(ValueError, match="'nope'"):
        DVCCA(MODS, DVCCAConfig(encoding_view="nope"))
    with pytest.raises(ValueError, match="private_latent_dim"):
        DVCCA(MODS, DVCCAConfig(private_latent_dim=-2))
    with pytest.raises(TypeError, match="DVCCAConfig"):
        DVCCA(MODS, MVAEConfig())


# ---------------------------------------------------------------------- linear-Gaussian oracle
@pytest.mark.usefixtures("float64")
def test_elbo_is_the_closed_form_and_below_log_p():
    """VCCA on the linear-Gaussian model with ``q(z | x_a) = p(z | x_a)`` (and the extension's
    products for rows without ``a``): per row, the Monte Carlo ELBO matches the closed-form
    ELBO of that Gaussian guide (within 4 standard errors), which is below ``log p(X_O)``,
    strictly on rows observing ``a`` and another view (``q`` ignores the other views)."""
    lg = LinearGaussian.random({"a": 3, "b": 2, "c": 4}, 2, {"a": 0.5, "b": 0.8, "c": 0.3}, seed=1)
    model = DVCCA(modalities(lg), DVCCAConfig(latent_dim=2))
    set_decoders(model, lg)
    set_unimodal_posterior_encoders(model, lg)
    n, K = 70, 300
    data = lg.sample(n, seed=2)
    masks = mixed_row_masks(lg.names, n, seed=3)
    batch = make_batch(model.modalities, data, masks)
    q = model.encode(batch)
    closed = lg.elbo(data, q.mean.detach(), q.stddev.detach(), masks)
    log_p = lg.log_marginal(data, masks)
    torch.manual_seed(0)
    lw = importance_log_weights(model.evaluation_model(), model.evaluation_guide(), batch, num_particles=K,
                                max_plate_nesting=1).detach()
    se = lw.std(0) / math.sqrt(K)
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 per entry, summed over entries (normal approx.)
    assert ((lw.mean(0) - closed).abs() <= 4 * se + 1e-9).all()
    assert (closed <= log_p + 1e-9).all()
    several = masks["a"] & (masks["b"] | masks["c"])
    assert (log_p - closed)[several].min() > 1e-3
    alone = masks["a"] & ~masks["b"] & ~masks["c"]  # q(z | x_a) is the exact posterior there
    torch.testing.assert_close(closed[alone], log_p[alone])
