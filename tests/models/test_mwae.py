"""mWAE: loss and gradients equal a torch reference; the MMD estimate against hand-written sums
and its unbiasedness; a deterministic validation loss; missing modalities; clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from pyromv.data import MultimodalBatch
from pyromv.models import MWAE, MWAEConfig
from pyromv.models.mwae import imq_kernel, mmd_unbiased
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.mwae import mwae_reference_loss
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS

CONFIGS = {
    "default": {},
    "one-scale-wide-prior-dims": {"kernel_scales": [0.5], "mmd_weight": 100.0, "prior_scale": 2.0,
                                  "likelihood_rescaling": "dims"},
}


def _model(**options) -> MWAE:
    torch.manual_seed(0)
    return MWAE(MODS, MWAEConfig(latent_dim=3, **options))


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = shared.batch(missing, 16)
    assert missing == 0 or not batch.obs_mask["img"].all()
    assert_matches_reference(model, mwae_reference_loss, batch)


def test_the_reference_check_can_fail():
    model = _model(mmd_weight=10.0)

    def other_weight(m, b):
        m.config.mmd_weight = 11.0
        try:
            return mwae_reference_loss(m, b)
        finally:
            m.config.mmd_weight = 10.0

    with pytest.raises(AssertionError, match="are not close"):
        assert_matches_reference(model, other_weight, shared.batch(0.0, 16))


def test_mmd_equals_hand_written_sums():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64) + 1
    constants = torch.tensor([0.5, 4.0], dtype=torch.float64)

    def k(a, b):
        d = float(((a - b) ** 2).sum())
        return sum(c / (c + d) for c in (0.5, 4.0))

    assert float(imq_kernel(x[:1], y[:1], constants)[0, 0]) == pytest.approx(k(x[0], y[0]))
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(4), 2)) / 12
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(3), 2)) / 6
    xy = sum(k(a, b) for a in x for b in y) / 12
    assert float(mmd_unbiased(x, y, constants)) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        mmd_unbiased(x[:1], y, constants)


def test_mmd_is_unbiased():
    """Equal distributions: the U-statistic averages to 0 (its biased V-statistic cousin would
    be positive); different ones: positive."""
    g = torch.Generator().manual_seed(1)
    constants = torch.tensor([2.0 * 2 * s for s in (0.1, 1.0, 10.0)], dtype=torch.float64)
    same = torch.stack([mmd_unbiased(torch.randn(5, 2, generator=g, dtype=torch.float64),
                                     torch.randn(5, 2, generator=g, dtype=torch.float64), constants)
                        for _ in range(4000)])
    assert abs(float(same.mean())) < 4 * float(same.std() / same.numel() ** 0.5)
    shifted = torch.stack([mmd_unbiased(torch.randn(5, 2, generator=g, dtype=torch.float64) + 1.5,
                                        torch.randn(5, 2, generator=g, dtype=torch.float64), constants)
                           for _ in range(200)])
    assert float(shifted.mean()) > 10 * float(shifted.std() / shifted.numel() ** 0.5)


def test_kernel_constants_follow_the_paper():
    model = _model(prior_scale=2.0, kernel_scales=[0.5, 1.0])
    torch.testing.assert_close(model.kernel_constants, torch.tensor([2 * 3 * 0.5 * 4.0, 2 * 3 * 1.0 * 4.0]))


def test_validation_loss_is_deterministic_training_loss_is_not():
    model = _model()
    batch = shared.batch(0.3, 16)
    loss = model.evaluation_loss()
    values = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        values.append(loss.differentiable_loss(model.evaluation_model(), model.evaluation_guide(), batch))
        torch.manual_seed(seed)
        values.append(model.default_loss().differentiable_loss(model.model, model.guide, batch))
    assert torch.equal(values[0], values[2]) and not torch.equal(values[1], values[3])


def test_masking_a_modality_equals_removing_it():
    model = _model()
    torch.manual_seed(0)
    two = MWAE(MODS[:2], MWAEConfig(latent_dim=3))
    two.load_state_dict({k: v for k, v in model.state_dict().items() if ".tag." not in k})
    batch = shared.batch(0.3, 16)
    masked = MultimodalBatch(batch.data, {**batch.obs_mask, "tag": torch.zeros_like(batch.obs_mask["tag"])})
    kept = ("img", "vec")
    removed = MultimodalBatch({k: batch.data[k] for k in kept}, {k: batch.obs_mask[k] for k in kept})
    values = []
    for m, b in ((model, masked), (two, removed)):
        torch.manual_seed(4)  # the same prior draws: the pooled codes are the same set
        values.append(m.default_loss().differentiable_loss(m.model, m.guide, b))
    torch.testing.assert_close(*values)


@pytest.mark.parametrize("options,match", [
    ({"mmd_weight": -1.0}, "mmd_weight"),
    ({"kernel_scales": []}, "kernel_scales"),
    ({"kernel_scales": [1.0, 0.0]}, "kernel_scales"),
    ({"beta": 0.5}, "beta"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        MWAE(MODS, MWAEConfig(latent_dim=3, **options))
