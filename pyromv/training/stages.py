"""Training stages: which parameters train, on which objective, for how long.

Most models train in one stage (every parameter, the default objective). Some papers train in
several: TELBO and JNF first fit a joint model, then unimodal encoders with the joint parts frozen.
Such a model returns its :class:`Stage` list from ``stages()``; the :class:`~pyromv.training.Trainer`
runs them in order, with one optimiser per stage, and checkpoints mid-stage so that an interrupted
run resumes exactly (also across a switch). In a plain Pyro script, run each stage's ``model``,
``guide`` and ``loss`` under :func:`frozen_except`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pyro
import torch


@dataclass
class Stage:
    """One stage of training.

    Attributes
    ----------
    name : str
        Shown in the history (``record["stage"]``) and the progress bar.
    loss : pyro.infer.ELBO
        The stage's objective, applied to ``model`` and ``guide``.
    model, guide : callables
        The Pyro model and guide the objective takes (called with a batch).
    trainable : sequence of str
        Prefixes of the parameter names (``model.named_parameters()``) that train; empty: all.
        The others are frozen (``requires_grad=False``) for the stage.
    epochs : int, float or None
        Epochs of the stage: an int, a fraction in ``(0, 1)`` of the trainer's ``epochs``, or
        ``None`` for the epochs that remain. Early stopping ends a stage (the next one starts
        from the stage's best weights when checkpoints are written).
    validation : (loss, model, guide), optional
        What the stage validates on (default: the model's ``evaluation_loss`` with
        ``evaluation_model``/``evaluation_guide``).
    """

    name: str
    loss: pyro.infer.ELBO
    model: Callable
    guide: Callable
    trainable: Sequence[str] = ()
    epochs: int | float | None = None
    validation: tuple[pyro.infer.ELBO, Callable, Callable] | None = None

    def parameters(self, module: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters of ``module`` this stage trains."""
        return [p for name, p in module.named_parameters() if self.trains(name)]

    def trains(self, name: str) -> bool:
        """Whether parameter ``name`` is trained in this stage."""
        return not self.trainable or any(name.startswith(prefix) for prefix in self.trainable)

    def resolve_epochs(self, total: int, used: int) -> int:
        """Epochs of this stage in a run of ``total`` epochs of which ``used`` went to earlier stages."""
        left = max(total - used, 0)
        if self.epochs is None:
            return left
        if isinstance(self.epochs, float) and not float(self.epochs).is_integer():
            return min(left, max(1, math.floor(self.epochs * total + 0.5)))
        return min(left, int(self.epochs))

    def validate(self, module: torch.nn.Module) -> None:
        """Check the stage against ``module``: epochs and that every trainable prefix names parameters."""
        if self.epochs is not None:
            e = self.epochs
            if isinstance(e, bool) or not (
                (isinstance(e, int) and e >= 1) or (isinstance(e, float) and (0 < e < 1 or (e >= 1 and e.is_integer())))
            ):
                raise ValueError(f"stage {self.name!r}: epochs must be an int >= 1, a fraction in (0, 1) "
                                 f"or None, got {e!r}")
        if not self.parameters(module):
            raise ValueError(f"stage {self.name!r} trains no parameter: no name starts with "
                             f"{list(self.trainable)}")


@contextmanager
def frozen_except(module: torch.nn.Module, stage: Stage) -> Iterator[None]:
    """Freeze the parameters ``stage`` does not train (``requires_grad=False``) for the block,
    then restore every flag. Optimisers skip parameters without gradients, so a plain
    ``pyro.infer.SVI`` loop inside the block trains only the stage's parameters."""
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    try:
        for name, p in module.named_parameters():
            if not stage.trains(name):
                p.requires_grad_(False)
        yield
    finally:
        for name, p in module.named_parameters():
            p.requires_grad_(flags[name])
