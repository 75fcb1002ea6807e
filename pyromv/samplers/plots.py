"""Pictures of generated rows: one block per sampler, one row per image modality."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..data.dataset import MultimodalDataset  # noqa: E402
from ..metrics.plots import _show  # noqa: E402


def _is_image(shape: Sequence[int]) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3)


def plot_generations(
    generations: Mapping[str, MultimodalDataset],
    n: int = 8,
    modalities: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    title: str = "joint generations",
) -> Figure:
    """One block per entry of ``generations`` (e.g. ``{"prior": ..., "maf": ...}``): a row per
    image modality ``(C, H, W)``, the first ``n`` generated rows as columns (a column shows one
    joint sample across the modalities; its title is the row's label when labelled).

    Saved as PNG when ``path`` is given.
    """
    if not generations:
        raise ValueError("plot_generations needs at least one set of generations")
    first = next(iter(generations.values()))
    if modalities is None:
        modalities = [m.name for m in first.modalities if _is_image(m.shape)]
    modalities = list(modalities)
    if not modalities:
        raise ValueError("plot_generations needs at least one image modality (C, H, W)")
    for key, ds in generations.items():
        if not isinstance(ds, MultimodalDataset):
            raise TypeError(f"generations[{key!r}] must be a MultimodalDataset, got {type(ds).__name__}")
        for m in modalities:
            if not _is_image(ds.modality(m).shape):
                raise ValueError(f"modality {m!r} of {key!r} is not an image (C, H, W)")
    rows = len(generations) * len(modalities)
    fig, axes = plt.subplots(rows, n, figsize=(1.0 * n, 1.0 * rows + 0.4), squeeze=False)
    for b, (key, ds) in enumerate(generations.items()):
        for r, m in enumerate(modalities):
            i = b * len(modalities) + r
            for j in range(n):
                ax = axes[i, j]
                if j >= len(ds):
                    ax.axis("off")
                    continue
                _show(ax, ds.data[m][j])
                if r == 0 and ds.labels is not None:
                    ax.set_title(str(int(ds.labels[j])), fontsize=8)
            axes[i, 0].set_ylabel(f"{key}: {m}", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
