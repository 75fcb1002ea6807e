"""``Trainer.evaluate`` of every registered model against the closed-form ``log p(X_O)``.

``Trainer.evaluate`` reports ``model.evaluation_loss()`` with ``evaluation_model()`` and
``evaluation_guide()``: the negative of a lower bound on ``log p(X_O)`` (beta = 1, no
training-only penalty). With linear decoders holding the true ``W_m, b_m`` of the
linear-Gaussian model (tests/oracles/linear_gaussian.py) and Normal likelihoods of the true
scale, each model below *is* that model, whatever its guide, so ``log p(X_O)`` is known in closed
form for every row, rows missing modalities included. Inputs of a decoder beyond the shared ``z``
(private latents ``w_m``) get zero weights: ``x_m`` then does not depend on ``w_m`` and
``log p(X_O)`` is unchanged.

The guides are first trained (decoders frozen at the truth) so that the bound is within a few
nats of ``log p``: a "bound" that forgot its KL term or subtracted a penalty with the wrong
sign then exceeds ``log p`` (``test_the_check_catches_an_evaluation_without_kl``). The check is
per datum: with ``d_i`` the estimate of row ``i`` (``Trainer.evaluate`` of the row repeated 50
times: the mean of 50 draws) minus its ``log p``, ``E[d_i] <= 0`` and the rows are
independent, so ``mean(d) > 3.29 SE`` has probability below 0.05% for a true bound
(one-sided normal tail; the bound's slack only lowers it).

Models whose generative model cannot be made the linear-Gaussian one are listed in
``NOT_LINEAR_GAUSSIAN`` with the reason; a model registered later must be added to one of the
two tables (the test fails until it is).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from pyromv.data import MultimodalDataset
from pyromv.infer import ELBO
from pyromv.models import MVAE, get_model_class, registered_models
from pyromv.training import Trainer, TrainerConfig
from tests.oracles.linear_gaussian import LinearGaussian, mixed_row_masks, modalities

DIMS = {"a": 6, "b": 5, "c": 8}
SCALES = {"a": 0.5, "b": 0.8, "c": 0.3}
LATENT = 4
REPEATS = 50  # each row's estimate is the mean of 50 draws (a row repeated 50 times)
N_TEST = 140  # 20 rows of each of the 7 observation patterns
Z_ONE_SIDED = 3.29  # P(N(0, 1) > 3.29) = 0.0005

#: config options that make the model's generative side the linear-Gaussian one (N(0, I) prior);
#: and the guide's training learning rate where the default below diverges
LINEAR_GAUSSIAN: dict[str, dict] = {
    "crmvae": {}, "dmvae": {}, "dvcca": {}, "gpoe": {}, "jmvae": {}, "mcvae": {}, "mmjsd": {},
    "mmvae": {"distribution": "normal"}, "mmvae_plus": {"distribution": "normal"}, "mopoe": {},
    "mvae": {}, "mvtcae": {}, "telbo": {},
    "jnf": {},
}
LEARNING_RATE = {"jnf": 3e-3}  # JNF's unimodal stage diverges (loss ~1e18) at 1e-2 on this data

NOT_LINEAR_GAUSSIAN: dict[str, str] = {
    "cmvae": "clustered prior: p(z) is a mixture over clusters, not N(0, I)",
    "cvae": "conditional model: decodes the main modality only and bounds log p(x_main | conditioning)",
    "mhvae": "hierarchy: the decoders read the bottom level, whose prior is the learned hierarchy",
    "nexus": "one bottom latent per modality under a top latent: no shared z ~ N(0, I) decoded linearly",
    "dccae": "deterministic autoencoder: no likelihood, Trainer.evaluate reports its objective, not a bound",
    "maae": "deterministic autoencoder: no likelihood, Trainer.evaluate reports its objective, not a bound",
    "mwae": "deterministic autoencoder: no likelihood, Trainer.evaluate reports its objective, not a bound",
}


@functools.cache
def _lg() -> LinearGaussian:
    return LinearGaussian.random(DIMS, LATENT, SCALES, seed=1)


def _dataset(n: int, seed: int) -> MultimodalDataset:
    lg = _lg()
    return MultimodalDataset(modalities(lg), lg.sample(n, seed=seed), mixed_row_masks(lg.names, n, seed=seed + 1))


@torch.no_grad()
def _true_decoders(model) -> None:
    """``[W_m | 0] [z, w_m] + b_m``, frozen."""
    lg = _lg()
    for m in model.names:
        linear = model.decoders[m].linear
        assert linear.in_features >= LATENT
        linear.weight.zero_()
        linear.weight[:, :LATENT].copy_(lg.W[m])
        linear.bias.copy_(lg.b[m])
        for p in model.decoders[m].parameters():
            p.requires_grad_(False)


def test_every_registered_model_is_classified():
    unknown = set(registered_models()) - set(LINEAR_GAUSSIAN) - set(NOT_LINEAR_GAUSSIAN)
    assert not unknown, f"add {sorted(unknown)} to LINEAR_GAUSSIAN or NOT_LINEAR_GAUSSIAN (with the reason)"


def _gap(name: str) -> tuple[float, float, Trainer, torch.Tensor]:
    """Mean and standard error of ``d_i`` after training the guide; the trainer; the rows' bounds."""
    cls = get_model_class(name)
    model = cls(modalities(_lg()), cls.config_class(latent_dim=LATENT, **LINEAR_GAUSSIAN[name]))
    _true_decoders(model)
    trainer = Trainer(model, config=TrainerConfig(
        epochs=30, batch_size=100, lr=LEARNING_RATE.get(name, 1e-2), val_fraction=0.0, progress=False,
    ))
    trainer.fit(_dataset(500, seed=5))
    assert torch.equal(model.decoders["a"].linear.weight[:, :LATENT], _lg().W["a"])  # still the truth

    test = _dataset(N_TEST, seed=2)
    log_p = _lg().log_marginal(test.data, test.obs_mask)
    with torch.no_grad():
        bound = torch.tensor([
            -trainer.evaluate(test.subset(torch.full((REPEATS,), i)), batch_size=REPEATS) for i in range(N_TEST)
        ])
    assert bound.isfinite().all()
    d = bound - log_p
    return float(d.mean()), float(d.std() / math.sqrt(N_TEST)), trainer, bound


