"""CVAE: reference loss, a linear-Gaussian conditional oracle, masking of the conditioning
modalities, the conditional-model surface (what it can and cannot generate) and bad inputs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pyromv.data import Modality, MultimodalBatch, MultimodalDataset, make_batch, mcar
from pyromv.infer import ELBO, importance_log_weights
from pyromv.models import CVAE, CVAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.cvae import cvae_reference_loss

MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality("img", (1, 4, 4), "continuous_bernoulli", encoder=MLP, decoder=MLP),
    Modality("vec", (5,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
    Modality("cat", (2,), "categorical", {"num_categories": 4}, encoder=MLP, decoder=MLP),
]
SMALL = {"latent_dim": 3, "encoder_hidden_dims": [8], "prior_hidden_dims": [8]}


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.rand(n, 1, 4, 4, generator=g), "vec": torch.randn(n, 5, generator=g),
            "cat": torch.randint(4, (n, 2), generator=g)}


def _batch(missing: float, n: int = 20, seed: int = 0) -> MultimodalBatch:
    data = MultimodalDataset(MODS, _data(n, seed))
    return (mcar(data, missing, seed=1) if missing else data).batch()


def _model(seed: int = 0, mods=MODS, **cfg) -> CVAE:
    torch.manual_seed(seed)
    return CVAE(mods, CVAEConfig(**{**SMALL, **cfg}))


# ---------------------------------------------------------------------- reference loss
OPTIONS = [
    pytest.param({}, id="default"),
    pytest.param({"prior_network": False, "analytic_kl": False, "num_particles": 3, "beta": 0.5}, id="no-prior-mc"),
    pytest.param({"num_particles": 2, "beta": 2.0}, id="analytic-k2"),
    pytest.param({"main_modality": "cat", "conditioning": ["img"]}, id="cat-given-img"),
    pytest.param({"main_modality": "vec", "analytic_kl": False}, id="vec-mc"),
]


@pytest.mark.parametrize("missing", [0.0, 0.4], ids=["complete", "mcar40"])
@pytest.mark.parametrize("cfg", OPTIONS)
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = _batch(missing)
    if missing:
        assert not all(bool(batch.row_mask(m).all()) for m in model.names)
    unreached = None if cfg.get("conditioning") else ()
    assert_matches_reference(model, cvae_reference_loss, batch, unreached=unreached)


def test_reference_with_feature_level_missingness():
    """Entries missing inside ``vec`` (a condition) and inside ``cat`` (the output)."""
    model = _model(main_modality="cat")
    data = _data(12, 3)
    g = torch.Generator().manual_seed(4)
    masks = {"vec": torch.rand(12, 5, generator=g) > 0.3, "cat": torch.rand(12, 2, generator=g) > 0.3,
             "img": torch.rand(12, generator=g) > 0.3}
    batch = make_batch(MODS, data, masks)
    assert_matches_reference(model, cvae_reference_loss, batch, unreached=())


def test_the_reference_check_can_fail():
    model = _model()
    batch = _batch(0.4)
    with pytest.raises(AssertionError):
        assert_matches_reference(model, lambda m, b: 1.01 * cvae_reference_loss(m, b), batch)


# ---------------------------------------------------------------------- the conditional oracle
DT = torch.float64


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    yield
    torch.set_default_dtype(old)


class Oracle:
    r"""``z ~ N(P c + p0, diag(sp^2))`` (``P = 0, p0 = 0, sp = 1`` without a prior network),
    ``y = W z + A c + b + N(0, s^2 I)``, with ``W`` of orthogonal columns so that the exact
    posterior is diagonal. Closed forms (plain torch): ``log p(y | c) = log N(y; W mu_p + A c + b,
    W diag(sp^2) W^T + s^2 I)``; ``p(z | y, c) = N(L^-1 (mu_p / sp^2 + W^T (y - A c - b) / s^2),
    L^-1)`` with ``L = diag(1 / sp^2 + d^2 / s^2)``. A missing ``c`` is the zero vector (how
    the model sees it)."""

    dy, dc, D, s = 4, 3, 2, 0.4

    def __init__(self, prior_network: bool, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(self.dy, self.D, generator=g, dtype=DT))
        self.d = 0.7 + torch.rand(self.D, generator=g, dtype=DT)
        self.W = q * torch.sign(torch.diagonal(r)) * self.d
        self.A = torch.randn(self.dy, self.dc, generator=g, dtype=DT)
        self.b = torch.randn(self.dy, generator=g, dtype=DT)
        if prior_network:
            self.P = torch.randn(self.D, self.dc, generator=g, dtype=DT)
            self.p0 = torch.randn(self.D, generator=g, dtype=DT)
            self.sp = 0.5 + torch.rand(self.D, generator=g, dtype=DT)
        else:
            self.P, self.p0, self.sp = torch.zeros(self.D, self.dc, dtype=DT), torch.zeros(self.D, dtype=DT), \
                torch.ones(self.D, dtype=DT)
        self.prior_network = prior_network
        self.mods = [Modality("y", (self.dy,), "normal", {"scale": self.s}, decoder={"name": "linear"}),
                     Modality("c", (self.dc,), "normal")]

    def sample(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        c = torch.randn(n, self.dc, generator=g, dtype=DT)
        z = c @ self.P.T + self.p0 + self.sp * torch.randn(n, self.D, generator=g, dtype=DT)
        y = z @ self.W.T + c @ self.A.T + self.b + self.s * torch.randn(n, self.dy, generator=g, dtype=DT)
        return {"y": y, "c": c}

    def log_p(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mu_p = c @ self.P.T + self.p0
        cov = self.W @ torch.diag(self.sp**2) @ self.W.T + self.s**2 * torch.eye(self.dy, dtype=DT)
        mvn = torch.distributions.MultivariateNormal(mu_p @ self.W.T + c @ self.A.T + self.b, cov)
        return mvn.log_prob(y)

    def build(self, exact: bool = True) -> CVAE:
        torch.manual_seed(0)
        model = CVAE(self.mods, CVAEConfig(latent_dim=self.D, encoder_hidden_dims=[], prior_hidden_dims=[],
                                           prior_network=self.prior_network, analytic_kl=False))
        precision = 1 / self.sp**2 + self.d**2 / self.s**2
        post_var = 1 / precision
        zero = torch.zeros(self.D, 1, dtype=DT)
        with torch.no_grad():
            model.decoders["y"].linear.weight.copy_(torch.cat([self.W, self.A, torch.zeros(self.dy, 1)], 1))
            model.decoders["y"].linear.bias.copy_(self.b)
            if self.prior_network:
                _set_head(model.prior_net.head.linear, torch.cat([self.P, zero], 1), self.p0, self.sp)
            wy = post_var[:, None] * self.W.T / self.s**2
            wc = post_var[:, None] * (self.P / self.sp[:, None] ** 2 - self.W.T @ self.A / self.s**2)
            bias = post_var * (self.p0 / self.sp**2 - self.W.T @ self.b / self.s**2)
            scale = post_var.sqrt()
            if not exact:  # a wrong posterior: shifted and too wide
                bias, scale = bias + 0.5, 1.7 * scale
            _set_head(model.recognition.head.linear, torch.cat([wy, wc, zero], 1), bias, scale)
        return model


def _set_head(linear: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor) -> None:
    """A GaussianHead with ``loc = weight @ h + bias`` and constant ``scale``."""
    raw = scale - 1e-3
    linear.weight.copy_(torch.cat([weight, torch.zeros_like(weight)], 0))
    linear.bias.copy_(torch.cat([bias, raw + torch.log(-torch.expm1(-raw))]))  # softplus^-1


def _oracle_batch(oracle: Oracle, n: int, partial: bool):
    data = oracle.sample(n, seed=1)
    masks = None
    if partial:
        g = torch.Generator().manual_seed(2)
        has_c = torch.rand(n, generator=g) > 0.3
        has_y = (torch.rand(n, generator=g) > 0.2) | ~has_c
        masks = {"y": has_y, "c": has_c}
    batch = make_batch(oracle.mods, data, masks)
    c = torch.where(batch.row_mask("c").unsqueeze(-1), data["c"], torch.zeros(()))
    expected = torch.where(batch.row_mask("y"), oracle.log_p(data["y"], c), torch.zeros(()))
    return batch, expected


@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
@pytest.mark.parametrize("prior_network", [True, False], ids=["prior-net", "standard-prior"])
def test_elbo_with_the_exact_posterior_is_log_p_y_given_c(float64, prior_network, partial):
    """``log p(y, z | c) - log q(z | y, c) = log p(y | c)`` for every draw (zero-variance
    ELBO) when ``q`` is the exact posterior; rows missing ``y`` score exactly 0."""
    oracle = Oracle(prior_network)
    model = oracle.build(exact=True)
    batch, expected = _oracle_batch(oracle, 60, partial)
    lw = importance_log_weights(model.model, model.guide, batch, num_particles=5, max_plate_nesting=1)
    torch.testing.assert_close(lw, expected.expand(5, -1), rtol=0, atol=1e-9)
    # analytic KL: only the reconstruction term is sampled; its mean is exact
    loss = ELBO(num_particles=200, analytic_kl=True, max_plate_nesting=1).loss(model.model, model.guide, batch)
    assert abs(loss + float(expected.sum())) < 3.0  # about 4 standard deviations (60 rows, 200 draws)


@pytest.mark.parametrize("prior_network", [True, False], ids=["prior-net", "standard-prior"])
def test_elbo_of_a_wrong_posterior_stays_below_log_p_y_given_c(float64, prior_network):
    oracle = Oracle(prior_network)
    model = oracle.build(exact=False)
    batch, expected = _oracle_batch(oracle, 60, partial=True)
    scored = batch.row_mask("y")
    torch.manual_seed(0)
    with torch.no_grad():
        lw = importance_log_weights(model.model, model.guide, batch, num_particles=400, max_plate_nesting=1)
    elbo, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    gap = (elbo - expected)[scored]
    # statistical check: 4 SE one-sided: false-alarm rate 3.2e-5 per entry, summed over entries (normal approx.)
    assert (gap < 4 * se[scored]).all()  # per row
    assert float(gap.mean()) + 3 * float(gap.std() / math.sqrt(gap.numel())) < 0  # over rows: strictly below
    assert torch.equal(lw[:, ~scored], torch.zeros_like(lw[:, ~scored]))  # no y: log p(nothing | c) = 0


def test_log_likelihood_reports_log_p_y_given_c(float64):
    """The metric's joint estimate of a CVAE is ``log p(y | c)`` (the exact posterior as
    proposal: exact), reported with ``given = ("c",)``; the conditional ``given=c`` (proposal
    ``p(z | c)``) is consistent; ``c`` cannot be a target."""
    from pyromv.metrics import log_likelihood

    oracle = Oracle(prior_network=True)
    model = oracle.build(exact=True)
    batch, expected = _oracle_batch(oracle, 30, partial=True)
    joint = log_likelihood(model, batch, K=4, khat=False, seed=0)
    rows = batch.row_mask("y").nonzero().flatten()
    assert torch.equal(joint.rows, rows) and joint.given == ("c",) and joint.targets == ("y",)
    torch.testing.assert_close(joint.values, expected[rows], rtol=0, atol=1e-8)
    cond = log_likelihood(model, batch, K=3000, given=["c"], targets=["y"], khat=False, seed=0)
    both = (batch.row_mask("y") & batch.row_mask("c")).nonzero().flatten()
    assert torch.equal(cond.rows, both)
    assert abs(float((cond.values - expected[both]).mean())) < 0.05
    with pytest.raises(ValueError, match="'c'"):
        log_likelihood(model, batch, K=4, targets=["c"])


# ---------------------------------------------------------------------- masking the conditions
def _reduced_copy(model: CVAE) -> CVAE:
    """The same CVAE built without ``cat`` (its input columns are the last ones: dropped)."""
    reduced = CVAE(MODS[:2], dataclasses.replace(model.config))
    state = model.state_dict()
    new = {}
    for k, v in reduced.state_dict().items():
        new[k] = state[k][..., : v.shape[-1]] if state[k].shape != v.shape else state[k]
    reduced.load_state_dict(new)
    return reduced


@pytest.mark.parametrize("prior_network", [True, False])
def test_masking_a_condition_equals_removing_it(prior_network):
    model = _model(prior_network=prior_network)
    reduced = _reduced_copy(model)
    batch = _batch(0.3, seed=5)
    masked = batch.restrict(["img", "vec"])
    removed = MultimodalBatch({m: batch.data[m] for m in ("img", "vec")},
                              {m: batch.obs_mask[m] for m in ("img", "vec")})
    weights = []
    for mdl, b in ((model, masked), (reduced, removed)):
        torch.manual_seed(3)
        weights.append(importance_log_weights(mdl.model, mdl.guide, b, num_particles=4, max_plate_nesting=1))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.encode(masked).mean, reduced.encode(removed).mean)
    torch.testing.assert_close(model.cross_generate(masked)["img"], reduced.cross_generate(removed)["img"])
    torch.testing.assert_close(model.prior().mean, reduced.prior().mean)


def test_missing_data_is_never_seen():
    """Changing what a row misses (a condition's rows, entries inside a condition, the output)
    changes neither the loss nor any gradient nor the encoding."""
    model = _model()
    data = _data(16, 7)
    g = torch.Generator().manual_seed(8)
    masks = {"img": torch.rand(16, generator=g) > 0.4, "vec": torch.rand(16, 5, generator=g) > 0.4,
             "cat": torch.rand(16, generator=g) > 0.4}
    batch = make_batch(MODS, data, masks)
    other = _data(16, 9)
    hidden = {}
    for m, x in batch.data.items():
        keep = batch.obs_mask[m]
        keep = keep.reshape(keep.shape + (1,) * (x.dim() - keep.dim()))
        hidden[m] = torch.where(keep, x, other[m])
    changed = MultimodalBatch(hidden, batch.obs_mask)
    assert not all(torch.equal(changed.data[m], batch.data[m]) for m in MODS_NAMES)
    results = []
    for b in (batch, changed):
        torch.manual_seed(1)
        loss = model.default_loss().differentiable_loss(model.model, model.guide, b)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((loss, grads, model.encode(b).mean))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    assert torch.equal(results[0][2], results[1][2])


MODS_NAMES = [m.name for m in MODS]


def test_rows_missing_the_output_encode_to_the_conditional_prior_and_add_nothing():
    model = _model()
    batch = _batch(0.0).restrict(["vec", "cat"])
    q, p = model.encode(batch), model.conditional_prior(batch)
    torch.testing.assert_close(q.mean, p.mean, rtol=0, atol=0)
    torch.testing.assert_close(q.stddev, p.stddev, rtol=0, atol=0)
    lw = importance_log_weights(model.model, model.guide, batch, num_particles=3, max_plate_nesting=1)
    assert torch.equal(lw, torch.zeros_like(lw))
    assert model.default_loss().loss(model.model, model.guide, batch) == 0.0
    # the conditional prior does depend on the conditions; with nothing observed it is prior()
    assert not torch.allclose(p.mean[0], p.mean[1])
    empty = model.conditional_prior(batch.restrict([]))
    torch.testing.assert_close(empty.mean, model.prior().mean.expand_as(empty.mean))


# ---------------------------------------------------------------------- the surface of a conditional model
def test_generation_targets_and_unconditional_generate():
    model = _model()
    batch = _batch(0.3)
    assert model.generated_modalities == ["img"] and model.conditioning == ["vec", "cat"]
    for m in ("vec", "cat"):
        with pytest.raises(ValueError, match=f"cannot generate modality '{m}'"):
            model.cross_generate(batch, [m])
        with pytest.raises(ValueError, match=f"'{m}'"):
            model.generate(3, [m])
        with pytest.raises(ValueError, match=f"'{m}'"):
            model._point(torch.zeros(2, 3), [m])
    assert set(model.reconstruct(batch)) == {"img"} and set(model.decode(torch.zeros(2, 3))) == {"img"}
    # generate(n) = p(y | z, nothing) with z ~ p(z | nothing) = prior(): cross_generate of an empty row
    torch.manual_seed(4)
    out = model.generate(6)["img"]
    torch.manual_seed(4)
    z = model.prior().sample((6,))
    empty = make_batch(MODS, _data(6, 0)).restrict([])
    cond = model.condition_input(empty)
    assert not cond.any()
    expected = model.likelihoods["img"].mean(model.decoders["img"](torch.cat([z, cond], -1)))
    torch.testing.assert_close(out, expected)
    # conditioning data matter for cross-generation
    a = model.cross_generate(batch.restrict(["vec", "cat"]))["img"]
    b = model.cross_generate(batch.restrict(["cat"]))["img"]
    assert not torch.allclose(a, b)


def test_metrics_respect_the_generated_modalities():
    from pyromv.metrics import cross_coherence, joint_coherence, reconstruction_error
    from pyromv.samplers import build_sampler

    model = _model()
    batch = _batch(0.2)
    labelled = MultimodalBatch(batch.data, batch.obs_mask, torch.arange(batch.batch_size) % 2)
    clf = {m: (lambda x: torch.stack([x.flatten(1)[:, 0], -x.flatten(1)[:, 0]], -1)) for m in MODS_NAMES}
    coh = cross_coherence(model, labelled, {"img": clf["img"]})
    assert set(coh.by_pair) == {"vec", "cat", "vec+cat"} and all(set(v) == {"img"} for v in coh.by_pair.values())
    with pytest.raises(ValueError, match="leaves no target"):
        cross_coherence(model, labelled, clf, subsets=[["img"]])
    with pytest.raises(ValueError, match="two generated modalities"):
        joint_coherence(model, clf, n=4)
    rec = reconstruction_error(model, batch)
    assert set(rec["by_modality"]) == {"img"}
    synthetic = build_sampler("prior").fit(model, MultimodalDataset(MODS, _data(8, 1))).generate(5, classifier=clf)
    assert synthetic.names == ["img"] and len(synthetic) == 5


# ---------------------------------------------------------------------- bad configurations and inputs
@pytest.mark.parametrize("cfg, match", [
    ({"main_modality": "nope"}, "'nope'"),
    ({"conditioning": ["vec", "nope"]}, "'nope'"),
    ({"conditioning": ["img"]}, "main modality"),
    ({"conditioning": ["vec", "vec"]}, "twice"),
    ({"encoder_hidden_dims": [0]}, "encoder_hidden_dims"),
    ({"main_modality": 3}, "main_modality"),
    ({"conditioning": "vec"}, "conditioning"),
])
def test_bad_configs_are_refused(cfg, match):
    with pytest.raises((ValueError, TypeError), match=match):
        CVAE(MODS, CVAEConfig(**{**SMALL, **cfg}))


def test_bad_batches_are_refused():
    model = _model()
    with pytest.raises(TypeError, match="MultimodalBatch"):
        model.encode({"img": torch.zeros(1)})
    other = MultimodalBatch({"img": torch.zeros(2, 1, 4, 4)}, {"img": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="modalities"):
        model.cross_generate(other)
