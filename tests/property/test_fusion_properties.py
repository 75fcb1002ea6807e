"""Property-based tests of the fusions (issue 16, item 6): the product and the mixtures of
experts stay finite, and keep their defining identities, with extreme but valid expert scales
(1e-6 .. 1e6: far outside what an encoder, whose scales are ``softplus + 1e-3``, produces) and
random masks. Deterministic (``derandomize=True``) for CI.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.distributions.kl import kl_divergence

from pyromv.distributions import AssignedMixture, MixtureOfExperts, ProductOfExperts, StratifiedMixture

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None)


@st.composite
def experts(draw, min_experts: int = 1):
    """``loc``, ``scale`` ``(B, M, D)`` in float32 and a mask ``(B, M)``; scales log-uniform in
    [1e-6, 1e6], locations in [-1e3, 1e3]."""
    B, M, D = draw(st.integers(1, 4)), draw(st.integers(min_experts, 4)), draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    log10_scale = torch.empty(B, M, D).uniform_(-6, 6, generator=g)
    spread = draw(st.sampled_from([1.0, 1e3]))
    loc = (torch.rand(B, M, D, generator=g) * 2 - 1) * spread
    mask = torch.rand(B, M, generator=g) < draw(st.floats(0.0, 1.0))
    return loc, 10.0**log10_scale, mask


def _float64(*tensors):
    return [t.double() for t in tensors]


@SETTINGS
@given(experts(), st.booleans(), st.floats(1e-3, 1e3))
def test_product_of_experts_is_finite_and_matches_its_closed_form(ex, include_prior, prior_scale):
    loc, scale, mask = ex
    if not include_prior and not bool(mask.any(-1).all()):
        with pytest.raises(ValueError, match="needs an expert in every row"):
            ProductOfExperts(loc, scale, mask, include_prior=False)
        return
    poe = ProductOfExperts(loc, scale, mask, prior_scale=prior_scale, include_prior=include_prior)
    assert torch.isfinite(poe.loc).all() and torch.isfinite(poe.scale).all() and (poe.scale > 0).all()
    # closed form in float64, written out here: precisions add, the mean is precision-weighted
    l64, s64 = _float64(loc, scale)
    m = mask.double().unsqueeze(-1)
    precision = (m / s64**2).sum(-2) + (prior_scale ** -2 if include_prior else 0.0)
    mean = ((m * l64 / s64**2).sum(-2)) / precision
    torch.testing.assert_close(poe.scale.double(), precision.rsqrt(), rtol=1e-4, atol=0)
    torch.testing.assert_close(poe.loc.double(), mean, rtol=1e-3, atol=1e-3 * float(poe.scale.max()) + 1e-4)
    # the product is sharper than each included expert, and its mean lies between theirs
    smallest = torch.where(mask.unsqueeze(-1), scale, torch.full_like(scale, math.inf)).amin(-2)
    if include_prior:
        smallest = smallest.clamp(max=prior_scale)
    assert (poe.scale <= smallest * (1 + 1e-4)).all()
    z = poe.rsample(torch.Size([3]))
    assert torch.isfinite(z).all() and torch.isfinite(poe.log_prob(z)).all()
    # a row with no expert is the prior itself
    empty = ~mask.any(-1)
    if include_prior and bool(empty.any()):
        assert torch.equal(poe.loc[empty], torch.zeros_like(poe.loc[empty]))
        torch.testing.assert_close(poe.scale[empty], torch.full_like(poe.scale[empty], prior_scale))


@SETTINGS
@given(experts(min_experts=2), st.integers(0, 2**16))
def test_product_over_subsets_equals_the_product_of_each_subset(ex, seed):
    loc, scale, _ = ex
    M = loc.shape[-2]
    subsets = torch.rand(3, M, generator=torch.Generator().manual_seed(seed)) < 0.5
    fused = ProductOfExperts.of_subsets(loc, scale, subsets)
    for s in range(3):
        one = ProductOfExperts(loc, scale, subsets[s].expand(loc.shape[:-1]))
        torch.testing.assert_close(fused.scale[s], one.scale, rtol=1e-4, atol=0)
        torch.testing.assert_close(fused.loc[s], one.loc, rtol=1e-3, atol=1e-3 * float(one.scale.max()) + 1e-4)


@SETTINGS
@given(experts())
def test_mixture_of_experts_log_density_is_finite_and_bounded_by_its_components(ex):
    loc, scale, mask = ex
    components = dist.Normal(loc, scale).to_event(1)
    if not bool(mask.any(-1).all()):
        with pytest.raises(ValueError, match="at least one expert in every row"):
            MixtureOfExperts(components, mask)
        mask = mask.clone()
        mask[:, 0] = True
    moe = MixtureOfExperts(components, mask)
    z = moe.rsample(torch.Size([4]))
    assert torch.isfinite(z).all()
    logq = moe.log_prob(z)
    comp = moe.component_log_prob(z).masked_fill(~mask, -math.inf)  # (4, B, M)
    assert torch.isfinite(logq).all()
    # logsumexp bounds: max_m log q_m + log(1 / n) <= log q <= max_m log q_m
    best = comp.amax(-1)
    n = mask.sum(-1).double()
    tol = 1e-4 * best.abs() + 1e-3
    assert (logq <= best + tol).all() and (logq.double() >= best.double() - n.log() - tol).all()


@SETTINGS
@given(experts())
def test_stratified_mixture_is_finite_even_for_rows_without_experts(ex):
    loc, scale, mask = ex  # experts first: (E, B, D)
    components = dist.Normal(loc.transpose(0, 1), scale.transpose(0, 1)).to_event(1)
    mix = StratifiedMixture(components, mask.transpose(0, 1))
    z = mix.rsample(torch.Size([2]))
    lp = mix.log_prob(z)
    assert z.shape == (2, *components.batch_shape, loc.shape[-1]) and torch.isfinite(lp).all()
    loc = loc.clone().requires_grad_(True)  # and the gradients of the score are finite too
    components = dist.Normal(loc.transpose(0, 1), scale.transpose(0, 1)).to_event(1)
    StratifiedMixture(components, mask.transpose(0, 1)).log_prob(z).sum().backward()
    assert torch.isfinite(loc.grad).all()


@SETTINGS
@given(experts(), st.integers(0, 2**16))
def test_assigned_mixture_kl_is_finite_nonnegative_and_the_weighted_average(ex, seed):
    loc, scale, mask = ex
    mask = mask.clone()
    mask[:, 0] = True
    weights = mask.double() / mask.sum(-1, keepdim=True)
    assignment = torch.multinomial(weights, 1, generator=torch.Generator().manual_seed(seed)).squeeze(-1)
    components = dist.Normal(loc, scale).to_event(1)
    mix = AssignedMixture(components, weights.float(), assignment)
    prior = dist.Normal(torch.zeros(loc.shape[-1]), torch.ones(loc.shape[-1])).to_event(1)
    kl = kl_divergence(mix, prior)
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    # closed form per component, in float64: KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1 - log s^2) / 2
    l64, s64 = _float64(loc, scale)
    per = 0.5 * (s64**2 + l64**2 - 1 - (s64**2).log()).sum(-1)
    torch.testing.assert_close(kl.double(), (weights * per).sum(-1), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(mix.log_prob(mix.rsample())).all()
