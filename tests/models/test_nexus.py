"""Nexus: reference equality (dropout on and off), vectorised forced perceptual dropout, messages
of missing modalities never reach the top encoder, masking = removing, the linear-Gaussian
hierarchy's closed form above the evaluation bound, and proposals that draw the bottom latents
of unobserved modalities from p(z_m | z_sigma)."""

from __future__ import annotations

import math

import pytest
import torch
from pyro import poutine

from pyromv.data import Modality, MultimodalBatch, make_batch
from pyromv.infer import importance_log_weights
from pyromv.metrics.likelihood import log_likelihood
from pyromv.models import MVAEConfig, Nexus, NexusConfig
from pyromv.models.nexus import perceptual_dropout
from pyromv.testing import assert_matches_reference, assert_same_loss_and_grads
from pyromv.testing.reference.nexus import nexus_reference_loss
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS, NAMES

SMALL = {"latent_dim": 3, "bottom_latent_dim": 4, "message_dim": 6, "top_hidden_dims": [8]}


def _batch(missing: float, mods=MODS):
    return shared.batch(missing, mods=mods)


def _model(mods=MODS, seed=0, **cfg):
    torch.manual_seed(seed)
    return Nexus(mods, NexusConfig(**{**SMALL, **cfg}))


CONFIGS = {
    "default": {},  # dropout 0.2, analytic KL
    "no-dropout": {"dropout_rate": 0.0},
    "always-drop": {"dropout_rate": 1.0},
    "weights": {"beta": 0.5, "bottom_beta": 2.0, "top_beta": 0.3, "gamma": 5.0, "gammas": {"tag": 50.0},
                "top_scale": 0.4, "likelihood_rescaling": "dims", "bottom_latent_dim": 0},
}


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = _batch(missing)
    if missing:
        observed = torch.stack([batch.row_mask(m) for m in NAMES], -1).sum(-1)
        assert (observed == 1).any() and (observed == 3).any()
    assert_matches_reference(model, nexus_reference_loss, batch, unreached=())


def test_reference_in_eval_mode_has_no_dropout_and_dropout_matters():
    """Positive control: the dropout changes the loss (same seed); in eval mode the training
    loss has no dropout at all (equal to ``dropout_rate = 0``), in model and reference alike."""
    batch = _batch(0.0)
    loss = {}
    for rate in (0.0, 1.0):
        model = _model(dropout_rate=rate)
        torch.manual_seed(2)
        loss[rate] = float(model.default_loss().differentiable_loss(model.model, model.guide, batch).detach())
    assert loss[0.0] != loss[1.0]
    model = _model(dropout_rate=1.0).eval()
    assert_matches_reference(model, nexus_reference_loss, batch, unreached=())
    torch.manual_seed(2)
    assert float(model.default_loss().differentiable_loss(model.model, model.guide, batch).detach()) == loss[0.0]


