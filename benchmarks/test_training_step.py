"""One training step per model: pyromv's Pyro objective and the hand-written torch reference.

Run: ``pytest benchmarks/test_training_step.py --benchmark-only --benchmark-group-by=param:setting,param:batch_size``
Ratios (pyromv / reference, same run): ``python -m benchmarks.performance_table``.
"""

import pyro
import pytest
import torch

from .steps import MODELS, make, pyromv_step, reference_step, setting

THREADS = 1  # docs/performance.md: one torch thread
torch.set_num_threads(THREADS)


@pytest.mark.parametrize("setting_name", ["mlp784", "polydigits"])
@pytest.mark.parametrize("batch_size", [128, 256])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("impl", ["pyromv", "reference"])
def test_training_step(benchmark, impl, model_name, batch_size, setting_name):
    mods, batch = setting(setting_name, batch_size)
    model, reference = make(model_name, mods)
    if impl == "reference" and reference is None:
        pytest.skip(f"no hand-written reference for {model_name}")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    benchmark.extra_info.update(model=model_name, impl=impl, setting=setting_name, batch_size=batch_size)
    with pyro.validation_enabled(False):
        if impl == "pyromv":
            loss = model.default_loss()
            benchmark(pyromv_step, model, loss, optimizer, batch)
        else:
            benchmark(reference_step, model, reference, optimizer, batch)
