"""Training: the optimisation loop, checkpoints and exact resume."""

from .checkpoint import find_checkpoint, write_checkpoint
from .stages import Stage, frozen_except
from .trainer import NonFiniteLossError, Trainer, TrainerConfig, default_optimizer

__all__ = [
    "NonFiniteLossError",
    "Stage",
    "Trainer",
    "TrainerConfig",
    "default_optimizer",
    "find_checkpoint",
    "frozen_except",
    "write_checkpoint",
]
