"""The sampler step of ``pyromv-train``: fit, save, score held-out codes, draw a picture."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from .base import build_sampler, encode_latents, get_sampler_class
from .evaluation import held_out_log_density
from .plots import _is_image, plot_generations
from .prior import PriorSampler

PICTURE_NAME = "sampler_generations.png"


def fit_sampler_job(
    name: str,
    options: Mapping[str, Any],
    model: MultimodalVAE,
    train: MultimodalDataset,
    test: MultimodalDataset,
    out: Path,
    n_plot: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit sampler ``name`` on ``train``'s posterior means, save it to ``out/sampler``, score the
    test set's codes under it and under the prior, and write ``out/sampler_generations.png``
    (prior and sampler generations, one block each) when the model has image modalities.

    Returns the JSON-serialisable summary that ``pyromv-train`` puts in ``metrics.json``.
    """
    options = dict(options)
    if "progress" in inspect.signature(get_sampler_class(name)).parameters:
        options.setdefault("progress", progress)
    sampler = build_sampler(name, **options).fit(model, train)
    sampler.save(out / "sampler")
    prior = PriorSampler().fit(model)
    test_codes = encode_latents(model, test)
    summary: dict[str, Any] = {
        "name": name,
        "options": sampler.options(),
        "fit_info": sampler.fit_info,
        "test_log_density": held_out_log_density(sampler, test_codes),
        "prior_test_log_density": held_out_log_density(prior, test_codes),
    }
    if any(_is_image(m.shape) for m in model.modalities):
        generations = {"prior": prior.generate(n_plot)}
        if name != "prior":
            generations[name] = sampler.generate(n_plot)
        fig = plot_generations(generations, n=n_plot, path=out / PICTURE_NAME,
                               title=f"joint generations: prior vs {name}")
        plt.close(fig)
        summary["picture"] = PICTURE_NAME
    return summary
