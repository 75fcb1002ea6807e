"""Shared set-up of the training-step benchmarks: models, batches and the two step functions."""

from __future__ import annotations

import torch

from pyromv import models
from pyromv.data import Modality, MultimodalDataset, PolyDigits, mcar
from pyromv.testing import reference

#: model name -> (class, config class, hand-written torch loss or None)
MODELS = {
    name: (getattr(models, cls), getattr(models, cls + "Config"), getattr(reference, f"{name}_reference_loss", None))
    for name, cls in [("mvae", "MVAE"), ("mmvae", "MMVAE"), ("mopoe", "MoPoE"), ("jmvae", "JMVAE"),
                      ("mvtcae", "MVTCAE"), ("crmvae", "CRMVAE"), ("dmvae", "DMVAE"), ("mmjsd", "MMJSD"),
                      ("gpoe", "GPoE"), ("mcvae", "MCVAE"), ("dvcca", "DVCCA"),
                      ("mmvae_plus", "MMVAEPlus"), ("cmvae", "CMVAE"), ("cvae", "CVAE"), ("telbo", "TELBO"),
                      ("jnf", "JNF"), ("nexus", "Nexus"), ("mhvae", "MHVAE"),
                      ("dccae", "DCCAE"), ("maae", "MAAE"), ("mwae", "MWAE")]
}


def setting(name: str, batch_size: int, seed: int = 0):
    """``(modalities, batch)`` of a benchmark setting, 30% of modalities missing at random."""
    g = torch.Generator().manual_seed(seed)
    if name == "mlp784":
        mods = [Modality(f"m{i}", (784,), likelihood="bernoulli",
                         encoder={"name": "mlp", "kwargs": {"hidden_dims": [400]}},
                         decoder={"name": "mlp", "kwargs": {"hidden_dims": [400]}}) for i in range(3)]
        data = {m.name: (torch.rand(batch_size, 784, generator=g) < 0.3).float() for m in mods}
        dataset = MultimodalDataset(mods, data)
    elif name == "polydigits":
        source = PolyDigits()
        mods = source.modalities()
        dataset = source.load("train").subset(torch.arange(batch_size))
    else:
        raise ValueError(f"unknown setting {name!r}")
    return mods, mcar(dataset, 0.3, seed=seed).batch()


def make(model_name: str, mods):
    cls, config_cls, reference = MODELS[model_name]
    return cls(mods, config_cls()), reference


def pyromv_step(model, loss, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.differentiable_loss(model.model, model.guide, batch).backward()
    optimizer.step()


def reference_step(model, reference, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    reference(model, batch).backward()
    optimizer.step()
