"""Hydra structured configs of the command line: groups ``model``, ``data`` and ``trainer``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..data.sources import PolyDigits
from ..models import get_model_class, registered_models
from ..training import TrainerConfig

#: data sources by config-group name; each config has ``modalities()`` and ``load(split)``
DATA_SOURCES: dict[str, type] = {"polydigits": PolyDigits}


@dataclass
class TrainJob:
    """``pyromv-train``: train a model on a data set with simulated missingness, then evaluate.

    Attributes
    ----------
    missing_rate : float
        MCAR rate of every modality in the *training* set (every row keeps one modality).
    missing_seed : int
        Seed of the missingness.
    plot_rows : int
        Columns in the cross-generation picture.
    """

    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"model": "mvae"}, {"data": "polydigits"}, {"trainer": "default"}]
    )
    model: Any = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = MISSING
    missing_rate: float = 0.3
    missing_seed: int = 0
    plot_rows: int = 8


def register_configs() -> None:
    """Put the job, every registered model's config and every data source in Hydra's store."""
    store = ConfigStore.instance()
    store.store(name="train", node=TrainJob)
    for name in registered_models():
        store.store(group="model", name=name, node=get_model_class(name).config_class)
    for name, source in DATA_SOURCES.items():
        store.store(group="data", name=name, node=source)
    store.store(group="trainer", name="default", node=TrainerConfig(epochs=100, patience=15))
