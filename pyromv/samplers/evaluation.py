"""Evaluation hooks: held-out log-density of codes, and metrics of each sampler's generations."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from .base import Classifier, LatentSampler, encode_latents

GenerationMetric = Callable[[MultimodalDataset], Any]


def held_out_log_density(
    sampler: LatentSampler,
    data: Tensor | MultimodalDataset,
    model: MultimodalVAE | None = None,
    codes: str = "mean",
) -> dict[str, float]:
    r"""Mean held-out log-density ``(1/N) \sum_n log r(z_n)`` of codes and its standard error.

    ``data`` is either codes ``(N, D)`` or a data set, encoded with ``model`` (default: the
    sampler's) as in :meth:`LatentSampler.fit` (posterior means by default). The standard error
    is ``std(log r(z_n)) / sqrt(N)``.
    """
    if isinstance(data, MultimodalDataset):
        model = model if model is not None else sampler.model
        if model is None:
            raise ValueError("encoding a data set needs a model: pass model= or fit the sampler")
        data = encode_latents(model, data, codes)
    values = sampler.log_density(data).double()
    n = values.shape[0]
    se = float(values.std() / math.sqrt(n)) if n > 1 else math.nan
    return {"log_density": float(values.mean()), "standard_error": se, "rows": n}


def joint_coherence_metric(
    classifiers: Mapping[str, Callable[[Tensor], Tensor]], batch_size: int = 512,
) -> GenerationMetric:
    r"""A :func:`compare_samplers` metric: joint coherence of a generated data set.

    .. math:: \frac1n \sum_i \mathbb 1\big[f_1(x_1^{(i)}) = \dots = f_M(x_M^{(i)})\big]

    the fraction of rows whose per-modality classifiers (``x_m -> logits (B, C)``, e.g. from
    :func:`pyromv.metrics.train_classifiers`) all predict the same class (Shi et al., NeurIPS
    2019). :func:`pyromv.metrics.joint_coherence` scores prior draws; this scores any sampler's
    generations (for :class:`~pyromv.samplers.PriorSampler` they coincide).
    """
    from ..metrics.classifiers import predict

    if not classifiers:
        raise ValueError("joint coherence needs at least one classifier")

    def metric(generated: MultimodalDataset) -> float:
        missing = [m for m in generated.names if m not in classifiers]
        if missing:
            raise ValueError(f"no classifier for modality {missing}: joint coherence needs one each")
        preds = [predict(classifiers[m], generated.data[m], batch_size) for m in generated.names]
        agree = torch.ones(len(generated), dtype=torch.bool)
        for p in preds[1:]:
            agree &= p == preds[0]
        return float(agree.double().mean())

    return metric


def fid_metric(
    real: MultimodalDataset, modality: str, extractor: Callable[[Tensor], Tensor],
    batch_size: int = 256,
) -> GenerationMetric:
    """A :func:`compare_samplers` metric: FID of the generated rows of ``modality`` against the
    rows of ``real`` that observe it, on ``extractor``'s features
    (:func:`pyromv.metrics.fid_from_features`; Heusel et al., NeurIPS 2017). The real features
    are extracted once."""
    from ..metrics.fid import extract_features, fid_from_features

    real.modality(modality)
    rows = real.batch().row_mask(modality)
    if int(rows.sum()) < 2:
        raise ValueError(f"FID needs at least 2 real rows of modality {modality!r}")
    real_features = extract_features(extractor, real.data[modality][rows], batch_size)

    def metric(generated: MultimodalDataset) -> float:
        fake = extract_features(extractor, generated.data[modality], batch_size)
        return fid_from_features(real_features, fake)

    return metric


def compare_samplers(
    samplers: Mapping[str, LatentSampler],
    held_out: Tensor | MultimodalDataset | None = None,
    metrics: Mapping[str, GenerationMetric] | None = None,
    n: int = 1000,
    classifier: Classifier | None = None,
    model: MultimodalVAE | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Compare fitted samplers on held-out codes and on metrics of their generations.

    Parameters
    ----------
    samplers : dict of name to fitted sampler
        Include a :class:`~pyromv.samplers.PriorSampler` as the reference.
    held_out : codes ``(N, D)`` or MultimodalDataset, optional
        Scored with :func:`held_out_log_density` (a data set is encoded with ``model`` or each
        sampler's own model).
    metrics : dict of name to callable, optional
        Each ``metric(generated_dataset)`` returns a number (or anything JSON-serialisable):
        :func:`joint_coherence_metric` (pre-trained classifiers), :func:`fid_metric` (against
        test data), or any callable.
    n : int
        Rows generated per sampler for the metrics.
    classifier : optional
        Labels the generations (see :meth:`LatentSampler.generate`).
    seed : int
        Every sampler generates under the same seed (the global RNG is restored afterwards).

    Returns
    -------
    dict
        ``{sampler_name: {"log_density": ..., "standard_error": ..., metric_name: value}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, sampler in samplers.items():
        if not isinstance(sampler, LatentSampler):
            raise TypeError(f"sampler {name!r} is a {type(sampler).__name__}, not a LatentSampler")
        row: dict[str, Any] = {}
        if held_out is not None:
            row.update(held_out_log_density(sampler, held_out, model=model))
        if metrics:
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                generated = sampler.generate(n, classifier=classifier, model=model)
            for metric_name, metric in metrics.items():
                if not callable(metric):
                    raise TypeError(f"metric {metric_name!r} is not callable")
                row[metric_name] = metric(generated)
        out[name] = row
    return out
