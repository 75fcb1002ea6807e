"""``ProductOfExperts(weights=..., prior_weight=...)``: the generalised product of experts
against hand-written precision sums, and the identities that tie it to the plain product."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from pyromv.distributions import ProductOfExperts

B, M, D = 5, 3, 4


def _experts(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(B, M, D, generator=g)
    scale = 0.3 + torch.rand(B, M, D, generator=g)
    mask = torch.rand(B, M, generator=g) > 0.3
    mask[:, 0] = True
    return loc, scale, mask, g


def _hand(loc, scale, mask, a, prior_loc, prior_scale, prior_weight):
    """``Lambda = c / s0^2 + sum_m mask_m a_m / s_m^2``, ``mu = (c mu0 / s0^2 + sum ...) / Lambda``."""
    w = mask[..., None] * a / scale**2
    lam = prior_weight / prior_scale**2 + w.sum(-2)
    mu = (prior_weight * prior_loc / prior_scale**2 + (w * loc).sum(-2)) / lam
    return mu, lam.rsqrt()


def test_unit_weights_are_the_plain_product():
    loc, scale, mask, _ = _experts()
    for include_prior in (True, False):
        plain = ProductOfExperts(loc, scale, mask, include_prior=include_prior)
        ones = ProductOfExperts(loc, scale, mask, include_prior=include_prior, weights=torch.ones(M, D),
                                prior_weight=1.0)
        torch.testing.assert_close(ones.loc, plain.loc, rtol=0, atol=0)
        torch.testing.assert_close(ones.scale, plain.scale, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(B, M, D), (M, D), (B, 1, 1), (M, 1)])
def test_weighted_product_matches_the_hand_formula(shape):
    loc, scale, mask, g = _experts(1)
    a = torch.rand(shape, generator=g)
    prior_weight = torch.rand(B, 1, generator=g)
    q = ProductOfExperts(loc, scale, mask, prior_loc=0.5, prior_scale=2.0, weights=a, prior_weight=prior_weight)
    mu, sigma = _hand(loc, scale, mask, a, 0.5, 2.0, prior_weight)
    torch.testing.assert_close(q.loc, mu)
    torch.testing.assert_close(q.scale, sigma)
    assert q.batch_shape == (B,) and q.event_shape == (D,)
    assert q.rsample((2,)).shape == (2, B, D)


def test_a_zero_weight_removes_the_expert_and_a_zero_prior_weight_the_prior():
    loc, scale, mask, g = _experts(2)
    a = 0.2 + torch.rand(M, D, generator=g)
    a_without_last = a.clone()
    a_without_last[-1] = 0.0
    dropped = ProductOfExperts(loc, scale, mask, weights=a_without_last)
    masked = ProductOfExperts(loc, scale, mask & torch.tensor([True, True, False]), weights=a)
    torch.testing.assert_close(dropped.loc, masked.loc)
    torch.testing.assert_close(dropped.scale, masked.scale)
    no_prior = ProductOfExperts(loc, scale, mask, include_prior=False, weights=a)
    zero_prior = ProductOfExperts(loc, scale, mask, weights=a, prior_weight=torch.zeros(B, 1))
    torch.testing.assert_close(zero_prior.loc, no_prior.loc)
    torch.testing.assert_close(zero_prior.scale, no_prior.scale)


def test_weights_summing_to_one_give_the_normalised_geometric_mean():
    """With weights ``pi_j`` summing to 1 over the prior and the experts, the product is
    ``prod_j q_j^{pi_j} / Z``: ``log f(z) - sum_j pi_j log q_j(z)`` does not depend on ``z``."""
    loc, scale, _, g = _experts(3)
    pi = torch.softmax(torch.randn(B, M + 1, generator=g), -1)
    f = ProductOfExperts(loc, scale, prior_scale=1.3, weights=pi[:, 1:, None], prior_weight=pi[:, :1])
    z = 2 * torch.randn(40, B, D, generator=g)
    mix = pi[:, 0] * Normal(0.0, 1.3).log_prob(z).sum(-1)
    mix = mix + (pi[:, 1:] * Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)).sum(-1)
    gap = f.log_prob(z) - mix
    torch.testing.assert_close(gap, gap[:1].expand_as(gap), atol=1e-4, rtol=0)


def test_gradients_reach_the_weights():
    loc, scale, mask, g = _experts(4)
    a = torch.rand(M, D, generator=g).requires_grad_()
    ProductOfExperts(loc, scale, mask, weights=a).rsample().sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_bad_weights_are_value_errors():
    loc, scale, mask, _ = _experts()
    with pytest.raises(ValueError, match="non-negative"):
        ProductOfExperts(loc, scale, mask, weights=-torch.ones(M, D))
    with pytest.raises(ValueError, match="non-negative"):
        ProductOfExperts(loc, scale, mask, weights=torch.full((M, D), float("nan")))
    with pytest.raises(ValueError, match="broadcast"):
        ProductOfExperts(loc, scale, mask, weights=torch.ones(M + 1, D))
    with pytest.raises(ValueError, match="prior_weight"):
        ProductOfExperts(loc, scale, mask, prior_weight=-1.0)
    with pytest.raises(ValueError, match="zero total precision"):
        ProductOfExperts(loc, scale, mask, include_prior=False, weights=torch.zeros(M, D))
