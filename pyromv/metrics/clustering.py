"""Latent representations: posterior means and how well k-means on them recovers the labels."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from ._util import as_batch, evaluating, model_device


def latent_means(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    given: Sequence[str] | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Posterior means ``E q(z | X_obs)`` of every row, ``(N, D)`` on the CPU.

    ``given`` restricts what the encoder sees (default: everything each row observes);
    rows observing none of ``given`` get the fusion of no expert (the prior for a PoE).
    """
    batch = as_batch(model, data)
    if given is not None:
        for m in given:
            model.modality(m)
        batch = batch.restrict(given)
    device = model_device(model)
    out = []
    with evaluating(model):
        for start in range(0, batch.batch_size, batch_size):
            chunk = batch.index(slice(start, start + batch_size)).to(device)
            out.append(model.encode(chunk).mean.cpu())
    return torch.cat(out)


def cluster_latents(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    n_clusters: int | None = None,
    given: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """k-means on the posterior means, scored against the labels.

    NMI (normalised mutual information) and ARI (adjusted Rand index) from scikit-learn:
    1 is a perfect recovery of the classes, about 0 a clustering unrelated to them.
    ``n_clusters`` defaults to the number of distinct labels.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    batch = as_batch(model, data)
    if batch.labels is None:
        raise ValueError("clustering scores need class labels: the data has none")
    labels = batch.labels.cpu().numpy()
    k = len(np.unique(labels)) if n_clusters is None else int(n_clusters)
    if not 2 <= k <= len(labels):
        raise ValueError(f"n_clusters must be in [2, {len(labels)}], got {k}")
    z = latent_means(model, batch, given=given, batch_size=batch_size).double().numpy()
    with warnings.catch_warnings(record=True) as caught:
        # a collapsed latent space gives fewer distinct points than clusters: report, don't fail
        warnings.simplefilter("always", ConvergenceWarning)
        assigned = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    notes = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    out: dict[str, Any] = {
        "nmi": float(normalized_mutual_info_score(labels, assigned)),
        "ari": float(adjusted_rand_score(labels, assigned)),
        "n_clusters": k,
        "rows": len(labels),
    }
    if notes:
        out["note"] = "; ".join(notes)
    return out


def model_clusters(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    prune_on: MultimodalDataset | MultimodalBatch | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """NMI and ARI of a clustering model's own assignments (``model.predict_clusters``, which
    reads each row's observed modalities only) against the labels.

    ``prune_on``: first select the number of clusters on these data (``model.prune_clusters``)
    on a copy of the model, which is left as it is; the selection is reported, and the scores
    with every cluster under ``"all_clusters"``.
    """
    import copy

    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if not callable(getattr(model, "predict_clusters", None)):
        raise TypeError(f"{type(model).__name__} has no clusters of its own (no predict_clusters)")
    batch = as_batch(model, data)
    if batch.labels is None:
        raise ValueError("clustering scores need class labels: the data has none")
    def scores(clustering_model) -> dict[str, Any]:
        device = model_device(clustering_model)
        assigned = []
        with evaluating(clustering_model):
            for start in range(0, batch.batch_size, batch_size):
                chunk = batch.index(slice(start, start + batch_size)).to(device)
                assigned.append(clustering_model.predict_clusters(chunk).cpu())
        labels, found = batch.labels.cpu().numpy(), torch.cat(assigned).numpy()
        return {"nmi": float(normalized_mutual_info_score(labels, found)),
                "ari": float(adjusted_rand_score(labels, found)),
                "n_clusters": int(clustering_model.num_clusters), "rows": len(labels)}

    if prune_on is None:
        return scores(model)
    pruned = copy.deepcopy(model)
    with evaluating(pruned):
        selection = pruned.prune_clusters(as_batch(pruned, prune_on))
    return {**scores(pruned), "selection": selection, "all_clusters": scores(model)}
