"""Hand-written torch losses of the models' objectives, one module per model.

Each function computes, with plain torch on a model's own networks, the loss that the
model's Pyro objective computes: same estimator, same order of random draws, so under the same
seed the values and gradients agree. They serve two purposes: the equality tests check the
Pyro objectives against them, and the benchmarks report pyromv's per-step cost as a ratio to
them (Pyro's tracing is the only difference). Like the models, they decode only the latents
whose likelihood an estimator scores.
"""

from .mmvae import mmvae_reference_loss
from .mopoe import mopoe_reference_loss, mopoe_stratified_reference_loss
from .mvae import mvae_elbo_reference, mvae_reference_loss

__all__ = [
    "mmvae_reference_loss",
    "mopoe_reference_loss",
    "mopoe_stratified_reference_loss",
    "mvae_elbo_reference",
    "mvae_reference_loss",
]
