"""Training: the optimisation loop, checkpoints and exact resume."""

from .checkpoint import (
    CheckpointWarning,
    CorruptCheckpointError,
    find_checkpoint,
    load_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from .stages import Stage, frozen_except
from .trainer import DivergenceError, NonFiniteLossError, Trainer, TrainerConfig, default_optimizer

__all__ = [
    "CheckpointWarning",
    "CorruptCheckpointError",
    "DivergenceError",
    "NonFiniteLossError",
    "Stage",
    "Trainer",
    "TrainerConfig",
    "default_optimizer",
    "find_checkpoint",
    "frozen_except",
    "load_checkpoint",
    "verify_checkpoint",
    "write_checkpoint",
]
