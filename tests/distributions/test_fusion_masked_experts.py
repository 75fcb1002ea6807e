"""A masked-out expert adds nothing to a product of experts, whatever its scale (0, inf, NaN)
or location: the fusion equals the product without it, and its gradients stay finite."""

from __future__ import annotations

import pytest
import torch

from pyromv.distributions import ProductOfExperts


def _experts():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(4, 3, 2, generator=g)
    scale = 0.5 + torch.rand(4, 3, 2, generator=g)
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False], [True, True, False]])
    return loc, scale, mask


@pytest.mark.parametrize("bad_scale", [0.0, 1e-30, float("inf"), float("nan")])
@pytest.mark.parametrize("bad_loc", [0.0, float("inf"), float("nan")])
def test_masked_expert_with_degenerate_parameters_is_ignored(bad_scale, bad_loc):
    loc, scale, mask = _experts()
    reference = ProductOfExperts(loc[:, :2], scale[:, :2], mask[:, :2])
    loc = loc.clone().requires_grad_(True)
    scale = scale.clone()
    scale[:, 2] = bad_scale
    scale.requires_grad_(True)
    bad_locs = torch.where(torch.arange(3) == 2, torch.tensor(bad_loc), torch.zeros(())).unsqueeze(-1)
    poe = ProductOfExperts(loc + bad_locs, scale, mask)
    torch.testing.assert_close(poe.loc, reference.loc)
    torch.testing.assert_close(poe.scale, reference.scale)
    (poe.loc.sum() + poe.scale.sum() + poe.log_prob(torch.zeros(4, 2)).sum()).backward()
    assert bool(torch.isfinite(loc.grad).all()) and bool(torch.isfinite(scale.grad).all())
    assert bool((scale.grad[:, 2] == 0).all())


def test_an_inf_scale_under_a_true_mask_is_an_uninformative_expert():
    loc, scale, mask = _experts()
    scale = scale.clone()
    scale[:, 1] = float("inf")
    poe = ProductOfExperts(torch.where(torch.isinf(scale), 0.0, loc), scale, torch.ones_like(mask))
    reference = ProductOfExperts(loc[:, [0, 2]], scale[:, [0, 2]])
    torch.testing.assert_close(poe.loc, reference.loc)
    torch.testing.assert_close(poe.scale, reference.scale)
