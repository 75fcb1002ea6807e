"""What the training progress bar says: each loss next to the name of the objective it is.

The trainer shows ``train -<objective> <value> | val -<objective> <value>``: the training
objective (``model.default_loss()``, or the stage's) and the validation objective
(``model.evaluation_loss()``: the plain ELBO with ``beta = 1`` of the model's evaluation guide, or
the stage's own), both as losses (the negative bound) per row. E.g. MMVAE:
``train -StratifiedIWAE(K=10) 183.21 | val -StratifiedELBO 190.02``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def objective_label(loss: Any) -> str:
    """A short name of an objective: its ``label`` attribute if it has one, else its class name,
    with its non-default options: ``K`` (particles), the gradient estimator and ``beta``.

    >>> from pyromv.infer import StratifiedIWAE
    >>> objective_label(StratifiedIWAE(num_particles=10, gradient="dreg"))
    'StratifiedIWAE(K=10, dreg)'
    """
    name = getattr(loss, "label", None) or type(loss).__name__
    options = []
    particles = getattr(loss, "num_particles", 1)
    if isinstance(particles, int) and particles > 1:
        options.append(f"K={particles}")
    gradient = getattr(loss, "gradient", "standard")
    if isinstance(gradient, str) and gradient != "standard":
        options.append(gradient)
    beta = getattr(loss, "beta", 1.0)
    if isinstance(beta, (int, float)) and beta != 1.0:
        options.append(f"beta={beta:g}")
    return f"{name}({', '.join(options)})" if options else name


def progress_text(record: Mapping[str, Any], train_loss: Any, val_loss: Any) -> str:
    """``[stage <name> | ]train -<objective> <loss> [| val -<objective> <loss>]`` of an epoch's record."""
    parts = [f"stage {record['stage']}"] if "stage" in record else []
    parts.append(f"train -{objective_label(train_loss)} {record['train_loss']:.2f}")
    if "val_loss" in record:
        parts.append(f"val -{objective_label(val_loss)} {record['val_loss']:.2f}")
    return " | ".join(parts)
