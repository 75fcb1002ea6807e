"""DMVAE: reference equality, the PoE identity, masking = removing, the oracle bounds, and
likelihoods whose proposals draw the targets' private latents from the prior."""

from __future__ import annotations

import math

import pytest
import torch

from pyromv.data import Modality, make_batch
from pyromv.infer import ELBO, importance_log_weights
from pyromv.metrics.likelihood import log_likelihood
from pyromv.models import DMVAE, MVAE, DMVAEConfig, MultimodalVAE, MVAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.dmvae import dmvae_reference_loss
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS, NAMES
from tests.oracles.linear_gaussian import (
    DTYPE,
    LinearGaussian,
    mixed_row_masks,
    modalities,
    orthogonal_columns,
    set_decoders,
    set_exact_encoders,
)


def _batch(missing: float, mods=MODS):
    return shared.batch(missing, mods=mods)


def _model(mods=MODS, seed=0, **cfg):
    torch.manual_seed(seed)
    return DMVAE(mods, DMVAEConfig(latent_dim=4, **cfg))


CONFIGS = [{}, {"private_latent_dim": 0}, {"unimodal_prior_expert": True},
           {"private_latent_dim": 3, "beta": 2.0, "likelihood_rescaling": "dims"}]


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "noprivate", "unimodal-prior", "private3-beta2"])
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = _batch(missing)
    if missing:
        observed = torch.stack([batch.row_mask(m) for m in NAMES], -1).sum(-1)
        assert (observed == 1).any() and (observed == 3).any()
    assert_matches_reference(model, dmvae_reference_loss, batch, unreached=())  # every parameter is reached


