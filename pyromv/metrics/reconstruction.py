"""Reconstruction and cross-prediction error per modality and per conditioning subset."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from ._util import as_batch, evaluating, model_device
from .coherence import subset_key


def all_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names`` (the full set included), by size."""
    names = list(names)
    return [s for k in range(1, len(names) + 1) for s in itertools.combinations(names, k)]


def _entry_error(head: torch.nn.Module, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error of continuous entries, 0/1 mismatch of categorical ones."""
    if head.name == "categorical":
        return (pred.to(x.dtype) != x).to(torch.get_default_dtype())
    err = (pred.to(x.dtype) - x) ** 2
    cards = getattr(head, "cardinalities", None)
    if cards is not None:
        categorical = torch.tensor([c > 0 for c in cards], device=x.device)
        err = torch.where(categorical, (pred.to(x.dtype) != x).to(err.dtype), err)
    return err


def reconstruction_error(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    subsets: Sequence[Sequence[str]] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    r"""Mean squared error of each modality decoded from the posterior mean given each subset.

    .. math:: \mathrm{MSE}(S \to m) = \frac{1}{|\Omega_m|} \sum_{(i, j) \in \Omega_m}
              \big(\mathbb E\,p(x_{mj} | z = \mathbb E\,q(z | X_S^{(i)})) - x^{(i)}_{mj}\big)^2

    over the observed entries ``Omega_m`` of modality ``m`` in the rows that observe every
    modality of ``S``. For categorical entries (categorical modalities, categorical columns of
    a tabular one) the error is 0/1, so their "MSE" is the rate of wrong symbols. ``m`` in ``S``
    is a reconstruction, ``m`` outside ``S`` a cross-modal prediction. Missing entries never
    count. Only the modalities the model generates are predicted (``model.generated_modalities``).

    Returns
    -------
    dict
        ``{"by_subset": {key: {m: mse}}, "rows": {key: n}}`` (keys from
        :func:`~pyromv.metrics.coherence.subset_key`), with ``"self"`` and ``"cross"``
        per modality: the mean MSE of ``m`` over the subsets that contain it / that do not.
    """
    batch = as_batch(model, data)
    subsets = all_subsets(model.names) if subsets is None else [tuple(s) for s in subsets]
    generated = list(model.generated_modalities)  # a CVAE predicts only what it models
    device = model_device(model)
    by_subset: dict[str, dict[str, float]] = {}
    rows_used: dict[str, int] = {}
    with evaluating(model):
        for subset in subsets:
            if not subset:
                raise ValueError("a conditioning subset must name at least one modality")
            for m in subset:
                model.modality(m)
            rows = torch.ones(batch.batch_size, dtype=torch.bool)
            for m in subset:
                rows &= batch.row_mask(m).cpu()
            key = subset_key(subset)
            rows_used[key] = int(rows.sum())
            if not bool(rows.any()):
                continue
            sub = batch.index(rows.nonzero().flatten())
            sse = {m: 0.0 for m in generated}
            count = {m: 0 for m in generated}
            for start in range(0, sub.batch_size, batch_size):
                chunk = sub.index(slice(start, start + batch_size)).to(device)
                pred = model.cross_generate(chunk.restrict(subset), sample=False)
                for m in generated:
                    x = chunk.data[m]
                    mask = chunk.obs_mask[m]
                    mask = mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim())).expand_as(x)
                    err = _entry_error(model.likelihoods[m], pred[m], x)
                    sse[m] += float(err[mask].sum())
                    count[m] += int(mask.sum())
            by_subset[key] = {m: sse[m] / count[m] for m in generated if count[m] > 0}
    summary: dict[str, dict[str, float]] = {}
    for m in generated:
        own = [v[m] for k, v in by_subset.items() if m in k.split("+") and m in v]
        cross = [v[m] for k, v in by_subset.items() if m not in k.split("+") and m in v]
        summary[m] = {
            "self": sum(own) / len(own) if own else float("nan"),
            "cross": sum(cross) / len(cross) if cross else float("nan"),
        }
    return {"by_subset": by_subset, "rows": rows_used, "by_modality": summary}
