"""Likelihood heads: every registered head builds and has the documented shapes and parameters."""

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from pyromv.distributions import LikelihoodHead, build_likelihood, registered_likelihoods

# kwargs a head needs (heads not listed here must build without any)
KWARGS = {"categorical": {"num_categories": 4}}
SHAPES = [(5,), (2, 3), (1, 4, 4)]
# heads for any modality shape; the tabular head (one column per feature, shape (C,), with
# per-column cardinalities) has its own tests in tests/data/sources/test_tabular.py
SHAPE_FREE = [name for name in registered_likelihoods() if name != "tabular"]


def test_the_documented_heads_are_registered():
    assert {"bernoulli", "continuous_bernoulli", "normal", "laplace", "categorical"} <= set(
        registered_likelihoods()
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", SHAPE_FREE)
def test_every_head_builds_with_its_shapes(name, shape):
    head = build_likelihood(name, shape, KWARGS.get(name))
    assert isinstance(head, LikelihoodHead)
    assert head.shape == shape
    assert head.name == name
    if name == "categorical":
        assert head.param_shape == head.input_shape == (*shape, 4)
    else:
        assert head.param_shape == shape
        assert head.input_shape == shape
    for batch in [(3,), (2, 3)]:
        params = torch.randn(*batch, *head.param_shape)
        d = head(params)
        assert d.batch_shape == (*batch, *shape)
        assert d.event_shape == ()
        x = d.sample()
        assert x.shape == (*batch, *shape)
        lp = d.log_prob(x)
        assert lp.shape == (*batch, *shape)
        assert torch.isfinite(lp).all()
        # what the encoder sees of a data batch
        assert head.encoder_input(x).shape == (*batch, *head.input_shape)
        assert head.encoder_input(x).is_floating_point()
        # a point estimate of the data, shaped like the data
        assert head.mean(params).shape == (*batch, *shape)


@pytest.mark.parametrize("name", SHAPE_FREE)
def test_head_declares_event_after_masking(name):
    # the model masks features with Distribution.mask, then declares the modality's dims as event
    head = build_likelihood(name, (2, 3), KWARGS.get(name))
    d = head(torch.randn(4, *head.param_shape))
    x = d.sample()
    mask = torch.zeros(4, 2, 3, dtype=torch.bool)
    mask[:, 0] = True
    masked = d.mask(mask).to_event(2)
    assert masked.batch_shape == (4,) and masked.event_shape == (2, 3)
    assert_close(masked.log_prob(x), d.log_prob(x)[:, 0].sum(-1))


@pytest.mark.parametrize("scale", [0.05, 0.5, 1.0, 3.0])
def test_normal_fixed_scale_is_the_standard_deviation(scale):
    head = build_likelihood("normal", (3,), {"scale": scale})
    assert head.scale.item() == pytest.approx(scale, rel=1e-5)
    loc = torch.randn(4, 3)
    x = torch.randn(4, 3)
    expected = -0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)
    assert_close(head(loc).log_prob(x), expected, rtol=1e-5, atol=1e-5)
    assert_close(head(loc).stddev, torch.full((4, 3), scale), rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [0.05, 0.5, 1.0, 3.0])
