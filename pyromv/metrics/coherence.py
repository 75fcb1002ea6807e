"""Coherence of generated modalities, judged by per-modality classifiers.

Cross-modal coherence (Shi, Siddharth, Paige & Torr, NeurIPS 2019; Sutter, Daunhawer & Vogt,
ICLR 2021): generate modality ``m`` from a subset ``S`` of the others and count how often
``m``'s classifier recovers the row's label. Joint coherence: decode draws from the prior into
every modality and count how often all classifiers agree. Both are only as good as the
classifiers: report their accuracy alongside (:func:`~pyromv.metrics.classifier_accuracy`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from ._util import as_batch, evaluating, model_device, seeded
from .classifiers import Classifier, predict


def subset_key(names: Sequence[str]) -> str:
    """``("m0", "m2") -> "m0+m2"``: the JSON key of a subset."""
    return "+".join(names)


def proper_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty proper subset of ``names``, by size, then in the order of ``names``."""
    names = list(names)
    return [s for k in range(1, len(names)) for s in itertools.combinations(names, k)]


@dataclass
class CoherenceResult:
    """Cross-modal coherence.

    Attributes
    ----------
    by_pair : dict
        ``by_pair[subset][target]``: accuracy of ``target``'s classifier on ``target``
        generated from ``subset`` (a key from :func:`subset_key`).
    by_subset : dict
        Mean over the targets of each subset.
    by_size : dict
        Mean over the subsets of each size (the papers' table), ``{1: ..., 2: ...}``.
    rows : dict
        Number of rows that each subset was evaluated on.
    """

    by_pair: dict[str, dict[str, float]] = field(default_factory=dict)
    by_subset: dict[str, float] = field(default_factory=dict)
    by_size: dict[int, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the fields (inverse of ``from_dict``)."""
        return {
            "by_size": {str(k): v for k, v in self.by_size.items()},
            "by_subset": dict(self.by_subset),
            "by_pair": {k: dict(v) for k, v in self.by_pair.items()},
            "rows": dict(self.rows),
        }


def _check_classifiers(model: MultimodalVAE, classifiers: Mapping[str, Classifier], targets) -> None:
    if not isinstance(classifiers, Mapping):
        raise TypeError("classifiers must be a mapping from modality name to a callable")
    for m in targets:
        if m not in classifiers:
            raise ValueError(f"no classifier for modality {m!r}; given: {sorted(classifiers)}")
        if not callable(classifiers[m]):
            raise TypeError(f"the classifier of modality {m!r} is not callable")
    for m in classifiers:
        model.modality(m)  # raises ValueError for an unknown name


def cross_coherence(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    classifiers: Mapping[str, Classifier],
    subsets: Sequence[Sequence[str]] | None = None,
    include_self: bool = False,
    sample: bool = True,
    batch_size: int = 256,
    seed: int | None = 0,
) -> CoherenceResult:
    r"""Cross-modal coherence of every subset ``S`` and target ``m``.

    .. math:: \mathrm{coh}(S \to m) = \frac1N \sum_i
              \mathbb 1\big[f_m(\hat x_m^{(i)}) = y_i\big],
              \quad \hat x_m^{(i)} = \mathbb E\, p(x_m | z),\ z \sim q(z | X_S^{(i)})

    Rows are those observing every modality of ``S`` (and having a label). Targets are the
    modalities outside ``S`` (the papers' convention) that the model generates
    (``model.generated_modalities``: all of them except for conditional models such as the
    CVAE); ``include_self`` adds ``S``'s own (self-reconstruction coherence). ``sample=True``
    draws ``z`` from the posterior as the papers do; ``False`` decodes its mean.

    Parameters
    ----------
    subsets : sequence of name sequences, optional
        Default: every non-empty proper subset (``2^M - 2`` of them) that leaves a target.
    classifiers : mapping of str to callable
        ``x_m (B, *shape) -> logits (B, C)`` for each target modality.
    """
    batch = as_batch(model, data)
    if batch.labels is None:
        raise ValueError("coherence needs class labels: the data has none")
    outputs = list(model.generated_modalities)
    if subsets is None:
        subsets = [s for s in proper_subsets(model.names) if any(include_self or m not in s for m in outputs)]
    else:
        subsets = [tuple(s) for s in subsets]
    if not subsets:
        raise ValueError("coherence needs at least one subset (a model with >= 2 modalities)")
    device = model_device(model)
    result = CoherenceResult()
    with evaluating(model), seeded(seed, device):
        for subset in subsets:
            for m in subset:
                model.modality(m)
            targets = [m for m in outputs if include_self or m not in subset]
            if not targets:
                raise ValueError(f"subset {list(subset)} leaves no target modality the model generates "
                                 f"({outputs})")
            _check_classifiers(model, classifiers, targets)
            rows = torch.ones(batch.batch_size, dtype=torch.bool)
            for m in subset:
                rows &= batch.row_mask(m).cpu()
            key = subset_key(subset)
            result.rows[key] = int(rows.sum())
            if not bool(rows.any()):
                continue
            sub = batch.index(rows.nonzero().flatten())
            correct = {m: 0 for m in targets}
            for start in range(0, sub.batch_size, batch_size):
                chunk = sub.index(slice(start, start + batch_size)).to(device).restrict(subset)
                generated = model.cross_generate(chunk, targets=targets, sample=sample)
                for m in targets:
                    pred = predict(classifiers[m], generated[m])
                    correct[m] += int((pred == chunk.labels.cpu()).sum())
            result.by_pair[key] = {m: correct[m] / sub.batch_size for m in targets}
            result.by_subset[key] = sum(result.by_pair[key].values()) / len(targets)
    if not result.by_subset:
        raise ValueError("no row observes any of the subsets: coherence is undefined")
    sizes: dict[int, list[float]] = {}
    for subset in subsets:
        key = subset_key(subset)
        if key in result.by_subset:
            sizes.setdefault(len(subset), []).append(result.by_subset[key])
    result.by_size = {k: sum(v) / len(v) for k, v in sorted(sizes.items())}
    return result


def joint_coherence(
    model: MultimodalVAE,
    classifiers: Mapping[str, Classifier],
    n: int = 1000,
    batch_size: int = 256,
    seed: int | None = 0,
) -> float:
    r"""Fraction of prior draws whose decoded modalities all get the same predicted class.

    Over the modalities the model generates (``model.generated_modalities``); a model that
    generates fewer than two has no joint coherence (ValueError).

    .. math:: \frac1n \sum_{i=1}^n \mathbb 1\big[f_1(\hat x_1^{(i)}) = \dots = f_M(\hat x_M^{(i)})\big],
              \quad \hat x_m^{(i)} = \mathbb E\, p(x_m | z_i),\ z_i \sim p(z)
    """
    if n < 1:
        raise ValueError(f"joint coherence needs n >= 1 samples, got {n}")
    names = list(model.generated_modalities)
    if len(names) < 2:
        raise ValueError(f"joint coherence needs at least two generated modalities; {model.name} "
                         f"generates only {names}")
    _check_classifiers(model, classifiers, names)
    device = model_device(model)
    agree = 0
    with evaluating(model), seeded(seed, device):
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            generated = model.generate(k)
            preds: list[Tensor] = [predict(classifiers[m], generated[m]) for m in names]
            same = torch.ones(k, dtype=torch.bool)
            for p in preds[1:]:
                same &= p == preds[0]
            agree += int(same.sum())
    return agree / n