@pytest.mark.parametrize("missing", [0.0, 0.4])
def test_without_private_latents_it_is_a_poe_model_whose_terms_reconstruct_everything(missing):
    """``private_latent_dim = 0``, ``unimodal_prior_expert``: the loss is MVAE's vectorised
    terms with guides ``PoE(p, X_{O ∩ S_t})``, ``S_t`` = all, then each modality, except that
    every term's model observes all of ``X_O``; term ``t`` of row ``b`` is formed where the row
    observes ``S_t`` (the joint term where the row observes more than one modality). Same
    networks, same draws: equal values and gradients."""
    model = _model(private_latent_dim=0, unimodal_prior_expert=True)
    mvae = MVAE(MODS, MVAEConfig(latent_dim=4))
    mvae.load_state_dict(model.state_dict())
    batch = _batch(missing)
    observed = torch.stack([batch.row_mask(m) for m in NAMES], -1)  # (B, M)
    M = len(NAMES)
    active = torch.cat([observed.sum(-1, keepdim=True) > 1, observed], -1).T  # (1 + M, B)
    terms = torch.cat([torch.ones(1, M, dtype=torch.bool), torch.eye(M, dtype=torch.bool)])  # (1 + M, M)
    guide_members = terms.unsqueeze(1) & active.unsqueeze(-1)  # (1 + M, B, M)
    model_members = active.unsqueeze(-1).expand(-1, -1, M)
    loss = ELBO(max_plate_nesting=2)
    torch.manual_seed(5)
    got = loss.differentiable_loss(model.model, model.guide, batch)
    torch.manual_seed(5)
    expected = loss.differentiable_loss(lambda b: mvae.model(b, subsets=model_members),
                                        lambda b: mvae.guide(b, subsets=guide_members), batch)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    g1 = torch.autograd.grad(got, list(model.parameters()))
    g2 = torch.autograd.grad(expected, list(mvae.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_one_modality_rows():
    """Default: a row observing only ``m`` has two different terms, ``PoE(p, q_m)`` and ``q_m``.
    With ``unimodal_prior_expert`` they coincide and the row counts that ELBO once."""
    masks = {"img": torch.tensor([1, 0, 1, 1]), "vec": torch.tensor([0, 1, 1, 0]),
             "tag": torch.tensor([0, 0, 1, 0])}
    batch = make_batch(MODS, {k: v[:4] for k, v in shared.data().items()}, {k: v.bool() for k, v in masks.items()})
    for prior, joint_rows in ((False, [1, 1, 1, 1]), (True, [0, 0, 1, 0])):
        model = _model(unimodal_prior_expert=prior)
        q, active = model.term_posteriors(batch)
        assert active[0].tolist() == [bool(r) for r in joint_rows]
        assert active[1:].T.tolist() == [[bool(masks[m][b]) for m in NAMES] for b in range(4)]
        same = torch.isclose(q.mean[0, 0], q.mean[1, 0]).all() and torch.isclose(q.stddev[0, 0], q.stddev[1, 0]).all()
        assert bool(same) == prior  # row 0 observes img only: joint vs img's unimodal guide
        if prior:  # the unimodal guide is PoE(p, q_img), the joint guide of that row
            torch.testing.assert_close(q.mean[1, 0], model.posterior(batch).mean[0])


@pytest.mark.parametrize("cfg", [{"private_latent_dim": 0}, {"private_latent_dim": 2}])
def test_masking_a_modality_equals_removing_it(cfg):
    """Per-row log-weights of the training terms (without private latents: the ``z`` of the
    kept terms are drawn first, in the same order) and of the evaluation ELBO (with private
    latents; ``tag`` is last, so its ``w`` draws come after the others) are equal."""
    full = _model(**cfg)
    small = DMVAE(MODS[:2], DMVAEConfig(latent_dim=4, **cfg))
    small.load_state_dict({k: v for k, v in full.state_dict().items() if "tag" not in k})
    for missing in (0.0, 0.4):
        batch = _batch(missing)
        masked = batch.restrict(NAMES[:2])
        removed = make_batch(MODS[:2], {m: batch.data[m] for m in NAMES[:2]},
                             {m: batch.obs_mask[m] for m in NAMES[:2]})
        pairs = [(lambda m: m.joint_model, lambda m: m.joint_guide)]
        if not full.private_dim:
            pairs.append((lambda m: m.model, lambda m: m.guide))
        for get_model, get_guide in pairs:
            out = []
            for model, b in ((full, masked), (small, removed)):
                torch.manual_seed(4)
                out.append(importance_log_weights(get_model(model), get_guide(model), b, num_particles=1,
                                                  max_plate_nesting=2))
            torch.testing.assert_close(out[0], out[1], rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------- linear-Gaussian oracle
DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("exact", [True, False])
def test_evaluation_elbo_below_log_p(exact):
    """Private latents off: the joint term's ELBO (beta 1, the reported one) is ``log p(X_O)``
    with the exact PoE guide and below it otherwise; each training term is a bound too, so
    the loss over the ``1 + |O|`` terms is at least ``(1 + |O|)(-log p)`` in expectation."""
    lg = LinearGaussian.random(DIMS, 2, SCALES, seed=1)
    model = DMVAE(modalities(lg), DMVAEConfig(latent_dim=2, private_latent_dim=0, beta=3.0))
    set_decoders(model, lg)
    set_exact_encoders(model, lg)
    if not exact:
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            for m in model.names:
                model.encoders[m].linear.weight.mul_(1 + 0.3 * torch.randn(model.encoders[m].linear.weight.shape,
                                                                           generator=g))
                model.encoders[m].log_scale.add_(0.3)
    n = 70
    data = lg.sample(n, seed=2)
    masks = mixed_row_masks(lg.names, n, seed=3)
    batch = make_batch(model.modalities, data, masks)
    log_p = lg.log_marginal(data, masks)
    torch.manual_seed(0)
    lw = importance_log_weights(model.evaluation_model(), model.evaluation_guide(), batch, num_particles=400,
                                max_plate_nesting=2).detach()  # (K, B)
    elbo, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    gap = log_p - elbo
    if exact:
        # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 per entry, summed over entries (normal approx.)
        assert (gap.abs() <= 4 * se + 1e-9).all()
    else:
        # statistical check: 4 SE one-sided: false-alarm rate 3.2e-5 per entry, summed over entries (normal approx.)
        assert (gap > -4 * se).all()
        assert float(gap.mean()) > max(0.1, 4 * float(gap.std() / math.sqrt(n)))
    terms = importance_log_weights(model.model, model.guide, batch, num_particles=400, max_plate_nesting=2).detach()
    count = 1 + torch.stack([masks[m] for m in lg.names]).sum(0)
    per_term = terms.mean(0) / count
    assert (per_term <= log_p + 4 * terms.std(0) / math.sqrt(400) / count).all()
    # the reported loss is the joint term with beta = 1 whatever the training beta
    loss = model.evaluation_loss()
    assert loss.beta == 1.0
    torch.manual_seed(1)
    values = torch.stack([-loss.differentiable_loss(model.evaluation_model(), model.evaluation_guide(), batch).detach()
                          for _ in range(50)]) / n
    expected = float(elbo.mean())  # analytic-KL and Monte Carlo ELBO estimates of the same bound
    assert abs(float(values.mean()) - expected) < 4 * float(values.std() / math.sqrt(50) + elbo.std() / n)


def _private_oracle(seed=1):
    """A linear-Gaussian model with private latents, ``x_m = W_m z + V_m w_m + b_m + s_m eps``,
    ``[W_m V_m]`` with orthogonal columns, so the posterior of ``(z, w_m)`` factorises and the
    guides can be exact. Returns the model (linear networks set to the truth) and the closed-form
    ``log p(X_S)`` of any set of modalities."""
    g = torch.Generator().manual_seed(seed)
    dims, scales, D, Dw = {"a": 4, "b": 3}, {"a": 0.4, "b": 0.6}, 1, 1
    mods = [Modality(m, (d,), "normal", {"scale": scales[m]}, encoder="linear", decoder="linear")
            for m, d in dims.items()]
    model = DMVAE(mods, DMVAEConfig(latent_dim=D, private_latent_dim=Dw))
    W, V, b = {}, {}, {}
    with torch.no_grad():
        for m, d in dims.items():
            Q = orthogonal_columns(d, D + Dw, 0.7 + torch.rand(D + Dw, generator=g, dtype=DTYPE), g)
            W[m], V[m], b[m] = Q[:, :D], Q[:, D:], torch.randn(d, generator=g, dtype=DTYPE)
            s2 = scales[m] ** 2
            model.decoders[m].linear.weight.copy_(Q)
            model.decoders[m].linear.bias.copy_(b[m])
            dW, dV = (W[m] ** 2).sum(0), (V[m] ** 2).sum(0)
            enc = model.encoders[m]  # the expert that, times the prior, is p(z | x_m)
            enc.linear.weight.copy_(W[m].T / dW[:, None])
            enc.linear.bias.copy_(-(W[m].T / dW[:, None]) @ b[m])
            enc.log_scale.copy_(0.5 * (s2 / dW).log())
            S = 1 / (1 + dV / s2)  # p(w_m | x_m) = N(S V^T (x - b) / s^2, S)
            penc = model.private_encoders[m]
            penc.linear.weight.copy_(S[:, None] * V[m].T / s2)
            penc.linear.bias.copy_(-(S[:, None] * V[m].T / s2) @ b[m])
            penc.log_scale.copy_(0.5 * S.log())

    def sample(n, seed):
        gs = torch.Generator().manual_seed(seed)
        z = torch.randn(n, D, generator=gs, dtype=DTYPE)
        return {m: z @ W[m].T + torch.randn(n, Dw, generator=gs, dtype=DTYPE) @ V[m].T + b[m]
                + scales[m] * torch.randn(n, d, generator=gs, dtype=DTYPE) for m, d in dims.items()}

    def log_p(data, names):
        Ws = torch.cat([W[m] for m in names])
        cov = Ws @ Ws.T + torch.block_diag(*[V[m] @ V[m].T + scales[m] ** 2 * torch.eye(dims[m], dtype=DTYPE)
                                             for m in names])
        x = torch.cat([data[m] for m in names], -1)
        mvn = torch.distributions.MultivariateNormal(torch.cat([b[m] for m in names]), covariance_matrix=cov)
        return mvn.log_prob(x)

    return model, sample, log_p


@pytest.mark.usefixtures("float64")
def test_likelihoods_with_private_latents_match_the_closed_form(monkeypatch):
    """Joint ``log p(x_a, x_b)`` (exact proposal: flat weights) and conditional ``log p(x_b | x_a)``
    (the target's ``w_b`` drawn from its prior, never from ``q(w_b | x_b)``) against the closed
    form. Positive control: a proposal drawing ``w_b ~ q(w_b | x_b)`` (masked in the guide, as
    the training guide does) overestimates the conditional."""
    model, sample, log_p = _private_oracle()
    data = sample(30, seed=2)
    batch = make_batch(model.modalities, data)
    joint = log_likelihood(model, batch, K=50, seed=0, khat=False)
    torch.testing.assert_close(joint.values, log_p(data, ["a", "b"]), rtol=0, atol=1e-6)
    truth = log_p(data, ["a", "b"]) - log_p(data, ["a"])
    cond = log_likelihood(model, batch, K=4000, given="a", seed=0, khat=False)
    assert abs(cond.mean - float(truth.mean())) < 0.03
    assert float((cond.values - truth).abs().max()) < 0.15
    # the training pair as proposal: w_b ~ q(w_b | x_b), masked in the guide, scored in the model
    monkeypatch.setattr(DMVAE, "iw_guide", lambda self, b: MultimodalVAE.guide(self, b))
    monkeypatch.setattr(DMVAE, "iw_model", lambda self, b: MultimodalVAE.model(self, b))
    wrong = log_likelihood(model, batch, K=4000, given="a", seed=0, khat=False)
    assert wrong.mean - float(truth.mean()) > 0.2


def test_proposal_draws_the_targets_private_latents_from_the_prior():
    from pyro import poutine

    model = _model()
    batch = _batch(0.0).restrict(["img"])
    tr = poutine.trace(model.iw_guide).get_trace(batch)
    for m in ("vec", "tag"):
        fn = tr.nodes[f"w_{m}"]["fn"].base_dist
        assert torch.equal(fn.loc, torch.zeros_like(fn.loc)) and torch.equal(fn.scale, torch.ones_like(fn.scale))
        assert tr.nodes[f"w_{m}"]["mask"] is None
    q = model.private_posterior(batch, "img").base_dist
    torch.testing.assert_close(tr.nodes["w_img"]["fn"].base_dist.loc, q.loc)


def test_config_errors():
    with pytest.raises(ValueError, match="private_latent_dim"):
        DMVAE(MODS, DMVAEConfig(private_latent_dim=-1))
    with pytest.raises(ValueError, match="latent_dim"):
        DMVAE(MODS, DMVAEConfig(latent_dim=0))
    with pytest.raises(TypeError, match="DMVAEConfig"):
        DMVAE(MODS, MVAEConfig())