@pytest.mark.parametrize("name", registered_models())
def test_trainer_evaluate_is_a_bound_on_the_closed_form(name):
    if name in NOT_LINEAR_GAUSSIAN:
        pytest.skip(NOT_LINEAR_GAUSSIAN[name])
    if name not in LINEAR_GAUSSIAN:
        pytest.fail(f"{name} is not classified (see test_every_registered_model_is_classified)")
    mean, se, trainer, bound = _gap(name)
    assert mean < Z_ONE_SIDED * se, f"{name}: Trainer.evaluate exceeds log p by {mean:.3f} (SE {se:.3f})"
    # the guide was trained: the bound is informative (a sanity check that the test can fail)
    assert mean > -20.0, f"{name}: bound {mean:.2f} nats below log p after training"
    # and the whole-set figure is the mean of the rows' (same estimator, all rows at once)
    torch.manual_seed(0)
    whole = -trainer.evaluate(_dataset(N_TEST, seed=2))
    assert whole == pytest.approx(float(bound.mean()), abs=6 * float(bound.std()) / math.sqrt(N_TEST) + 1e-9)


def test_the_check_catches_an_evaluation_without_kl(monkeypatch):
    """MVAE whose evaluation drops the KL term (``beta = 0``): ``E_q[log p(X|z)]`` exceeds
    ``log p`` by about ``KL(q || p(z)) - KL(q || p(z | X))``, and the check above sees it."""
    monkeypatch.setattr(MVAE, "evaluation_loss", lambda self: ELBO(beta=0.0, max_plate_nesting=1))
    mean, se, _, _ = _gap("mvae")
    assert mean > Z_ONE_SIDED * se
