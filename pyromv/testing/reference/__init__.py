"""Hand-written torch losses of the models' objectives, one module per model (``<model>_reference_loss``).

Each function computes, with plain torch on a model's own networks, the loss that the
model's Pyro objective computes: same estimator, same order of random draws, so under the same
seed the values and gradients agree. They serve two purposes: the equality tests check the
Pyro objectives against them, and the benchmarks report pyromv's per-step cost as a ratio to
them (Pyro's tracing is the only difference). Like the models, they decode only the latents
whose likelihood an estimator scores.

What a reference checks is the *arithmetic* of an estimator: that the Pyro model, guide and
objective add up the terms the reference writes out (masks, weights, draws, gradients). It does
not show that those terms are the paper's: a reference written from the same misreading of a
paper would agree with the code. Fidelity to the papers comes from the oracle tests
(``tests/oracles``: closed-form likelihoods, posteriors and bounds of the linear-Gaussian model).
"""

from .cmvae import cmvae_reference_loss
from .crmvae import crmvae_reference_loss
from .cvae import cvae_reference_loss
from .dccae import dccae_reference_loss
from .dmvae import dmvae_reference_loss
from .dvcca import dvcca_reference_loss
from .gpoe import gpoe_reference_loss
from .jmvae import jmvae_reference_loss
from .jnf import jnf_reference_loss, jnf_unimodal_reference_loss
from .maae import maae_reference_loss
from .mcvae import mcvae_reference_loss
from .mhvae import mhvae_reference_loss
from .mmjsd import mmjsd_reference_loss
from .mmvae import mmvae_reference_loss
from .mmvae_plus import mmvae_plus_reference_loss
from .mopoe import mopoe_iwae_reference_loss, mopoe_reference_loss, mopoe_stratified_reference_loss
from .mvae import mvae_elbo_reference, mvae_iwae_reference, mvae_reference_loss
from .mvtcae import mvtcae_reference_loss
from .mwae import mwae_reference_loss
from .nexus import nexus_reference_loss
from .telbo import telbo_reference_loss, telbo_unimodal_reference_loss

__all__ = [
    "cmvae_reference_loss",
    "crmvae_reference_loss",
    "cvae_reference_loss",
    "dccae_reference_loss",
    "dmvae_reference_loss",
    "dvcca_reference_loss",
    "gpoe_reference_loss",
    "jmvae_reference_loss",
    "jnf_reference_loss",
    "jnf_unimodal_reference_loss",
    "maae_reference_loss",
    "mcvae_reference_loss",
    "mhvae_reference_loss",
    "mmjsd_reference_loss",
    "mmvae_plus_reference_loss",
    "mmvae_reference_loss",
    "mopoe_iwae_reference_loss",
    "mopoe_reference_loss",
    "mopoe_stratified_reference_loss",
    "mvae_elbo_reference",
    "mvae_iwae_reference",
    "mvae_reference_loss",
    "mvtcae_reference_loss",
    "mwae_reference_loss",
    "nexus_reference_loss",
    "telbo_reference_loss",
    "telbo_unimodal_reference_loss",
]
