"""The Pyro objectives equal hand-written torch losses: same seed, same value, same gradients.

The references (``pyromv.testing.reference``) write each estimator out in plain torch on the
model's own networks, so a mismatch means the Pyro model/guide/objective computes something
other than the paper's loss (and the benchmarks' ratios compare equal work).
"""

import pytest

from pyromv.data import MultimodalDataset
from pyromv.models import MMVAE, MVAE, MMVAEConfig, MoPoE, MoPoEConfig, MVAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference import (
    mmvae_reference_loss,
    mopoe_reference_loss,
    mopoe_stratified_reference_loss,
    mvae_elbo_reference,
    mvae_reference_loss,
)
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS

MODALITIES = MODS


def dataset(missing: float) -> MultimodalDataset:
    """24 rows of the three modalities, a fraction ``missing`` of the modalities dropped (MCAR)."""
    return shared.dataset(missing)


def _batch(missing: float):
    return dataset(missing).batch()


CASES = [
    (lambda: MVAE(MODALITIES, MVAEConfig(latent_dim=4)), mvae_reference_loss),
    (lambda: MVAE(MODALITIES, MVAEConfig(latent_dim=4, objective="elbo", beta=2.0)), mvae_elbo_reference),
    (lambda: MMVAE(MODALITIES, MMVAEConfig(latent_dim=4, num_particles=5)), mmvae_reference_loss),
    (lambda: MMVAE(MODALITIES, MMVAEConfig(latent_dim=4, num_particles=5, objective="dreg")), mmvae_reference_loss),
    (lambda: MMVAE(MODALITIES, MMVAEConfig(latent_dim=4, num_particles=3, objective="iwae", distribution="normal",
                                           learn_prior_scale=True, beta=0.5)), mmvae_reference_loss),
    (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4)), mopoe_reference_loss),
    (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, prior_expert=True, subsets=[["img"], ["vec", "tag"]])),
     mopoe_reference_loss),
    (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, subset_sampling="random", beta=0.5)), mopoe_reference_loss),
    (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, objective="stratified_elbo")),
     mopoe_stratified_reference_loss),
    (lambda: MoPoE(MODALITIES, MoPoEConfig(latent_dim=4, objective="stratified_elbo", prior_expert=True,
                                           subsets=[["img"], ["vec", "tag"]])), mopoe_stratified_reference_loss),
]


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("make, reference", CASES)
def test_loss_and_gradients_equal_the_torch_reference(make, reference, missing):
    model = make()
    batch = _batch(missing)
    assert_matches_reference(model, reference, batch)


def test_the_equality_check_fails_on_a_wrong_reference():
    """Positive controls: a reference off by 1% in value, or computing another model's loss, is caught."""
    model = MVAE(MODALITIES, MVAEConfig(latent_dim=4, objective="elbo"))
    batch = _batch(0.0)
    assert_matches_reference(model, mvae_elbo_reference, batch, unreached=())
    with pytest.raises(AssertionError):
        assert_matches_reference(model, lambda m, b: 1.01 * mvae_elbo_reference(m, b), batch)
    other = MVAE(MODALITIES, MVAEConfig(latent_dim=4, objective="elbo"))
    with pytest.raises(AssertionError):  # the reference scores another model: no gradient reaches `other`
        assert_matches_reference(other, lambda m, b: mvae_elbo_reference(model, b), batch)
