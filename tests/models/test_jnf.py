"""JNF: both stages equal hand-written torch references; stage 2 trains only the unimodal
posteriors; the flows are proper densities; the subset target prod_s q_s / p^(|S|-1) and its MCMC
sampler recover the exact posterior of the linear-Gaussian oracle; clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from pyro.ops.stats import effective_sample_size

from pyromv.data import Modality, MultimodalDataset, make_batch, mcar
from pyromv.distributions.flow_posterior import (
    EmpiricalRows,
    RowwiseChoice,
    flow_posterior,
    masked_autoregressive_flow,
    set_identity,
)
from pyromv.models import JNF, JNFConfig
from pyromv.testing import assert_matches_reference, assert_same_loss_and_grads
from pyromv.testing.reference.jnf import jnf_reference_loss, jnf_unimodal_reference_loss
from pyromv.training import Trainer, TrainerConfig
from tests.oracles.linear_gaussian import (
    LinearGaussian,
    modalities,
    set_decoders,
    set_unimodal_posterior_encoders,
)

MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality("img", (1, 8, 8), likelihood="continuous_bernoulli", encoder="conv", decoder="conv"),
    Modality("vec", (5,), likelihood="normal", likelihood_kwargs={"scale": 0.7}, encoder=MLP, decoder=MLP),
    Modality("tag", (3,), likelihood="categorical", likelihood_kwargs={"num_categories": 4}, encoder=MLP,
             decoder=MLP),
]
SMALL = {"latent_dim": 4, "flow_hidden_dims": [8], "joint_hidden_dims": [16]}
CONFIGS = {
    "default": {},
    "k3-beta2-dims-mc": {"num_particles": 3, "beta": 2.0, "likelihood_rescaling": "dims", "analytic_kl": False},
    "gaussian-prior2": {"flow_layers": 0, "prior_scale": 2.0},
    "flows3": {"flow_layers": 3, "num_particles": 2},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _dataset(n: int = 16) -> MultimodalDataset:
    g = torch.Generator().manual_seed(3)
    data = {"img": torch.rand(n, 1, 8, 8, generator=g), "vec": torch.randn(n, 5, generator=g),
            "tag": torch.randint(0, 4, (n, 3), generator=g)}
    return MultimodalDataset(MODS, data)


def _batch(missing: float):
    dataset = _dataset()
    return (mcar(dataset, missing, seed=1) if missing else dataset).batch()


def _model(seed: int = 0, **cfg) -> JNF:
    torch.manual_seed(seed)
    return JNF(MODS, JNFConfig(**{**SMALL, **cfg}))


# ---------------------------------------------------------------------- reference equality
@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_stage_1_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = _batch(missing)
    counts = batch.observed_counts()
    if missing:  # the batch has rows of every kind: complete, one modality (flows), two (PoE)
        assert {1, 2, 3} <= set(counts.tolist())
    unreached = None if missing else {n for n, _ in model.named_parameters() if n.startswith(("encoders.", "flows."))}
    assert_matches_reference(model, jnf_reference_loss, batch, unreached=unreached)


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_stage_2_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = _batch(missing)
    loss = model.unimodal_loss()
    assert_same_loss_and_grads(
        model, lambda: loss.differentiable_loss(model.unimodal_model, model.unimodal_guide, batch),
        lambda: jnf_unimodal_reference_loss(model, batch))


def test_the_reference_checks_can_fail():
    """Positive controls: another beta (stage 1), a reference without the flows' log-determinant
    (stage 2) differ from the model's losses."""
    model = _model(beta=1.0)
    batch = _batch(0.4)

    def other_beta(m, b):
        m.config.beta = 1.5
        try:
            return jnf_reference_loss(m, b)
        finally:
            m.config.beta = 1.0

    with pytest.raises(AssertionError):
        assert_matches_reference(model, other_beta, batch)
    import pyromv.testing.reference.jnf as ref

    original = ref._layer

    def no_logdet(layer, u):
        y, logdet = original(layer, u)
        return y, 0.0 * logdet

    ref._layer = no_logdet
    try:
        with pytest.raises(AssertionError):
            assert_same_loss_and_grads(
                model, lambda: model.unimodal_loss().differentiable_loss(model.unimodal_model,
                                                                         model.unimodal_guide, _batch(0.0)),
                lambda: jnf_unimodal_reference_loss(model, _batch(0.0)))
    finally:
        ref._layer = original


