"""mAAE: loss and gradients equal a torch reference; the adversarial terms in closed form on a
constant discriminator; each player's gradient reaches only its own parameters; the trainer's
second optimiser (discriminator) trains, is checkpointed and resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch

from pyromv.data import MultimodalBatch
from pyromv.models import MAAE, MAAEConfig
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.maae import maae_reference_loss
from pyromv.training import Trainer, TrainerConfig
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS

CONFIGS = {
    "default": {"discriminator_hidden_dims": [16, 16]},
    "linear-weighted-dims": {"discriminator_hidden_dims": [], "adversarial_weight": 0.3,
                             "likelihood_rescaling": "dims", "prior_scale": 2.0},
}


def _model(**options) -> MAAE:
    torch.manual_seed(0)
    return MAAE(MODS, MAAEConfig(latent_dim=3, **{"discriminator_hidden_dims": [8], **options}))


def _loss(model, guide, batch) -> torch.Tensor:
    return model.default_loss().differentiable_loss(model.model, guide, batch)


@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = shared.batch(missing, 16)
    assert missing == 0 or not batch.obs_mask["img"].all()
    assert_matches_reference(model, maae_reference_loss, batch)


def test_the_reference_check_can_fail():
    model = _model(adversarial_weight=1.0)

    def other_weight(m, b):
        m.config.adversarial_weight = 2.0
        try:
            return maae_reference_loss(m, b)
        finally:
            m.config.adversarial_weight = 1.0

    with pytest.raises(AssertionError, match="are not close"):
        assert_matches_reference(model, other_weight, shared.batch(0.0, 16))


def test_adversarial_terms_in_closed_form():
    """A discriminator with constant logit ``c``: the generator term adds ``a * -log sigmoid(c)``
    per row (non-saturating: ``-log D``), the discriminator's cross-entropy adds
    ``-log sigmoid(c) - log(1 - sigmoid(c))`` per row, whatever the codes and rows observed."""
    c, a = 0.7, 0.4
    model = _model(adversarial_weight=a)
    with torch.no_grad():
        for layer in model.discriminator:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        model.discriminator[-1].bias.fill_(c)
    batch = shared.batch(0.4, 16)
    B = batch.batch_size
    without = MAAE(MODS, MAAEConfig(latent_dim=3, discriminator_hidden_dims=[8], adversarial_weight=0.0))
    without.load_state_dict(model.state_dict())
    recon = _loss(without, without.generator_guide, batch)
    generator = _loss(model, model.generator_guide, batch) - recon
    torch.testing.assert_close(generator, torch.tensor(B * a * -math.log(1 / (1 + math.exp(-c)))))
    sigmoid = 1 / (1 + math.exp(-c))
    expected = B * (-math.log(sigmoid) - math.log(1 - sigmoid))
    torch.testing.assert_close(model.auxiliary_loss(batch), torch.tensor(expected))
    torch.testing.assert_close(_loss(model, model.guide, batch) - recon, generator + expected)


def test_each_player_reaches_only_its_own_parameters():
    model = _model()
    batch = shared.batch(0.4, 16)
    disc = set(model.auxiliary_parameters())
    assert disc and disc == set(model.discriminator.parameters())
    others = [p for p in model.parameters() if p not in disc]
    grads = torch.autograd.grad(_loss(model, model.generator_guide, batch), list(disc), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)  # the generator term does not move D
    grads = torch.autograd.grad(model.auxiliary_loss(batch), others, allow_unused=True)
    assert all(g is None for g in grads)  # D's loss does not move the encoders
    grads = torch.autograd.grad(model.auxiliary_loss(batch), list(disc))
    assert all(g.abs().sum() > 0 for g in grads)


def test_masking_a_modality_equals_removing_it():
    model = _model()
    two = MAAE(MODS[:2], MAAEConfig(latent_dim=3, discriminator_hidden_dims=[8]))
    two.load_state_dict({k: v for k, v in model.state_dict().items() if ".tag." not in k})
    batch = shared.batch(0.3, 16)
    masked = MultimodalBatch(batch.data, {**batch.obs_mask, "tag": torch.zeros_like(batch.obs_mask["tag"])})
    kept = ("img", "vec")
    removed = MultimodalBatch({k: batch.data[k] for k in kept}, {k: batch.obs_mask[k] for k in kept})
    torch.testing.assert_close(_loss(model, model.evaluation_guide(), masked),
                               _loss(two, two.evaluation_guide(), removed))
    torch.manual_seed(3)
    a = model.auxiliary_loss(masked)
    torch.manual_seed(3)
    torch.testing.assert_close(a, two.auxiliary_loss(removed))


def _train(epochs: int, directory, resume: bool = True):
    model = _model()
    config = TrainerConfig(epochs=epochs, batch_size=8, val_fraction=0.25, progress=False, patience=0, seed=2)
    trainer = Trainer(model, config=config, checkpoint_dir=directory)
    trainer.fit(shared.dataset(0.3, 24), resume=resume)
    return model, trainer


def test_trainer_steps_a_second_optimiser_and_resumes_exactly(tmp_path):
    model, trainer = _train(3, tmp_path / "straight")
    disc = {id(p) for p in model.auxiliary_parameters()}
    main = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    aux = {id(p) for group in trainer.auxiliary_optimizer.param_groups for p in group["params"]}
    assert aux == disc and not main & disc and main | disc == {id(p) for p in model.parameters()}
    fresh = _model()
    pairs = zip(model.discriminator.parameters(), fresh.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in pairs)  # the discriminator trained
    # 2 epochs, then resume for the third: the same weights (discriminator included)
    _train(2, tmp_path / "split")
    resumed, again = _train(3, tmp_path / "split")
    assert len(again.history) == 3
    state, state2 = model.state_dict(), resumed.state_dict()
    for k in state:
        torch.testing.assert_close(state[k], state2[k], rtol=0, atol=0, msg=k)
    a, b = trainer.auxiliary_optimizer.state_dict()["state"], again.auxiliary_optimizer.state_dict()["state"]
    for k in a:
        torch.testing.assert_close(a[k]["exp_avg"], b[k]["exp_avg"], rtol=0, atol=0)


def test_log_likelihood_is_refused():
    from pyromv.metrics import log_likelihood

    with pytest.raises(ValueError, match="maae has no likelihood"):
        log_likelihood(_model(), shared.batch(0.0, 8), K=4)


@pytest.mark.parametrize("options,match", [
    ({"adversarial_weight": -1.0}, "adversarial_weight"),
    ({"discriminator_hidden_dims": [0]}, "discriminator_hidden_dims"),
    ({"num_particles": 3}, "num_particles"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        MAAE(MODS, MAAEConfig(latent_dim=3, **options))
