"""JMVAE-kl: loss and gradients equal a hand-written torch reference (the joint encoder on complete
rows, the product of observed unimodal experts elsewhere, the KL ties on complete rows only)."""

from __future__ import annotations

import pytest
import torch

from pyromv.models import JMVAE, JMVAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.jmvae import jmvae_reference_loss
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS

CONFIGS = {
    "default": {},
    "k3-beta2-dims": {"num_particles": 3, "beta": 2.0, "likelihood_rescaling": "dims"},
    "mc-kl-alpha": {"analytic_kl": False, "num_particles": 2, "alpha": 0.5, "prior_scale": 2.0},
}


def _batch(missing: float):
    return shared.batch(missing, 16)


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    torch.manual_seed(0)
    model = JMVAE(MODS, JMVAEConfig(latent_dim=4, **cfg))
    batch = _batch(missing)
    assert missing == 0 or not batch.obs_mask["img"].all()
    assert_matches_reference(model, jmvae_reference_loss, batch)


def test_the_reference_check_can_fail():
    """Positive control: the reference with another alpha differs from the model's loss."""
    torch.manual_seed(0)
    model = JMVAE(MODS, JMVAEConfig(latent_dim=4, alpha=0.3))

    def with_other_alpha(m, b):
        m.config.alpha = 0.6
        try:
            return jmvae_reference_loss(m, b)
        finally:
            m.config.alpha = 0.3

    with pytest.raises(AssertionError, match="are not close"):
        assert_matches_reference(model, with_other_alpha, _batch(0.0))
