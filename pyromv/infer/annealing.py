"""KL warm-up schedules (Bowman et al. 2016; Sønderby et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KLWarmup:
    """Linear KL warm-up: the latent weight rises from ``start`` to 1 over ``steps`` steps.

    ``factor(step) = start + (1 - start) * min(1, step / steps)``; ``steps = 0`` disables it.
    """

    steps: int = 0
    start: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"KL warm-up steps must be >= 0, got {self.steps}")
        if not 0.0 <= self.start <= 1.0:
            raise ValueError(f"KL warm-up start must be in [0, 1], got {self.start}")

    def factor(self, step: int) -> float:
        """KL weight at optimisation step ``step``: linear from ``start`` to 1 over ``steps``."""
        if self.steps == 0:
            return 1.0
        return self.start + (1.0 - self.start) * min(1.0, step / self.steps)
