"""Equality of two losses on one model, in value and in every parameter's gradient."""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import Tensor

from ..data.batch import MultimodalBatch


def assert_same_loss_and_grads(
    model: torch.nn.Module,
    first: Callable[[], Tensor],
    second: Callable[[], Tensor],
    seed: int = 11,
    unreached: Collection[str] | None = None,
) -> dict[str, Tensor | None]:
    """``first()`` and ``second()`` (losses on ``model``'s parameters, each called after
    ``torch.manual_seed(seed)``, so both see the same random draws) agree in value and in the
    gradient of every parameter.

    ``unreached``: the parameters allowed to get no gradient from ``second`` (``first`` must give
    them none or zero); every other parameter must be reached by both. ``None`` allows any
    parameter ``second`` leaves out, with the same condition on ``first``. Returns ``first``'s
    gradients by parameter name.
    """
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    torch.manual_seed(seed)
    a = first()
    ga = torch.autograd.grad(a, params, allow_unused=True)
    torch.manual_seed(seed)
    b = second()
    gb = torch.autograd.grad(b, params, allow_unused=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    for name, x, y in zip(names, ga, gb):
        if y is None:
            assert unreached is None or name in unreached, f"{name} gets no gradient"
            assert x is None or not x.abs().any(), name
        else:
            assert x is not None, f"{name} gets no gradient from the first loss"
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=name)
    return dict(zip(names, ga))


def assert_matches_reference(
    model, reference: Callable[..., Tensor], batch: MultimodalBatch, seed: int = 11,
    unreached: Collection[str] | None = None,
) -> dict[str, Tensor | None]:
    """The model's default objective and its hand-written reference ``reference(model, batch)``
    agree in value and gradients under one seed (:func:`assert_same_loss_and_grads`)."""
    loss = model.default_loss()
    return assert_same_loss_and_grads(
        model, lambda: loss.differentiable_loss(model.model, model.guide, batch), lambda: reference(model, batch),
        seed, unreached)
