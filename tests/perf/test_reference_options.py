"""The hand-written references cover what their docstrings claim (issue 20, item 4).

Each case below is a model option the reference says it handles and that
``test_reference_equality.py`` left out: feature-level masks (entries missing inside a
modality), ``likelihood_rescaling="dims"``, ``prior_scale != 1``, MoPoE's stratified IWAE,
DReG and SIWAE objectives and its private latents, MMVAE's stratified ELBO and SIWAE, MVAE's
IWAE. Value and every gradient must agree under one seed, on a complete batch, on one with 40% of
the modalities missing (MCAR) and on one that also misses 30% of the entries of the observed
modalities.
"""

from __future__ import annotations

import pytest
import torch

from pyromv.data import feature_mcar
from pyromv.models import MMVAE, MVAE, MMVAEConfig, MoPoE, MoPoEConfig, MVAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference import (
    mmvae_reference_loss,
    mopoe_iwae_reference_loss,
    mopoe_reference_loss,
    mopoe_stratified_reference_loss,
    mvae_elbo_reference,
    mvae_iwae_reference,
    mvae_reference_loss,
)
from tests.perf.test_reference_equality import MODALITIES
from tests.perf.test_reference_equality import dataset as reference_dataset


def _batch(missing: str):
    dataset = reference_dataset(0.4 if missing in ("rows", "features") else 0.0)
    if missing == "features":
        dataset = feature_mcar(dataset, 0.3, seed=2)
        assert all(dataset.obs_mask[m].dim() > 1 for m in dataset.names)  # feature-level masks
    return dataset.batch()


OPTIONS = {"likelihood_rescaling": "dims", "prior_scale": 1.7, "beta": 0.7}

CASES = {
    # MVAE: the three objectives with dims rescaling and a wider prior
    "mvae-subsampled-dims-prior": (lambda: MVAE(MODALITIES, MVAEConfig(latent_dim=4, **OPTIONS)),
                                   mvae_reference_loss),
    "mvae-elbo-dims-prior": (lambda: MVAE(MODALITIES, MVAEConfig(latent_dim=4, objective="elbo", **OPTIONS)),
                             mvae_elbo_reference),
    "mvae-iwae": (lambda: MVAE(MODALITIES, MVAEConfig(latent_dim=4, objective="iwae", num_particles=5)),
                  mvae_iwae_reference),
    "mvae-iwae-dims-prior": (lambda: MVAE(MODALITIES, MVAEConfig(latent_dim=4, objective="iwae", num_particles=3,
                                                                 **OPTIONS)), mvae_iwae_reference),
    # MMVAE: stratified ELBO and SIWAE (the IWAE and DReG are in test_reference_equality.py)
    "mmvae-elbo": (lambda: MMVAE(MODALITIES, MMVAEConfig(latent_dim=4, objective="elbo", num_particles=2)),
                   mmvae_reference_loss),
    "mmvae-siwae": (lambda: MMVAE(MODALITIES, MMVAEConfig(latent_dim=4, objective="siwae", num_particles=3)),
                    mmvae_reference_loss),
    "mmvae-iwae-dims-prior": (lambda: MMVAE(MODALITIES, MMVAEConfig(latent_dim=4, num_particles=3, **OPTIONS)),
                              mmvae_reference_loss),
    # MoPoE: every objective, with private latents, dims rescaling and a wider prior
    "mopoe-elbo-dims-prior": (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, **OPTIONS)), mopoe_reference_loss),
    "mopoe-elbo-private": (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, private_latent_dim=2)),
                           mopoe_reference_loss),
    "mopoe-stratified-private": (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, objective="stratified_elbo",
                                                                       private_latent_dim=2, **OPTIONS)),
                                 mopoe_stratified_reference_loss),
    "mopoe-iwae": (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, objective="iwae", num_particles=3)),
                   mopoe_iwae_reference_loss),
    "mopoe-dreg-prior-expert": (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, objective="dreg", num_particles=3,
                                                                      prior_expert=True)), mopoe_iwae_reference_loss),
    "mopoe-siwae-dims-prior": (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, objective="siwae", num_particles=2,
                                                                     **OPTIONS)), mopoe_iwae_reference_loss),
    "mopoe-iwae-private": (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, objective="iwae", num_particles=2,
                                                                 private_latent_dim=2)), mopoe_iwae_reference_loss),
    "mopoe-dreg-private": (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, objective="dreg", num_particles=2,
                                                                 private_latent_dim=2, **OPTIONS)),
                           mopoe_iwae_reference_loss),
}


@pytest.mark.parametrize("missing", ["none", "rows", "features"])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradients_equal_the_torch_reference(case, missing, float64):
    """In float64: the dims weights (up to 64 / 3 here) scale float32 round-off past the tolerance."""
    make, reference = CASES[case]
    assert_matches_reference(make(), reference, _batch(missing))


def test_the_options_change_the_loss():
    """Positive control: the options above are not no-ops here, so the cases test something."""
    batch = _batch("features")
    torch.manual_seed(0)
    plain = MVAE(MODALITIES, MVAEConfig(latent_dim=4, objective="elbo"))
    weights = {k: v for k, v in plain.state_dict().items() if k != "prior_scale"}
    for option in ({"likelihood_rescaling": "dims"}, {"prior_scale": 1.7}):
        other = MVAE(MODALITIES, MVAEConfig(latent_dim=4, objective="elbo", **option))
        other.load_state_dict(weights, strict=False)
        assert float(other.prior_scale[0]) == pytest.approx(option.get("prior_scale", 1.0))
        torch.manual_seed(1)
        a = mvae_elbo_reference(plain, batch)
        torch.manual_seed(1)
        b = mvae_elbo_reference(other, batch)
        assert not torch.allclose(a, b), option
    full = _batch("rows")
    torch.manual_seed(1)
    a = mvae_elbo_reference(plain, full)
    torch.manual_seed(1)
    b = mvae_elbo_reference(plain, batch)
    assert not torch.allclose(a, b)  # the feature masks drop entries from the likelihood
