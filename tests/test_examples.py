"""Every script in ``examples/`` runs with its default arguments and learns what it says it shows.

Each example's ``main()`` returns its headline numbers; the checks are the claims its docstring
makes (coherence above chance, a prediction better than the training mean, a frozen stage that
stays frozen), not values recorded from a run.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CHECKS = {
    "poe_mvae": lambda r: r["coherence_from_m0"] > 0.5,  # chance: 0.1
    "moe_mmvae": lambda r: math.isfinite(r["log_likelihood"]) and 0.0 <= r["khat_share"] <= 1.0,
    "mopoe_private": lambda r: r["coherence_from_m0"] > 0.2 and r["self_accuracy"] > r["coherence_from_m0"],
    "joint_jmvae": lambda r: r["gain"] > 0.0,  # knowing m0 tells something about m1
    "staged_telbo": lambda r: r["decoders_unchanged"] == 1.0 and math.isfinite(r["elbo_m0"]),
    "conditional_cvae": lambda r: r["error"] < r["baseline_error"] and r["spread"] > 0.0,
    "hierarchical_mhvae": lambda r: r["coherence_from_m0"] > 0.3,
    "tabular_linnerud": lambda r: r["rmse"] < r["baseline_rmse"],
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_checked():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_runs_with_its_defaults(name, one_thread):
    module = _load(name)
    assert module.__doc__ and "Run: ``python examples/" in module.__doc__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = module.main()
    assert CHECKS[name](result), result
