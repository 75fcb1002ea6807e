"""Pictures of what a model does: reconstructions and cross-modal generations."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..data.batch import MultimodalBatch  # noqa: E402
from ..models.base import MultimodalVAE  # noqa: E402


def image_modalities(model: MultimodalVAE) -> list[str]:
    """Modalities whose rows are images ``(C, H, W)`` with 1 or 3 channels."""
    return [m.name for m in model.modalities if len(m.shape) == 3 and m.shape[0] in (1, 3)]


def _show(ax, image: torch.Tensor) -> None:
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def plot_cross_generation(
    model: MultimodalVAE,
    batch: MultimodalBatch,
    n: int = 8,
    sources: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """One panel per source modality ``s``: the inputs ``x_s`` (top row), then the posterior
    mean of ``q(z | x_s)`` decoded into every image modality (``s -> s`` is the reconstruction).

    Columns are the first ``n`` rows of ``batch`` that observe ``s``; the title of each column
    is its label when the batch has labels. Saved as PNG when ``path`` is given.
    """
    images = image_modalities(model)
    if not images:
        raise ValueError("plot_cross_generation needs at least one image modality (C, H, W)")
    sources = list(sources) if sources is not None else images
    fig, axes = plt.subplots(
        len(sources) * (len(images) + 1), n, figsize=(1.0 * n, 1.0 * len(sources) * (len(images) + 1)),
        squeeze=False,
    )
    was_training = model.training
    model.eval()
    for p, s in enumerate(sources):
        rows = batch.row_mask(s).nonzero().flatten()[:n]
        sub = batch.index(rows).restrict([s])
        generated = model.cross_generate(sub, targets=images)
        top = p * (len(images) + 1)
        for j in range(n):
            for r in range(len(images) + 1):
                ax = axes[top + r, j]
                if j >= len(rows):
                    ax.axis("off")
                    continue
                _show(ax, sub.data[s][j] if r == 0 else generated[images[r - 1]][j])
                if j == 0:
                    label = f"input {s}" if r == 0 else f"{s} → {images[r - 1]}"
                    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if sub.labels is not None and j < len(rows):
                axes[top, j].set_title(str(int(sub.labels[j])), fontsize=8)
    model.train(was_training)
    fig.suptitle("cross-modal generation: input (top of each block), then decoded modalities", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_samples(model: MultimodalVAE, n: int = 8, path: str | os.PathLike | None = None) -> Figure:
    """``n`` joint samples from the prior, one row per image modality."""
    images = image_modalities(model)
    if not images:
        raise ValueError("plot_samples needs at least one image modality (C, H, W)")
    generated = model.generate(n, targets=images)
    fig, axes = plt.subplots(len(images), n, figsize=(1.0 * n, 1.0 * len(images)), squeeze=False)
    for r, m in enumerate(images):
        for j in range(n):
            _show(axes[r, j], generated[m][j])
        axes[r, 0].set_ylabel(m, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("joint samples from the prior", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
