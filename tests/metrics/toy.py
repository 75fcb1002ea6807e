"""A linear MVAE whose cross-generations are known exactly, and data it reproduces.

Every modality shows the same ``x in R^2``: the one-hot code of a binary label plus small noise. Encoders
are the identity with a tiny scale, so ``q(z | X_S)`` is (up to 1e-6) a point mass at ``x``;
decoders are the identity, or a swap of the two coordinates for modalities listed in
``swapped`` (whose generations then always show the other class).
"""

import math

import torch

from pyromv.data import Modality, make_batch
from pyromv.models import MVAE, MVAEConfig

NAMES = ("a", "b", "c")


def identity_model(swapped=(), names=NAMES):
    mods = [
        Modality(m, (2,), likelihood="normal", likelihood_kwargs={"scale": 0.1},
                 encoder="linear", decoder="linear")
        for m in names
    ]
    model = MVAE(mods, MVAEConfig(latent_dim=2))
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with torch.no_grad():
        for m in names:
            model.encoders[m].linear.weight.copy_(torch.eye(2))
            model.encoders[m].linear.bias.zero_()
            model.encoders[m].log_scale.fill_(math.log(1e-3))
            model.decoders[m].linear.weight.copy_(swap if m in swapped else torch.eye(2))
            model.decoders[m].linear.bias.zero_()
    return model


def one_hot_data(n=40, seed=0, names=NAMES, masks=None):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    base = torch.nn.functional.one_hot(labels, 2).float()
    noise = 0.05 * torch.randn(n, 2, generator=g)  # shared: every modality shows the same x
    data = {m: base + noise for m in names}
    mods = identity_model(names=names).modalities
    return make_batch(mods, data, masks, labels)


def argmax_classifier(x):
    """Logits are the input itself: class = the larger coordinate."""
    return x
