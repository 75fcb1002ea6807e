"""MoPoE's paper estimator (one subset per row, KL averaged over subsets in closed form) against
the stratified one (every subset sampled): the same objective, so the same expectation of the
loss and of its gradient, on the linear-Gaussian oracle with inexact encoders.

Design of the statistical check: the two estimators draw differently, so they are not paired.
``BLOCKS`` independent block means per estimator (each the mean over ``REPS`` replicates of the
rows, repeated in one batch) are nearly Gaussian; for each gradient coordinate the Welch
statistic ``(mean_a - mean_b) / sqrt(var_a / n + var_b / n)`` is compared with the Bonferroni
threshold ``t_{BLOCKS-1}^{-1}(1 - ALPHA / (2 P))`` (the smaller degrees of freedom, so a
conservative threshold), a family-wise false-alarm probability of at most ``ALPHA = 1e-3``.
Every draw is seeded, so the outcome is fixed. Power: the same check flags an assignment that
always takes a row's first subset (a biased estimator).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from scipy import stats

from pyromv.data import make_batch
from pyromv.distributions.fusion import assign_components
from pyromv.models import MoPoE, MoPoEConfig
from tests.oracles.linear_gaussian import LinearGaussian, mixed_row_masks, modalities, set_decoders, set_exact_encoders

DIMS = {"a": 3, "b": 2, "c": 4}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT, ROWS = 2, 7
REPS, BLOCKS, ALPHA = 25, 40, 1e-3

pytestmark = pytest.mark.usefixtures("float64")


@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


def _model(objective: str, sampling: str = "balanced") -> MoPoE:
    lg = _lg()
    model = MoPoE(modalities(lg), MoPoEConfig(latent_dim=LATENT, objective=objective, prior_expert=True,
                                              subset_sampling=sampling))
    set_decoders(model, lg)
    set_exact_encoders(model, lg)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # inexact experts: shaken weights, widened scales
        for m in model.names:
            enc = model.encoders[m]
            enc.linear.weight.mul_(1 + 0.3 * torch.randn(enc.linear.weight.shape, generator=g))
            enc.log_scale.add_(0.3)
    return model


def _batch(model, rows: str):
    data = {m: v.repeat(REPS, 1) for m, v in _lg().sample(ROWS, seed=2).items()}
    masks = mixed_row_masks(list(DIMS), ROWS, seed=3) if rows == "mixed" else None
    masks = None if masks is None else {m: v.repeat(REPS) for m, v in masks.items()}
    return make_batch(model.modalities, data, masks)


def _blocks(model, rows: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(BLOCKS,)`` block means of the loss and ``(BLOCKS, P)`` of its gradient (all parameters)."""
    batch = _batch(model, rows)
    loss = model.default_loss()
    params = list(model.parameters())
    values, grads = [], []
    for r in range(BLOCKS):
        torch.manual_seed(seed + r)
        value = loss.differentiable_loss(model.model, model.guide, batch)
        grad = torch.autograd.grad(value, params, allow_unused=True)
        values.append(value.detach() / REPS)
        grads.append(torch.cat([torch.zeros(p.numel()) if g is None else g.flatten() / REPS
                                for p, g in zip(params, grad)]))
    return torch.stack(values), torch.stack(grads)


def _max_welch_t(a: torch.Tensor, b: torch.Tensor) -> float:
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    keep = se > 0
    assert (a.mean(0)[~keep] == b.mean(0)[~keep]).all()
    return float(((a.mean(0) - b.mean(0))[keep] / se[keep]).abs().max())


def _threshold(P: int) -> float:
    return float(stats.t.ppf(1 - ALPHA / (2 * P), BLOCKS - 1))


@pytest.mark.parametrize("sampling", ["balanced", "random"])
@pytest.mark.parametrize("rows", ["complete", "mixed"])
def test_paper_estimator_has_the_stratified_expectation(rows, sampling):
    paper_value, paper_grad = _blocks(_model("elbo", sampling), rows, seed=100)
    strat_value, strat_grad = _blocks(_model("stratified_elbo"), rows, seed=5000)
    assert _max_welch_t(paper_value[:, None], strat_value[:, None]) < _threshold(1)
    assert _max_welch_t(paper_grad, strat_grad) < _threshold(paper_grad.shape[1])
    assert strat_grad.mean(0).abs().max() > 0.5  # a sizable gradient to compare
    # the stratified estimator samples every subset: less variance per step
    assert strat_grad.var(0).sum() < paper_grad.var(0).sum()


def test_a_biased_assignment_is_detected(monkeypatch):
    """Positive control: always the row's first subset (singletons first) is a biased estimate."""
    def first(active, balanced=True):
        return active.long().argmax(-1)

    monkeypatch.setattr("pyromv.models.mopoe.assign_components", first)
    _, paper_grad = _blocks(_model("elbo"), "complete", seed=100)
    _, strat_grad = _blocks(_model("stratified_elbo"), "complete", seed=5000)
    assert _max_welch_t(paper_grad, strat_grad) > 2 * _threshold(paper_grad.shape[1])


def test_balanced_assignment_spreads_rows_evenly():
    """Rows with the same active set split over it as evenly as the batch allows (counts differ by
    at most one), and each row's marginal is uniform (frequencies over many draws)."""
    active = torch.ones(70, 7, dtype=torch.bool)
    counts = torch.bincount(assign_components(active), minlength=7)
    assert counts.max() - counts.min() <= 1
    active = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    torch.manual_seed(0)
    n = 6000
    freq = torch.zeros(4, 4)
    for balanced in (True, False):
        freq.zero_()
        for _ in range(n):
            freq[torch.arange(4), assign_components(active, balanced)] += 1
        expected = active / active.sum(-1, keepdim=True)
        # binomial standard error of each frequency; 5 se is a 6e-7 two-sided false alarm each
        se = (expected * (1 - expected) / n).sqrt()
        assert ((freq / n - expected).abs() <= 5 * se + 1e-12).all(), balanced
        assert (freq[~active] == 0).all()


def test_one_decoder_pass_per_modality():
    """The paper estimator decodes each modality once per row, whatever the number of subsets."""
    model = _model("elbo")
    batch = _batch(model, "complete")
    calls = []
    for m in model.names:
        model.decoders[m].register_forward_hook(lambda mod, inp, out, m=m: calls.append((m, inp[0].shape)))
    model.default_loss().differentiable_loss(model.model, model.guide, batch)
    assert sorted(c[0] for c in calls) == sorted(model.names)
    assert all(shape == (batch.batch_size, LATENT) for _, shape in calls)
    assert math.comb(3, 1) + math.comb(3, 2) + 1 == len(model.subsets)