def test_stage_2_on_complete_rows_is_the_unimodal_negative_log_density():
    """Stage 2 on complete rows, one particle: ``-sum_m log q_m(z | x_m)`` at the joint encoder's
    draw, with ``q_m`` evaluated by Pyro's own TransformedDistribution (the identity
    ``sum_m KL(q(z|X) || q_m) = -sum_m E log q_m - M H(q(z|X))`` ties it to the paper's KL)."""
    model = _model()
    batch = _batch(0.0)
    torch.manual_seed(4)
    got = model.unimodal_loss().differentiable_loss(model.unimodal_model, model.unimodal_guide, batch)
    torch.manual_seed(4)
    j_loc, j_scale = model.joint_params(batch)
    z = torch.distributions.Normal(j_loc, j_scale).rsample()
    loc, scale, _ = model.experts(batch)
    expected = -sum(flow_posterior(loc[:, j], scale[:, j], model.flows[m]).log_prob(z).sum()
                    for j, m in enumerate(model.names))
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------- stages
def test_stages_freeze_the_joint_model_in_stage_2():
    model = _model()
    snaps = {0: {k: v.detach().clone() for k, v in model.named_parameters()}}

    def keep(trainer, record):
        snaps[record["epoch"]] = {k: v.detach().clone() for k, v in model.named_parameters()}

    config = TrainerConfig(epochs=4, batch_size=8, val_fraction=0.25, progress=False, patience=0)
    model.config.joint_epochs = 2
    history = Trainer(model, config=config, callbacks=[keep]).fit(_dataset(24))
    assert [r["stage"] for r in history] == ["joint"] * 2 + ["unimodal"] * 2
    for epoch in (1, 2, 3, 4):  # complete data: stage 1 trains the joint encoder and decoders only
        trained = ("joint_encoder.", "decoders.") if epoch <= 2 else ("encoders.", "flows.")
        for name, value in snaps[epoch].items():
            moved = not torch.equal(value, snaps[epoch - 1][name])
            assert moved == name.startswith(trained), (epoch, name)
    assert all(torch.isfinite(torch.tensor([r["train_loss"], r["val_loss"]])).all() for r in history)


def test_joint_epochs_maps_to_the_first_stage():
    model = _model(joint_epochs=0.25)
    first, second = model.stages()
    assert first.epochs == 0.25 and second.epochs is None
    assert first.resolve_epochs(8, 0) == 2 and second.resolve_epochs(8, 2) == 6
    assert set(second.trainable) == {"encoders.", "flows."}
    assert second.validation[1] == model.unimodal_model


# ---------------------------------------------------------------------- flows and inference
def test_flow_posterior_is_a_normalised_density_and_identity_layers_leave_the_gaussian():
    torch.manual_seed(0)
    flow = masked_autoregressive_flow(2, 2, [8])
    loc, scale = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.7, 1.1]])
    q = flow_posterior(loc, scale, flow)
    # integral of q over a grid ~ 1 (the flow is close to identity at init; wide grid)
    g = torch.linspace(-8, 8, 321)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2)
    mass = q.log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    torch.testing.assert_close(mass, torch.tensor(1.0), atol=2e-3, rtol=0)
    assert not torch.allclose(q.log_prob(grid), torch.distributions.Normal(loc, scale).log_prob(grid).sum(-1))
    set_identity(flow)
    q = flow_posterior(loc, scale, flow)
    torch.testing.assert_close(q.log_prob(grid), torch.distributions.Normal(loc, scale).log_prob(grid).sum(-1))


def test_encode_uses_the_joint_encoder_flows_and_products_by_row():
    model = _model()
    masks = {"img": torch.tensor([1, 1, 0, 1, 0]), "vec": torch.tensor([1, 0, 1, 1, 0]),
             "tag": torch.tensor([1, 0, 0, 0, 0])}
    masks["tag"][4] = 1  # row 4 will observe nothing (a dataset refuses such rows)
    data = {k: v[:5] for k, v in _dataset().data.items()}
    batch = make_batch(MODS, data, {k: v.bool() for k, v in masks.items()})
    batch = batch.with_row_masks({"tag": torch.tensor([True] * 4 + [False])})
    q = model.encode(batch)
    assert isinstance(q, RowwiseChoice) and q.index.tolist() == [0, 1, 2, 0, 0]
    z = torch.randn(3, 5, 4)
    lp = q.log_prob(z)
    j_loc, j_scale = model.joint_params(batch)
    loc, scale, _ = model.experts(batch)
    torch.testing.assert_close(lp[:, 0], torch.distributions.Normal(j_loc[0], j_scale[0]).log_prob(z[:, 0]).sum(-1))
    for row, j in ((1, 0), (2, 1)):
        qm = flow_posterior(loc[row, j], scale[row, j], model.flows[model.names[j]])
        torch.testing.assert_close(lp[:, row], qm.log_prob(z[:, row]))
    prec = scale[3, :2] ** -2  # img and vec: product of the two Gaussian bases
    mu = (prec * loc[3, :2]).sum(0) / prec.sum(0)
    torch.testing.assert_close(lp[:, 3], torch.distributions.Normal(mu, prec.sum(0).rsqrt()).log_prob(z[:, 3]).sum(-1))
    torch.testing.assert_close(lp[:, 4], model.prior().log_prob(z[:, 4]))


