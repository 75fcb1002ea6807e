"""Helpers shared by the metrics: device, seeding and batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import torch

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first buffer or parameter (CPU when it has none)."""
    for t in model.buffers():
        return t.device
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG inside the block and restore the caller's state afterwards."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def as_batch(model: MultimodalVAE, data: MultimodalDataset | MultimodalBatch) -> MultimodalBatch:
    """All rows of ``data`` as one batch, checked against the model's modalities."""
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    if isinstance(data, MultimodalDataset):
        data.check_against(model.modalities)
        data = data.batch()
    if not isinstance(data, MultimodalBatch):
        raise TypeError(f"expected a MultimodalDataset or MultimodalBatch, got {type(data).__name__}")
    if set(data.names) != set(model.names):
        raise ValueError(f"the data has modalities {data.names}; the model expects {model.names}")
    return data


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model.eval()``, ``torch.no_grad()`` and Pyro's validation off inside the block (the data
    sets were validated when built; the support checks would cost a quarter of a likelihood
    evaluation); the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            yield
    finally:
        model.train(was_training)