# ---------------------------------------------------------------------- forced perceptual dropout
def test_perceptual_dropout_frequencies_match_the_rate(monkeypatch):
    """Over many rows: a row with ``n >= 2`` observed messages is hit with probability
    ``rate``, drops ``k ~ U{1..n-1}`` of them, so each observed message is dropped with
    probability ``rate E[k] / n = rate / 2``; rows with one message never drop; never a missing
    message, never all of a row's. Three draws for the whole batch: no loop over rows."""
    torch.manual_seed(0)
    N, rate = 60000, 0.3
    observed = torch.ones(N, 4, dtype=torch.bool)
    observed[N // 3: 2 * N // 3, 3] = False  # n = 3
    observed[2 * N // 3:, 1:] = False  # n = 1
    calls = []
    rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: calls.append(a) or rand(*a, **k))
    dropped = perceptual_dropout(observed, rate)
    monkeypatch.undo()
    assert len(calls) == 3
    assert not (dropped & ~observed).any()
    assert (dropped.sum(-1) < observed.sum(-1)).all()
    for rows, n in ((slice(0, N // 3), 4), (slice(N // 3, 2 * N // 3), 3)):
        d, o = dropped[rows], observed[rows]
        per_message = d[o].double().reshape(-1, n).mean(0)  # each observed message
        se = math.sqrt(rate / 2 * (1 - rate / 2) / d.shape[0])
        # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 per entry, summed over entries (normal approx.)
        assert ((per_message - rate / 2).abs() < 5 * se).all(), per_message
        hit = d.any(-1)
        assert abs(float(hit.double().mean()) - rate) < 5 * math.sqrt(rate * (1 - rate) / d.shape[0])
        k = d[hit].sum(-1)
        counts = torch.bincount(k, minlength=n)[1:].double() / k.numel()  # k = 1..n-1 uniformly
        assert (counts - 1 / (n - 1)).abs().max() < 5 * math.sqrt(1 / (n - 1) / k.numel())
        pairs = d[hit][:, :2].all(-1).double().mean()  # subsets uniform given k: P(both 0, 1)
        expected = sum((kk * (kk - 1)) / (n * (n - 1)) for kk in range(1, n)) / (n - 1)
        assert abs(float(pairs) - expected) < 5 * math.sqrt(expected / k.numel())
    assert not dropped[2 * N // 3:].any()
    assert not perceptual_dropout(observed, 0.0).any()


def test_messages_of_missing_modalities_never_reach_the_top_encoder():
    """Changing the data of missing modalities changes neither ``q(z_sigma | X_O)`` nor the
    guide's draws of ``z_sigma`` nor the loss (dropout on)."""
    model = _model(dropout_rate=0.5)
    batch = _batch(0.4)
    other = shared.data(seed=9)
    data = {m: torch.where(batch.row_mask(m).reshape((-1,) + (1,) * (v.dim() - 1)), batch.data[m], other[m])
            for m, v in batch.data.items()}
    changed = MultimodalBatch(data, batch.obs_mask)
    assert any(not torch.equal(changed.data[m], batch.data[m]) for m in NAMES)
    torch.testing.assert_close(model.encode(changed).mean, model.encode(batch).mean, rtol=0, atol=0)
    out = []
    for b in (batch, changed):
        torch.manual_seed(4)
        tr = poutine.trace(model.guide).get_trace(b)
        torch.manual_seed(4)
        loss = model.default_loss().differentiable_loss(model.model, model.guide, b)
        out.append((tr.nodes["z"]["value"], tr.nodes["z"]["fn"].base_dist.scale, loss))
    for a, b in zip(*out):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- masking = removing
def _row_log_weights(model, guide, batch, trace=None):
    """Per-row ``log p - log q`` of ``model``/``guide``, the guide replayed on ``trace``."""
    g = poutine.trace(poutine.replay(guide, trace=trace) if trace else guide).get_trace(batch)
    m = poutine.trace(poutine.replay(model, trace=g)).get_trace(batch)
    g.compute_log_prob()
    m.compute_log_prob()
    total = 0.0
    for tr, sign in ((m, 1), (g, -1)):
        for name, site in tr.nodes.items():
            if site["type"] == "sample" and name != "batch" and not name.startswith("modalities"):
                total = total + sign * site["log_prob"]
    return total, g


@pytest.mark.parametrize("pair", ["training", "evaluation"])
def test_masking_a_modality_equals_removing_it(pair):
    """A model without ``tag`` (same networks) on the batch without it, and the full model on
    the batch with ``tag`` masked: equal per-row log-weights, the removed model's guide replayed
    on the full guide's draws (the full guide also draws the masked ``z_tag``)."""
    full = _model(dropout_rate=0.0)
    small = Nexus(MODS[:2], NexusConfig(**SMALL, dropout_rate=0.0))
    small.load_state_dict({k: v for k, v in full.state_dict().items() if "tag" not in k})
    for missing in (0.0, 0.4):
        batch = _batch(missing)
        masked = batch.restrict(NAMES[:2])
        removed = make_batch(MODS[:2], {m: batch.data[m] for m in NAMES[:2]},
                             {m: batch.obs_mask[m] for m in NAMES[:2]})
        get = ((lambda v: (v.model, v.guide)) if pair == "training"
               else (lambda v: (v.evaluation_model(), v.evaluation_guide())))
        torch.manual_seed(3)
        lw_full, trace = _row_log_weights(*get(full), masked)
        lw_small, _ = _row_log_weights(*get(small), removed, trace)
        torch.testing.assert_close(lw_full, lw_small, rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------- linear-Gaussian hierarchy
DIMS = {"a": 3, "b": 2, "c": 4}
NOISE = {"a": 0.5, "b": 0.8, "c": 0.3}


def _hierarchy(seed=1):
    """``z_s ~ N(0, I_2)``, ``z_m = A_m z_s + c_m + s eps`` (``D_m = 2``), ``x_m = W_m z_m + b_m +
    sigma_m eps``: a Nexus with linear networks set to these, random linear encoders. Returns
    the model and the closed form ``log p(X_O) = log N(x_O; W(c) + b, W A A^T W^T + s^2 blockdiag(W W^T)
    + sigma^2 I)`` of any observation pattern."""
    g = torch.Generator().manual_seed(seed)
    mods = [Modality(m, (d,), "normal", {"scale": NOISE[m]}, encoder="linear", decoder="linear")
            for m, d in DIMS.items()]
    model = Nexus(mods, NexusConfig(latent_dim=2, bottom_latent_dim=2, message_dim=3, top_hidden_dims=[],
                                    top_scale=0.6))
    A, c, W, b = {}, {}, {}, {}
    with torch.no_grad():
        for m, d in DIMS.items():
            A[m], c[m] = torch.randn(2, 2, generator=g), torch.randn(2, generator=g)
            W[m], b[m] = torch.randn(d, 2, generator=g), torch.randn(d, generator=g)
            top = model.top_decoders[m].net[0]
            top.weight.copy_(A[m])
            top.bias.copy_(c[m])
            model.decoders[m].linear.weight.copy_(W[m])
            model.decoders[m].linear.bias.copy_(b[m])
    s = model.config.top_scale

    def sample(n, seed):
        gs = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 2, generator=gs)
        out = {}
        for m, d in DIMS.items():
            zm = z @ A[m].T + c[m] + s * torch.randn(n, 2, generator=gs)
            out[m] = zm @ W[m].T + b[m] + NOISE[m] * torch.randn(n, d, generator=gs)
        return out

    def log_p(data, masks):
        out = torch.empty(len(next(iter(data.values()))))
        patterns = torch.stack([masks[m] for m in DIMS], -1)
        for pattern in patterns.unique(dim=0):
            names = [m for m, o in zip(DIMS, pattern) if o]
            rows = (patterns == pattern).all(-1)
            WA = torch.cat([W[m] @ A[m] for m in names])
            cov = WA @ WA.T + torch.block_diag(*[s**2 * W[m] @ W[m].T + NOISE[m] ** 2 * torch.eye(DIMS[m])
                                                 for m in names])
            mean = torch.cat([W[m] @ c[m] + b[m] for m in names])
            x = torch.cat([data[m][rows] for m in names], -1)
            out[rows] = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
        return out

    return model, sample, log_p


@pytest.mark.usefixtures("float64")
def test_evaluation_bound_below_the_closed_form():
    """Per row, the evaluation ELBO (mean of 400 draws) is below ``log p(X_O)`` (beyond 4 standard
    errors nowhere, and below on average); the importance-weighted estimate with K = 2000 lies
    between the ELBO and ``log p``."""
    from tests.oracles.linear_gaussian import mixed_row_masks

    model, sample, log_p = _hierarchy()
    n = 42
    data = sample(n, seed=2)
    masks = mixed_row_masks(list(DIMS), n, seed=3)
    batch = make_batch(model.modalities, data, masks)
    truth = log_p(data, masks)
    torch.manual_seed(0)
    lw = importance_log_weights(model.evaluation_model(), model.evaluation_guide(), batch, num_particles=400,
                                max_plate_nesting=1).detach()  # (K, B)
    elbo, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    gap = truth - elbo
    # statistical check: 4 SE one-sided: false-alarm rate 3.2e-5 per entry, summed over entries (normal approx.)
    assert (gap > -4 * se).all()
    assert float(gap.mean()) > 4 * float(gap.std() / math.sqrt(n))
    iw = log_likelihood(model, batch, K=2000, seed=0, khat=False).values
    # statistical check: 4 SE one-sided: false-alarm rate 3.2e-5 per entry, summed over entries (normal approx.)
    assert (iw > elbo - 4 * se).all()
    assert float((iw - truth).mean()) < 0.05 + 4 * float((iw - truth).std() / math.sqrt(n))
    assert float((truth - iw).mean()) < float(gap.mean())  # tighter than the ELBO


# ---------------------------------------------------------------------- proposals and generation
def test_proposal_draws_unobserved_bottom_latents_from_the_top_decoder():
    model = _model()
    batch = _batch(0.0).restrict(["img"])
    tr = poutine.trace(model.iw_guide).get_trace(batch)
    z = tr.nodes["z"]["value"]
    for m in ("vec", "tag"):
        site = tr.nodes[f"z_{m}"]
        assert site["mask"] is None and not site["is_observed"]
        fn = site["fn"].base_dist
        torch.testing.assert_close(fn.loc, model.top_decoders[m](z))
        torch.testing.assert_close(fn.scale, torch.full_like(fn.scale, model.config.top_scale))
    q = model.bottom_posterior(batch, "img").base_dist
    torch.testing.assert_close(tr.nodes["z_img"]["fn"].base_dist.loc, q.loc)
    # the top posterior is computed from the img draw alone: rows with img give the same z params
    # as the plug-in encode of img with that draw
    torch.testing.assert_close(tr.nodes["z"]["fn"].base_dist.loc,
                               model.top_posterior({m: tr.nodes[f"z_{m}"]["value"] for m in NAMES},
                                                   torch.tensor([[True, False, False]])).base_dist.loc)


def test_cross_generation_goes_through_the_top_latent():
    """``x_t = mean p(x_t | z_t = f_t(E q(z_sigma | X_O)))``, and a row's own observed modality is
    reconstructed by its own VAE."""
    model = _model()
    batch = _batch(0.4)
    out = model.cross_generate(batch.restrict(["vec"]), ["img", "tag"])
    z = model.encode(batch.restrict(["vec"])).mean
    for t in ("img", "tag"):
        expected = model.likelihoods[t].mean(model.decoders[t](model.top_decoders[t](z)))
        torch.testing.assert_close(out[t], expected)
    rec = model.reconstruct(batch)
    rows = batch.row_mask("vec")
    own = model.likelihoods["vec"].mean(model.decoders["vec"](model.bottom_posterior(batch, "vec").mean))
    torch.testing.assert_close(rec["vec"][rows], own[rows])


def test_equal_draws_for_training_and_reference_with_particles():
    """Two particles: the objective vectorises them (one dropout draw per particle and row) and
    stays finite; its expectation matches the one-particle objective's mean."""
    model = _model(num_particles=2, dropout_rate=0.5)
    batch = _batch(0.4)
    torch.manual_seed(0)
    values = torch.stack([model.default_loss().differentiable_loss(model.model, model.guide, batch).detach()
                          for _ in range(200)])
    single = _model(dropout_rate=0.5)
    torch.manual_seed(1)
    ref = torch.stack([nexus_reference_loss(single, batch).detach() for _ in range(200)])
    assert torch.isfinite(values).all()
    se = math.sqrt(values.var() / 200 + ref.var() / 200)
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(float(values.mean() - ref.mean())) < 4 * se


def test_config_errors():
    for bad, match in (({"dropout_rate": 1.5}, "dropout_rate"), ({"top_scale": 0.0}, "top_scale"),
                       ({"bottom_latent_dim": -1}, "bottom_latent_dim"), ({"gamma": -1.0}, "gamma"),
                       ({"message_dim": 0}, "message_dim"), ({"top_hidden_dims": [0]}, "top_hidden_dims")):
        with pytest.raises(ValueError, match=match):
            Nexus(MODS, NexusConfig(**bad))
    with pytest.raises(ValueError, match="gammas name unknown modalities"):
        Nexus(MODS, NexusConfig(gammas={"txt": 2.0}))
    with pytest.raises(TypeError, match="NexusConfig"):
        Nexus(MODS, MVAEConfig())


def test_same_losses_helper_catches_a_wrong_gamma():
    """Positive control for the reference check: a reference with another gamma disagrees."""
    model = _model(gamma=2.0)
    batch = _batch(0.0)
    other = _model(gamma=3.0)
    other.load_state_dict(model.state_dict())
    loss = model.default_loss()
    with pytest.raises(AssertionError):
        assert_same_loss_and_grads(model, lambda: loss.differentiable_loss(model.model, model.guide, batch),
                                   lambda: nexus_reference_loss(other, batch))