def _oracle(names=("a", "b", "c"), flow_layers: int = 1):
    lg = LinearGaussian.random({"a": 3, "b": 4, "c": 3}, 2, {"a": 0.6, "b": 0.8, "c": 0.7}, seed=0)
    torch.manual_seed(0)
    model = JNF(modalities(lg), JNFConfig(latent_dim=2, flow_layers=flow_layers, flow_hidden_dims=[8],
                                          joint_hidden_dims=[8]))
    for m in model.names:
        set_identity(model.flows[m])
    set_decoders(model, lg)
    set_unimodal_posterior_encoders(model, lg)  # q_m = p(z | x_m) exactly
    return lg, model


def _subset_batch(lg, model, patterns, repeats: int, seed: int = 1):
    subs = [s for s in patterns for _ in range(repeats)]
    data = {k: v.float() for k, v in lg.sample(len(subs), seed=seed).items()}
    masks = {m: torch.tensor([m in s for s in subs]) for m in lg.names}
    empty = torch.tensor([not s for s in subs])
    batch = make_batch(modalities(lg), data, {**masks, "a": masks["a"] | empty}).with_row_masks({"a": ~empty})
    return batch, data, masks, subs


def test_subset_target_is_the_exact_posterior_up_to_a_constant():
    """With ``q_m = p(z | x_m)`` (identity flows), ``prod_s q_s / p^(|S|-1)`` is ``p(z | X_S)``
    times a constant per row, for |S| = 1, 2, 3 (and ``p(z)`` for S empty); dividing by ``p``
    once (MultiVae) is not, for |S| = 3."""
    lg, model = _oracle(flow_layers=2)
    patterns = [(), ("a",), ("a", "b"), ("b", "c"), ("a", "b", "c")]
    batch, data, masks, _ = _subset_batch(lg, model, patterns, 1)
    mu, sigma = lg.posterior(data, masks)
    z = 2 * torch.randn(50, len(patterns), 2, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(mu, sigma).log_prob(z)
    loc, scale, mask = model.experts(batch)
    got = model.subset_log_density(z.float(), loc, scale, mask).double()
    diff = got - exact
    torch.testing.assert_close(diff, diff[:1].expand_as(diff), atol=2e-3, rtol=0)
    once = got + (mask.sum(-1) - 2).clamp(min=0) * model.prior().log_prob(z.float()).double()
    spread = (once - exact)[:, -1]
    assert (spread - spread[0]).abs().max() > 1.0


def test_mcmc_samples_of_the_subset_target_match_the_exact_posterior():
    r"""NUTS draws of ``prod_{s in S} q_s / p^(|S|-1)`` for |S| = 2 (three pairs) and |S| = 3,
    identity flows and ``q_m = p(z | x_m)``, against the closed form ``p(z | X_S)``.

    Draws are whitened with the exact posterior (``u = L^{-1}(z - mu)``, ``N(0, I)`` under the
    null). For each pattern and each statistic ``w`` (``u_i``; ``u_i u_j``) the pooled mean over
    rows and draws has standard error ``sd(w) / sqrt(ESS)`` with ``sd = 1`` (``u_i``,
    ``u_i u_j``, i != j) or ``sqrt 2`` (``u_i^2``) and ESS summed over rows (Pyro's estimate per
    row); 4 patterns x 5 statistics, Bonferroni at a family-wise false-positive rate of 1e-3:
    |z| < 4.06. The same draws reject MultiVae's target (one division by p) for |S| = 3.
    """
    lg, model = _oracle()
    patterns = [("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]
    batch, data, masks, subs = _subset_batch(lg, model, patterns, 4)
    torch.manual_seed(1)
    z = model.sample_subset_posterior(batch, num_samples=300, warmup_steps=150).double()  # (N, R, 2)
    assert z.shape == (300, len(subs), 2)
    threshold = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - 1e-3 / (2 * 4 * 5))).item()

    def zscores(mu, sigma):
        u = torch.linalg.solve_triangular(torch.linalg.cholesky(sigma), (z - mu).unsqueeze(-1),
                                          upper=False).squeeze(-1)
        out = []
        for p in patterns:
            rows = torch.tensor([s == p for s in subs])
            up = u[:, rows]
            stats = [(up[..., 0], 1.0), (up[..., 1], 1.0), (up[..., 0] ** 2 - 1, math.sqrt(2)),
                     (up[..., 1] ** 2 - 1, math.sqrt(2)), (up[..., 0] * up[..., 1], 1.0)]
            for w, sd in stats:
                ess = effective_sample_size(w.unsqueeze(0), chain_dim=0, sample_dim=1).clamp(min=1).sum()
                out.append(w.mean() / (sd / ess.sqrt()))
        return torch.stack(out)

    mu, sigma = lg.posterior(data, masks)
    assert zscores(mu, sigma).abs().max() < threshold
    # power: MultiVae's single division keeps an extra prior factor for |S| = 3 (precision + I)
    wrong_sigma = torch.linalg.inv(torch.linalg.inv(sigma) + torch.eye(2, dtype=sigma.dtype))
    wrong_mu = (wrong_sigma @ torch.linalg.solve(sigma, mu.unsqueeze(-1))).squeeze(-1)
    triple = torch.tensor([len(s) == 3 for s in subs])
    mu_w = torch.where(triple.unsqueeze(-1), wrong_mu, mu)
    sigma_w = torch.where(triple.view(-1, 1, 1), wrong_sigma, sigma)
    assert zscores(mu_w, sigma_w)[-5:].abs().max() > threshold


def test_encode_with_mcmc_rows():
    """``subset_inference="mcmc"``: rows observing 2 of 3 modalities get MCMC draws (an
    EmpiricalRows component: mean, sample, log_prob); the other rows keep their closed forms."""
    lg, model = _oracle(flow_layers=0)
    model.config.subset_inference = "mcmc"
    model.config.mcmc_num_samples, model.config.mcmc_warmup_steps = 40, 40
    patterns = [("a", "b"), ("a",), ("a", "b", "c"), ()]
    batch, data, masks, _ = _subset_batch(lg, model, patterns, 1)
    torch.manual_seed(0)
    q = model.encode(batch)
    assert isinstance(q, RowwiseChoice) and q.index.tolist() == [len(model.names) + 1, 1, 0, 0]
    assert isinstance(q.components[-1], EmpiricalRows)
    assert q.mean.shape == (4, 2) and q.sample((3,)).shape == (3, 4, 2)
    lp = q.log_prob(torch.zeros(4, 2))
    assert lp.shape == (4,) and torch.isfinite(lp).all()
    torch.testing.assert_close(q.mean[3], torch.zeros(2))  # nothing observed: the prior
    mu, sigma = lg.posterior(data, masks)
    assert (q.mean[0].double() - mu[0]).abs().max() < 4 * sigma[0].diagonal().sqrt().max()
    out = model.cross_generate(batch.restrict(["a", "b"]), ["c"])
    assert out["c"].shape == (4, 3) and torch.isfinite(out["c"]).all()


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("cfg,match", [
    ({"joint_epochs": 0}, "joint_epochs"),
    ({"joint_epochs": 1.5}, "joint_epochs"),
    ({"flow_layers": -1}, "flow_layers"),
    ({"flow_hidden_dims": []}, "flow_hidden_dims"),
    ({"subset_inference": "hmc"}, "subset_inference"),
    ({"mcmc_num_samples": 1}, "mcmc_num_samples"),
])
def test_bad_configs_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        JNF(MODS, JNFConfig(**{**SMALL, **cfg}))


def test_bad_sampler_arguments_are_refused():
    model = _model()
    batch = _batch(0.0)
    with pytest.raises(ValueError, match="num_samples"):
        model.sample_subset_posterior(batch, num_samples=0)
    with pytest.raises(ValueError, match="initial"):
        model.sample_subset_posterior(batch, initial=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="modalities"):
        model.encode(_batch(0.0).restrict(["img"]).__class__({"img": batch.data["img"]},
                                                             {"img": batch.obs_mask["img"]}))
