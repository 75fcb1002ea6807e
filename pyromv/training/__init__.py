"""Training: the optimisation loop, checkpoints and exact resume."""

from .checkpoint import find_checkpoint, write_checkpoint
from .trainer import NonFiniteLossError, Trainer, TrainerConfig, default_optimizer

__all__ = ["NonFiniteLossError", "Trainer", "TrainerConfig", "default_optimizer", "find_checkpoint", "write_checkpoint"]
