"""Pictures of what a model does: reconstructions, cross-modal generations, samples from the
prior, the latent space and the coherence table."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..data.batch import MultimodalBatch  # noqa: E402
from ..models.base import MultimodalVAE  # noqa: E402


def image_modalities(model: MultimodalVAE) -> list[str]:
    """Modalities whose rows are images ``(C, H, W)`` with 1 or 3 channels."""
    return [m.name for m in model.modalities if len(m.shape) == 3 and m.shape[0] in (1, 3)]


def generated_image_modalities(model: MultimodalVAE) -> list[str]:
    """The image modalities the model generates (``model.generated_modalities``)."""
    generated = set(model.generated_modalities)
    return [m for m in image_modalities(model) if m in generated]


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
    mean of ``q(z | x_s)`` decoded into every image modality the model generates (``s -> s`` is
    the reconstruction). Sources default to every image modality.

    Columns are the first ``n`` rows of ``batch`` that observe ``s``; the title of each column
    is its label when the batch has labels. Saved as PNG when ``path`` is given.
    """
    images = generated_image_modalities(model)
    if not images:
        raise ValueError("plot_cross_generation needs at least one generated image modality (C, H, W)")
    sources = list(sources) if sources is not None else image_modalities(model)
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
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_samples(model: MultimodalVAE, n: int = 8, path: str | os.PathLike | None = None) -> Figure:
    """``n`` joint samples from the prior, one row per generated image modality."""
    images = generated_image_modalities(model)
    if not images:
        raise ValueError("plot_samples needs at least one generated image modality (C, H, W)")
    generated = model.generate(n, targets=images)
    fig, axes = plt.subplots(len(images), n, figsize=(1.0 * n, 1.0 * len(images)), squeeze=False)
    for r, m in enumerate(images):
        for j in range(n):
            _show(axes[r, j], generated[m][j])
        axes[r, 0].set_ylabel(m, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("joint samples from the prior", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_reconstructions(
    model: MultimodalVAE, batch: MultimodalBatch, n: int = 8, path: str | os.PathLike | None = None,
) -> Figure:
    """Each image modality of the first ``n`` rows (top) and its reconstruction from
    everything the row observes (posterior mean, decoded; below it).

    Inputs a row does not observe are left blank (their reconstruction is a prediction).
    """
    images = generated_image_modalities(model)
    if not images:
        raise ValueError("plot_reconstructions needs at least one generated image modality (C, H, W)")
    sub = batch.index(slice(0, n))
    n = min(n, sub.batch_size)
    if n < 1:
        raise ValueError("plot_reconstructions needs a non-empty batch")
    was_training = model.training
    model.eval()
    recon = model.reconstruct(sub)
    model.train(was_training)
    fig, axes = plt.subplots(2 * len(images), n, figsize=(1.0 * n, 2.0 * len(images)), squeeze=False)
    for r, m in enumerate(images):
        observed = sub.row_mask(m)
        for j in range(n):
            top, bottom = axes[2 * r, j], axes[2 * r + 1, j]
            if bool(observed[j]):
                _show(top, sub.data[m][j])
            else:
                top.axis("off")
            _show(bottom, recon[m][j])
        axes[2 * r, 0].set_ylabel(f"{m}", rotation=0, ha="right", va="center", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel(f"{m} recon.", rotation=0, ha="right", va="center", fontsize=8)
    if sub.labels is not None:
        for j in range(n):
            axes[0, j].set_title(str(int(sub.labels[j])), fontsize=8)
    fig.suptitle("reconstructions: data (upper row), decoded posterior mean (lower row)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_latent_embedding(
    latents: torch.Tensor,
    labels: torch.Tensor | None = None,
    method: str = "pca",
    seed: int = 0,
    path: str | os.PathLike | None = None,
) -> Figure:
    """A 2-D embedding of latent codes ``(N, D)`` (PCA or t-SNE from scikit-learn), one
    point per row, coloured by label when given."""
    z = torch.as_tensor(latents).detach().double().cpu().numpy()
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"latents must have shape (N >= 2, D), got {tuple(z.shape)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(z) if z.shape[1] > 2 else z
        if xy.shape[1] == 1:
            xy = np.concatenate([xy, np.zeros_like(xy)], 1)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (z.shape[0] - 1) / 3)
        xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(z)
    else:
        raise ValueError(f"unknown embedding method {method!r}; choose 'pca' or 'tsne'")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    else:
        y = torch.as_tensor(labels).cpu().numpy()
        if y.shape[0] != xy.shape[0]:
            raise ValueError(f"{y.shape[0]} labels for {xy.shape[0]} latent codes")
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, s=6, alpha=0.8, cmap="tab10")
        classes = np.unique(y)
        if len(classes) <= 20:
            handles = [
                plt.Line2D([], [], marker="o", linestyle="", color=sc.cmap(sc.norm(c)), label=str(c))
                for c in classes
            ]
            ax.legend(handles=handles, fontsize=7, loc="best", markerscale=0.8, title="label")
    ax.set_title(f"latent means ({method.upper()})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_coherence(
    by_size: dict, by_subset: dict | None = None, joint: float | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Bar chart of cross-modal coherence per subset size (left), per subset (right, when
    given) and the joint coherence as a dashed line."""
    panels = 2 if by_subset else 1
    fig, axes = plt.subplots(1, panels, figsize=(4 + 3 * (panels - 1) + 0.25 * len(by_subset or {}), 3.5),
                             squeeze=False)
    ax = axes[0, 0]
    ax.bar(range(len(by_size)), [float(v) for v in by_size.values()], color="tab:blue")
    ax.set_xticks(range(len(by_size)))
    ax.set_xticklabels([str(k) for k in by_size])
    ax.set_xlabel("number of given modalities")
    ax.set_ylabel("coherence (accuracy)")
    ax.set_ylim(0, 1)
    if joint is not None:
        ax.axhline(float(joint), color="tab:red", linestyle="--", label=f"joint {float(joint):.2f}")
        ax.legend(fontsize=8)
    if by_subset:
        ax2 = axes[0, 1]
        keys = list(by_subset)
        ax2.bar(range(len(keys)), [float(by_subset[k]) for k in keys], color="tab:green")
        ax2.set_xticks(range(len(keys)))
        ax2.set_xticklabels(keys, rotation=60, ha="right", fontsize=7)
        ax2.set_ylim(0, 1)
        ax2.set_xlabel("given subset")
    fig.suptitle("cross-modal coherence", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