def test_laplace_fixed_scale_is_the_scale(scale):
    head = build_likelihood("laplace", (3,), {"scale": scale})
    assert head.scale.item() == pytest.approx(scale, rel=1e-5)
    loc = torch.randn(4, 3)
    x = torch.randn(4, 3)
    expected = -(x - loc).abs() / scale - math.log(2 * scale)
    assert_close(head(loc).log_prob(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["normal", "laplace"])
def test_fixed_scale_below_min_scale_is_kept(name):
    # a user asking for scale=1e-4 gets it, never the (10x larger) minimum of learned scales
    head = build_likelihood(name, (3,), {"scale": 1e-4})
    assert head.scale.item() == pytest.approx(1e-4, rel=1e-3)


@pytest.mark.parametrize("name", ["normal", "laplace"])
def test_fixed_scale_is_a_buffer_not_a_parameter(name):
    head = build_likelihood(name, (3,), {"scale": 0.5})
    assert list(head.parameters()) == []
    assert "fixed_scale" in dict(head.named_buffers())
    assert "fixed_scale" in head.state_dict()


@pytest.mark.parametrize("per_feature", [False, True])
@pytest.mark.parametrize("name", ["normal", "laplace"])
def test_learn_scale_makes_a_parameter(name, per_feature):
    head = build_likelihood(
        name, (2, 3), {"scale": 0.5, "learn_scale": True, "scale_per_feature": per_feature}
    )
    params = dict(head.named_parameters())
    assert list(params) == ["raw_scale"]
    assert isinstance(params["raw_scale"], nn.Parameter)
    assert params["raw_scale"].shape == ((2, 3) if per_feature else ())
    assert_close(head.scale, torch.full(head.scale.shape, 0.5), rtol=1e-5, atol=0)
    # gradients reach it through the log-density
    d = head(torch.zeros(4, 2, 3))
    d.log_prob(torch.ones(4, 2, 3)).sum().backward()
    assert params["raw_scale"].grad is not None
    assert torch.isfinite(params["raw_scale"].grad).all()
    assert (params["raw_scale"].grad != 0).all()
    assert d.batch_shape == (4, 2, 3)


def test_categorical_encoder_input_is_one_hot():
    head = build_likelihood("categorical", (2,), {"num_categories": 4})
    x = torch.tensor([[0, 3], [2, 1], [1, 1]])
    oh = head.encoder_input(x)
    assert oh.shape == (3, 2, 4)
    assert oh.dtype == torch.get_default_dtype()
    expected = torch.eye(4)[x]
    assert torch.equal(oh, expected)
    # float-coded categories (as a data set may store them) give the same one-hot rows
    assert torch.equal(head.encoder_input(x.float()), expected)


def test_categorical_log_prob_and_mean():
    head = build_likelihood("categorical", (2,), {"num_categories": 3})
    logits = torch.randn(5, 2, 3)
    x = torch.randint(3, (5, 2))
    expected = torch.log_softmax(logits, -1).gather(-1, x.unsqueeze(-1)).squeeze(-1)
    assert_close(head(logits).log_prob(x), expected)
    assert torch.equal(head.mean(logits), logits.argmax(-1))


def test_bernoulli_heads_take_logits():
    logits = torch.randn(4, 3)
    x = torch.randint(2, (4, 3)).float()
    b = build_likelihood("bernoulli", (3,))
    logsig = torch.nn.functional.logsigmoid
    expected = x * logsig(logits) + (1 - x) * logsig(-logits)
    assert_close(b(logits).log_prob(x), expected)
    cb = build_likelihood("continuous_bernoulli", (3,))
    xs = torch.rand(4, 3)
    lam = torch.sigmoid(logits)
    # continuous Bernoulli: C(lam) lam^x (1-lam)^(1-x), C = 2 atanh(1-2 lam) / (1-2 lam)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = log_c + xs * lam.log() + (1 - xs) * (1 - lam).log()
    assert_close(cb(logits).log_prob(xs), expected, rtol=1e-4, atol=1e-4)
    m = cb.mean(torch.full((2, 3), 50.0))
    assert (m >= 0).all() and (m <= 1).all()


def test_unknown_likelihood_is_a_value_error():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson_nope'"):
        build_likelihood("poisson_nope", (3,))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("normal", {"sigma": 1.0}),
        ("laplace", {"bogus": True}),
        ("bernoulli", {"scale": 1.0}),
        ("categorical", {}),  # num_categories is required
        ("categorical", {"num_categories": 3, "extra": 1}),
    ],
)
def test_bad_kwargs_are_a_type_error(name, kwargs):
    with pytest.raises(TypeError, match=name):
        build_likelihood(name, (3,), kwargs)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
@pytest.mark.parametrize("name", ["normal", "laplace"])
def test_non_positive_scale_is_a_value_error(name, scale):
    with pytest.raises(ValueError, match="scale must be positive"):
        build_likelihood(name, (3,), {"scale": scale})


def test_categorical_needs_two_categories():
    with pytest.raises(ValueError, match="num_categories"):
        build_likelihood("categorical", (3,), {"num_categories": 1})


def test_build_does_not_mutate_kwargs():
    kwargs = {"scale": 0.5, "learn_scale": True}
    build_likelihood("normal", (3,), kwargs)
    assert kwargs == {"scale": 0.5, "learn_scale": True}
