"""MCVAE (Antelmi et al. 2019): reference equality, identities on the linear-Gaussian oracle,
Molchanov et al.'s KL approximation, masking = removing, the sparse model's pruning."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from pyro.distributions.kl import kl_divergence
from scipy import integrate

from pyromv.data import Modality, MultimodalDataset, make_batch, mcar
from pyromv.distributions.dropout import (
    K1,
    ImproperLogUniform,
    VariationalDropoutNormal,
    log_uniform_kl,
)
from pyromv.infer import ELBO, StratifiedELBO
from pyromv.metrics.likelihood import log_likelihood
from pyromv.models import MCVAE, MCVAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.mcvae import mcvae_reference_loss
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    mixed_row_masks,
    modalities,
    set_decoders,
    set_unimodal_posterior_encoders,
)

# ---------------------------------------------------------------------- reference equality
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality("img", (1, 8, 8), likelihood="continuous_bernoulli",
             encoder={"name": "conv", "kwargs": {"channels": [4, 8], "hidden_dim": 8}},
             decoder={"name": "conv", "kwargs": {"channels": [8, 4], "hidden_dim": 8}}),
    Modality("vec", (5,), likelihood="normal", likelihood_kwargs={"scale": 0.7}, encoder=MLP, decoder=MLP),
    Modality("tag", (3,), likelihood="categorical", likelihood_kwargs={"num_categories": 4}, encoder=MLP,
             decoder=MLP),
]
SPREAD = torch.tensor([-9.0, -1.0, 0.5, 9.0])  # log alpha on both sides of the [-8, 8] clip


def _dataset(n: int = 24) -> MultimodalDataset:
    g = torch.Generator().manual_seed(3)
    data = {
        "img": torch.rand(n, 1, 8, 8, generator=g),
        "vec": torch.randn(n, 5, generator=g),
        "tag": torch.randint(0, 4, (n, 3), generator=g),
    }
    return MultimodalDataset(MODS, data)


def _mcvae(mods=MODS, seed: int = 0, log_alpha: torch.Tensor | None = None, **cfg) -> MCVAE:
    torch.manual_seed(seed)
    model = MCVAE(mods, MCVAEConfig(latent_dim=4, **cfg))
    if log_alpha is not None:
        with torch.no_grad():
            model.log_alpha.copy_(log_alpha)
    return model


CASES = {
    "plain": dict(),
    "plain-k3-beta-dims": dict(num_particles=3, beta=0.5, likelihood_rescaling="dims"),
    "sparse": dict(sparse=True, log_alpha=SPREAD),
    "sparse-k2-beta": dict(sparse=True, num_particles=2, beta=2.0, log_alpha=SPREAD),
}


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradients_equal_the_torch_reference(case, missing):
    model = _mcvae(**CASES[case])
    data = _dataset()
    batch = (mcar(data, missing, seed=1) if missing else data).batch()
    if missing:
        assert not all(bool(batch.row_mask(m).all()) for m in model.names)
    grads = assert_matches_reference(model, mcvae_reference_loss, batch)
    if model.config.sparse:  # the clip: no KL gradient beyond |log alpha| = 8, some inside
        la_grad = grads["log_alpha"]
        assert la_grad[1:3].abs().min() > 0


# ---------------------------------------------------------------------- the linear-Gaussian oracle
DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT, N = 2, 70  # 10 rows of each of the 7 observation patterns

F64 = pytest.mark.usefixtures("float64")  # the oracle's identities hold to ~1e-12 in float64


@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


def _oracle_model(names=None, exact: bool = False, **cfg) -> MCVAE:
    lg = _lg()
    model = MCVAE(modalities(lg, names), MCVAEConfig(latent_dim=LATENT, **cfg))
    set_decoders(model, lg)
    set_unimodal_posterior_encoders(model, lg)  # q(z | x_c) = p(z | x_c)
    if not exact:
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            for m in model.names:
                enc = model.encoders[m]
                enc.linear.weight.mul_(1 + 0.3 * torch.randn(enc.linear.weight.shape, generator=g))
                enc.log_scale.add_(0.3)
    return model


def _channel_elbos(model: MCVAE, lg: LinearGaussian, data, masks) -> torch.Tensor:
    """``(M, N)`` closed-form ELBO of each channel's posterior, reconstructing every observed
    modality (0 where the row misses the channel)."""
    out = []
    for m in model.names:
        loc, scale = model.encoders[m](data[m])
        elbo = lg.elbo(data, loc.detach(), scale.detach(), masks)
        out.append(torch.where(masks[m], elbo, torch.zeros_like(elbo)))
    return torch.stack(out)


def _gaussian_kl_to_prior(loc, scale) -> torch.Tensor:
    return 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)


def _estimates(model, batch, reps: int = 10, particles: int = 50) -> torch.Tensor:
    loss = ELBO(num_particles=particles, max_plate_nesting=2)
    with torch.no_grad():
        return torch.tensor([-loss.loss(model.model, model.guide, batch) for _ in range(reps)])


@F64
def test_one_channel_is_the_plain_vae_elbo():
    """With one channel the objective is E_q log p(x|z) - KL(q || p) (closed form on the oracle)."""
    full = _lg()
    lg = LinearGaussian({"a": full.W["a"]}, {"a": full.b["a"]}, {"a": full.s["a"]})
    model = _oracle_model(["a"])
    data = {"a": full.sample(N, seed=2)["a"]}
    batch = make_batch(model.modalities, data)
    loc, scale = model.encoders["a"](data["a"])
    closed = lg.elbo(data, loc.detach(), scale.detach()).sum()
    est = _estimates(model, batch)
    assert est.std() > 0
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(est.mean() - closed) < 4 * est.std() / math.sqrt(len(est))
    assert (lg.elbo(data, loc.detach(), scale.detach()) < lg.log_marginal(data)).all()


@F64
@pytest.mark.parametrize("rows", ["complete", "mixed"])
def test_loss_is_the_sum_of_the_channels_elbos(rows):
    """sum_c [E_{q_c} log p(X_O|z) - KL(q_c || p)] over the observed channels: every channel's
    posterior reconstructs every observed modality, each KL counted once (not |O| times)."""
    lg = _lg()
    model = _oracle_model()
    data = lg.sample(N, seed=2)
    masks = mixed_row_masks(lg.names, N, seed=3) if rows == "mixed" else {m: torch.ones(N, dtype=torch.bool)
                                                                          for m in lg.names}
    batch = make_batch(model.modalities, data, masks)
    per_channel = _channel_elbos(model, lg, data, masks)
    closed = per_channel.sum()
    est = _estimates(model, batch, particles=200)
    se = est.std() / math.sqrt(len(est))
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 (normal approx.)
    assert abs(est.mean() - closed) < 4 * se
    # power: the KL counted once per pair of channels (|O| times per channel) is far off
    kl = torch.stack([torch.where(masks[m], _gaussian_kl_to_prior(*model.encoders[m](data[m])).detach(), 0.0)
                      for m in model.names])
    nobs = sum(masks[m].double() for m in lg.names)
    heavy = closed - ((nobs - 1) * kl).sum()
    # statistical check: detection at 10 SE: an absent difference would pass with probability 7.6e-24
    assert abs(closed - heavy) > 10 * se


@F64
def test_evaluation_bound_is_below_log_p_per_row():
    """The evaluation loss is, per row, the mean over observed channels of their ELBOs
    (closed form), below log p(X_O); with q_c = p(z | x_c) it reaches log p on one-channel rows."""
    lg = _lg()
    data = lg.sample(N, seed=2)
    masks = mixed_row_masks(lg.names, N, seed=3)
    nobs = sum(masks[m].long() for m in lg.names)
    log_p = lg.log_marginal(data, masks)
    reps = 40
    rep_data = {m: v.repeat(reps, 1) for m, v in data.items()}
    rep_masks = {m: v.repeat(reps) for m, v in masks.items()}
    for exact in (True, False):
        model = _oracle_model(exact=exact)
        batch = make_batch(model.modalities, rep_data, rep_masks)
        bound = StratifiedELBO(analytic_kl=True, max_plate_nesting=2)
        assert type(model.evaluation_loss()) is StratifiedELBO and model.evaluation_loss().analytic_kl
        with torch.no_grad():
            values = model.evaluation_loss().per_datum(model.model, model.guide, batch).reshape(reps, N)
            again = bound.per_datum(model.model, model.guide, batch).reshape(reps, N)
        mean, se = values.mean(0), values.std(0) / math.sqrt(reps)
        closed = _channel_elbos(model, lg, data, masks).sum(0) / nobs
        # statistical check: 4.5 SE two-sided: false-alarm rate 6.8e-6 per entry, summed over entries (normal approx.)
        assert ((mean - closed).abs() <= 4.5 * se + 1e-9).all()
        # statistical check: 4.5 SE one-sided: false-alarm rate 3.4e-6 per entry, summed over entries (normal approx.)
        assert (mean <= log_p + 4.5 * se + 1e-9).all()  # a bound, row by row
        assert (closed[nobs > 1] < log_p[nobs > 1] - 1e-3).all()
        gap = (log_p - again.mean(0))[nobs > 1]
        assert gap.mean() > 4 * gap.std() / math.sqrt(len(gap))
        if exact:  # the exact one-channel posterior: ELBO = log p in expectation
            torch.testing.assert_close(closed[nobs == 1], log_p[nobs == 1], rtol=0, atol=1e-9)


@F64
def test_log_likelihood_is_defined_for_the_plain_model_only():
    lg = _lg()
    data = lg.sample(12, seed=2)
    plain = _oracle_model(exact=True)
    batch = make_batch(plain.modalities, data, mixed_row_masks(lg.names, 12, seed=3))
    result = log_likelihood(plain, batch, K=200, khat=False, seed=0)
    log_p = lg.log_marginal(data, {m: batch.row_mask(m) for m in lg.names})
    one = sum(batch.row_mask(m).long() for m in lg.names) == 1
    assert one.any() and (~one).any()
    # one channel: the proposal is p(z | x_c) itself, exact; several: the mixture of the
    # unimodal posteriors, a wider proposal than p(z | X_O) (IWAE_200 a little below log p)
    torch.testing.assert_close(result.values[one], log_p[one], rtol=0, atol=1e-9)
    assert (result.values - log_p)[~one].abs().max() < 0.3
    sparse = _oracle_model(exact=True, sparse=True)
    with pytest.raises(ValueError, match="improper"):
        log_likelihood(sparse, batch, K=10, khat=False)


# ---------------------------------------------------------------------- masking = removing
@F64
def test_masking_a_channel_equals_removing_it():
    """Channel ``c`` (the last) missing in every row gives the loss of the model built without
    it (same networks, same draws); per row, the evaluation bound of a row that misses ``c``
    is that of the model without ``c``."""
    lg = _lg()
    B = 8  # B * LATENT = 16: the first channels' normal draws coincide for 2 and 3 channels
    torch.manual_seed(0)
    three = torch.randn(1, 3, B, LATENT)
    torch.manual_seed(0)
    assert torch.equal(three[:, :2], torch.randn(1, 2, B, LATENT)), "precondition on torch's normal sampler"
    data = lg.sample(B, seed=4)
    masks = {"a": torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool),
             "b": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool),
             "c": torch.tensor([0, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)}
    for sparse in (False, True):
        full = _oracle_model(sparse=sparse)
        if sparse:
            with torch.no_grad():
                full.log_alpha.copy_(torch.tensor([-2.0, 0.7]))
        two = _oracle_model(["a", "b"], sparse=sparse)
        state = {k: v for k, v in full.state_dict().items() if ".c." not in f".{k}."}
        two.load_state_dict(state, strict=True)
        none_c = {**masks, "c": torch.zeros(B, dtype=torch.bool)}
        masked = make_batch(full.modalities, data, none_c)
        removed = make_batch(two.modalities, {m: data[m] for m in ("a", "b")},
                             {m: masks[m] for m in ("a", "b")})
        losses = []
        for model, batch in ((full, masked), (two, removed)):
            torch.manual_seed(5)
            losses.append(model.default_loss().differentiable_loss(model.model, model.guide, batch))
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-10)
        rows = []
        for model, batch in ((full, make_batch(full.modalities, data, masks)), (two, removed)):
            torch.manual_seed(6)
            rows.append(model.evaluation_loss().per_datum(model.model, model.guide, batch).detach())
        miss = ~masks["c"]
        torch.testing.assert_close(rows[0][miss], rows[1][miss], rtol=1e-12, atol=1e-10)
        assert not torch.allclose(rows[0][~miss], rows[1][~miss])


# ---------------------------------------------------------------------- Molchanov's KL
def _exact_kl(log_alpha: float) -> float:
    """``-1/2 log a + E_{eps ~ N(1, a)} log|eps| + (gamma + log 2)/2`` by quadrature (the KL to
    the log-uniform prior, Kingma et al. 2015, with the constant that makes it vanish as
    ``a -> inf``: E log|N(0, 1)| = -(gamma + log 2)/2)."""
    s = math.exp(0.5 * log_alpha)
    pdf = 1 / math.sqrt(2 * math.pi)
    value, _ = integrate.quad(lambda u: math.log(abs(1 + s * u)) * pdf * math.exp(-u * u / 2), -14, 14,
                              points=[-1 / s] if 1 / s < 14 else None, limit=500, epsabs=1e-12)
    return -0.5 * log_alpha + value + (0.5772156649015329 + math.log(2)) / 2


@F64
def test_molchanov_kl_matches_the_defining_integral():
    grid = torch.linspace(-8, 8, 33)
    approx = log_uniform_kl(grid)
    exact = torch.tensor([_exact_kl(float(a)) for a in grid])
    assert (approx - exact).abs().max() < 0.012  # Molchanov et al.'s fit (max error ~0.009 here)
    assert (approx[1:] < approx[:-1]).all()  # decreasing in alpha
    # a wrong sign or a log(1 + alpha) term would be off by far more
    assert (0.5 * torch.log1p(grid.exp()) - exact).abs().max() > 1.0


@F64
def test_molchanov_kl_limits_and_constants():
    # alpha -> inf: the KL vanishes; alpha -> 0: -1/2 log alpha + k1
    assert log_uniform_kl(torch.tensor(30.0)).abs() < 1e-9
    torch.testing.assert_close(log_uniform_kl(torch.tensor(-30.0)), torch.tensor(15.0 + K1), rtol=0, atol=1e-9)
    # k1 is the limit constant (gamma + log 2) / 2 = 0.63518 up to the fit
    assert abs(K1 - (0.5772156649015329 + math.log(2)) / 2) < 1e-3
    # large alpha: 1/2 log(1 + 1/alpha) dominates
    la = torch.tensor(6.0)
    assert abs(log_uniform_kl(la) / (0.5 * torch.log1p((-la).exp())) - 1) < 0.05


@F64
def test_dropout_normal_and_its_kl():
    loc = torch.tensor([[0.5, -2.0, 0.0], [3.0, 0.1, -1.0]])
    la = torch.tensor([-9.0, 0.3, 9.0])
    q = VariationalDropoutNormal(loc, la)
    torch.testing.assert_close(q.scale**2, la.exp() * (loc.abs() + 1e-8) ** 2)  # variance alpha mu^2
    e = q.expand((4, 2, 3))
    assert e.log_alpha.shape == (4, 2, 3) and torch.equal(e.scale[1], q.scale)
    kl = kl_divergence(q.to_event(1), ImproperLogUniform((3,)).to_event(1))
    per_dim = log_uniform_kl(la.clamp(-8, 8))
    torch.testing.assert_close(kl, per_dim.sum().expand(2))  # depends on alpha, not on mu
    p = ImproperLogUniform((3,))
    torch.testing.assert_close(p.log_prob(loc[1]), -loc[1].abs().log())
    with pytest.raises(NotImplementedError, match="improper"):
        p.sample()


# ---------------------------------------------------------------------- the sparse model
def test_sparse_model_keeps_the_true_number_of_dimensions():
    """The paper's synthetic check: 3 channels generated from 2 latent dimensions,
    fitted with 5; the dropout rates separate the 2 used dimensions from the 3 others."""
    lg = LinearGaussian.random({"a": 4, "b": 4, "c": 4}, 2, {"a": 0.3, "b": 0.3, "c": 0.3}, seed=1)
    data = lg.sample(100, seed=2)
    torch.manual_seed(0)
    model = MCVAE(modalities(lg), MCVAEConfig(latent_dim=5, sparse=True))
    batch = make_batch(model.modalities, data)
    loss = model.default_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(700):
        value = loss.differentiable_loss(model.model, model.guide, batch)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert int(model.kept_dimensions().sum()) == 2
    rates = model.dropout_rates()
    assert rates[model.kept_dimensions()].max() < 0.1 and rates[~model.kept_dimensions()].min() > 0.5


def test_pruned_dimensions_are_ignored_when_decoding():
    model = _mcvae(sparse=True, dropout_threshold=0.5, log_alpha=torch.tensor([-3.0, 1.0, -0.5, 0.0]))
    keep = model.kept_dimensions()
    assert keep.tolist() == [True, False, True, False]  # rate < 0.5 <=> log alpha < 0
    torch.testing.assert_close(model.dropout_rates(), torch.sigmoid(model.log_alpha.detach()))
    z = torch.randn(3, 4)
    moved = z + torch.tensor([0.0, 5.0, 0.0, -5.0])
    assert torch.equal(model.decode(z)["vec"].mean, model.decode(moved)["vec"].mean)
    assert not torch.equal(model.decode(z)["vec"].mean, model.decode(z + 1.0)["vec"].mean)
    keep_all = _mcvae(sparse=True, dropout_threshold=1.0, log_alpha=torch.full((4,), 7.0))
    assert keep_all.kept_dimensions().all()
    plain = _mcvae()
    assert plain.kept_dimensions().all()
    with pytest.raises(ValueError, match="sparse"):
        plain.dropout_rates()


def test_sparse_posterior_has_variance_alpha_mu_squared():
    model = _mcvae(sparse=True, log_alpha=SPREAD)
    batch = _dataset().batch()
    q = model.encode(batch)
    loc = torch.stack([model.encoders[m](model.likelihoods[m].encoder_input(batch.data[m]))[0]
                       for m in model.names], -2)
    comp = q.components.base_dist
    torch.testing.assert_close(comp.scale, SPREAD.to(loc).exp().sqrt() * (loc.abs() + 1e-8))
    torch.testing.assert_close(q.mean, loc.mean(-2))  # uniform mixture of the channels


@pytest.mark.parametrize("cfg, match", [
    ({"sparse": True, "analytic_kl": False}, "analytic_kl"),
    ({"dropout_threshold": 0.0}, "dropout_threshold"),
    ({"dropout_threshold": 1.5}, "dropout_threshold"),
    ({"latent_dim": 0}, "latent_dim"),
])
def test_bad_configs_are_value_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        MCVAE(MODS, MCVAEConfig(**cfg))


def test_bad_batches_are_refused():
    model = _mcvae()
    other = MultimodalDataset(MODS[:2], {k: v for k, v in _dataset().data.items() if k != "tag"}).batch()
    with pytest.raises(ValueError, match="modalities"):
        model.default_loss().differentiable_loss(model.model, model.guide, other)
    with pytest.raises(TypeError, match="MultimodalBatch"):
        model.encode({"img": torch.zeros(2, 1, 8, 8)})
