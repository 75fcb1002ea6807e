"""SharedScaleNormal / SharedScaleLaplace (cheap log-densities) and GatheredLikelihood (a
likelihood computed at the scored entries only): values and gradients against torch's own
distributions and hand formulas."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.testing import assert_close

from pyromv.distributions import GatheredLikelihood, SharedScaleLaplace, SharedScaleNormal
from pyromv.distributions.location_scale import compact


@pytest.mark.parametrize("scale_shape", [(), (5,), (3, 5)], ids=["scalar", "per-feature", "full"])
@pytest.mark.parametrize("ours,torch_cls", [(SharedScaleNormal, torch.distributions.Normal),
                                            (SharedScaleLaplace, torch.distributions.Laplace)])
def test_log_prob_and_gradients_equal_torch(ours, torch_cls, scale_shape):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(4, 3, 5, generator=g, requires_grad=True)
    raw = (0.2 + torch.rand(scale_shape, generator=g)).requires_grad_(True)
    x = torch.randn(3, 5, generator=g)
    a = ours(loc, raw.expand(loc.shape)).log_prob(x)
    b = torch_cls(loc, raw.expand(loc.shape)).log_prob(x)
    assert_close(a, b, rtol=1e-6, atol=1e-6)
    ga = torch.autograd.grad(a.sum(), (loc, raw))
    gb = torch.autograd.grad(b.sum(), (loc, raw))
    for u, v in zip(ga, gb):
        assert_close(u, v, rtol=1e-5, atol=1e-5)


def test_normal_log_prob_is_the_formula():
    loc, scale, x = torch.tensor([0.5, -1.0]), torch.tensor(0.3), torch.tensor([1.0, 2.0])
    expected = [-0.5 * ((xi - mi) / 0.3) ** 2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)
                for xi, mi in zip(x.tolist(), loc.tolist())]
    assert_close(SharedScaleNormal(loc, scale.expand(2)).log_prob(x), torch.tensor(expected))
    expected = [-abs(xi - mi) / 0.3 - math.log(0.6) for xi, mi in zip(x.tolist(), loc.tolist())]
    assert_close(SharedScaleLaplace(loc, scale.expand(2)).log_prob(x), torch.tensor(expected))


def test_compact_narrows_broadcast_dims_only():
    t = torch.rand(1, 5).expand(4, 5)
    assert compact(t).shape == (1, 5)
    assert compact(torch.rand(4, 5)).shape == (4, 5)
    assert compact(torch.tensor(2.0)).shape == ()
    assert compact(torch.tensor(2.0).expand(3, 2)).shape == (1, 1)


def test_validation_still_checks_the_support():
    with pyro.validation_enabled(True):
        d = SharedScaleNormal(torch.zeros(3), torch.ones(3), validate_args=True)
        with pytest.raises(ValueError):
            d.log_prob(torch.tensor([0.0, float("nan"), 1.0]))


def test_heads_build_the_cheap_distributions():
    from pyromv.distributions import build_likelihood

    assert type(build_likelihood("normal", (3,))(torch.zeros(2, 3))) is SharedScaleNormal
    assert type(build_likelihood("laplace", (3,))(torch.zeros(2, 3))) is SharedScaleLaplace


# ---------------------------------------------------------------------- GatheredLikelihood
def _full_and_gathered(features: bool):
    g = torch.Generator().manual_seed(1)
    T, B = 3, 4
    params = torch.randn(T, B, 5, generator=g)
    mask = torch.rand(T, B, generator=g) < 0.5
    mask[0, 0] = True
    feat = torch.rand(B, 5, generator=g) < 0.7
    full = dist.Normal(params, 0.4)
    sel = dist.Normal(params[mask], 0.4)
    if features:
        full = full.mask(feat)
        sel = sel.mask(feat.expand(T, B, 5)[mask])
    return full.to_event(1), GatheredLikelihood(sel.to_event(1), mask), mask


@pytest.mark.parametrize("features", [False, True])
def test_gathered_log_prob_is_the_full_one_where_scored_and_zero_elsewhere(features):
    full, gathered, mask = _full_and_gathered(features)
    x = torch.randn(4, 5)
    assert gathered.batch_shape == full.batch_shape and gathered.event_shape == full.event_shape
    lp = gathered.log_prob(x)
    assert_close(lp[mask], full.log_prob(x)[mask])
    assert (lp[~mask] == 0).all()


def test_gathered_sample_expand_and_errors():
    _, gathered, mask = _full_and_gathered(False)
    assert gathered.sample().shape == (3, 4, 5)
    draws = gathered.sample((2,))
    assert draws.shape == (2, 3, 4, 5) and (draws[:, ~mask] == 0).all() and (draws[:, mask] != 0).all()
    assert gathered.expand(torch.Size([3, 4])) is gathered
    with pytest.raises(NotImplementedError, match="full shape of the plates"):
        gathered.expand(torch.Size([2, 3, 4]))
    with pytest.raises(ValueError, match="selects"):
        GatheredLikelihood(dist.Normal(torch.zeros(2, 5), 1.0).to_event(1), mask)
    with pytest.raises(TypeError, match="bool"):
        GatheredLikelihood(dist.Normal(torch.zeros(2, 5), 1.0).to_event(1), mask.float())
