"""Fréchet distance between feature distributions (FID; Heusel et al., NeurIPS 2017).

Both sets of features are summarised by a Gaussian ``N(mu, C)``; the distance is

.. math:: d^2 = \\lVert \\mu_1 - \\mu_2 \\rVert^2 + \\operatorname{tr}\\big(C_1 + C_2
          - 2 (C_1 C_2)^{1/2}\\big).

Any feature extractor works. Inception-v3 features (the usual FID) need weights from a
local file: nothing is downloaded, and an Inception without trained weights is refused. The
offline default of :mod:`pyromv.metrics` is the penultimate layer of the trained
per-modality classifier, which makes scores comparable between models evaluated with the
same classifier, not with published Inception FIDs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from ._util import as_batch, evaluating, model_device, seeded

#: Maps a modality tensor ``(B, *shape)`` to features ``(B, F)``.
FeatureExtractor = Callable[[Tensor], Tensor]


def _as_numpy(x: Tensor | np.ndarray, what: str) -> np.ndarray:
    arr = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, Tensor) else np.asarray(x, np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return arr


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and unbiased covariance ``(F, F)`` of features ``(N, F)``, in float64."""
    x = _as_numpy(features, "features")
    if x.ndim != 2:
        raise ValueError(f"features must have shape (N, F), got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 rows of features, got {x.shape[0]}")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((c + c.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    r"""Fréchet (2-Wasserstein) distance squared between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    ``tr (C_1 C_2)^{1/2}`` is computed without a general matrix square root:
    ``C_1 C_2`` has the eigenvalues of the symmetric PSD matrix ``C_1^{1/2} C_2 C_1^{1/2}``,
    so its trace is the sum of their square roots (both from ``eigh``; tiny negative
    eigenvalues from round-off are clipped to zero).
    """
    mu1, mu2 = _as_numpy(mu1, "means").ravel(), _as_numpy(mu2, "means").ravel()
    cov1, cov2 = np.atleast_2d(_as_numpy(cov1, "covariances")), np.atleast_2d(_as_numpy(cov2, "covariances"))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"mismatched shapes: means {mu1.shape}, {mu2.shape}; covariances {cov1.shape}, {cov2.shape}"
        )
    root1 = _psd_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def fid_from_features(real: Tensor | np.ndarray, generated: Tensor | np.ndarray) -> float:
    """Fréchet distance between the Gaussian summaries of two feature sets ``(N, F)``."""
    mu1, c1 = feature_statistics(real)
    mu2, c2 = feature_statistics(generated)
    if mu1.shape != mu2.shape:
        raise ValueError(f"real features have {mu1.shape[0]} dims, generated ones {mu2.shape[0]}")
    return frechet_distance(mu1, c1, mu2, c2)


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, x: Tensor, batch_size: int = 256) -> Tensor:
    """Features ``(N, F)`` of ``x`` in chunks, on the CPU."""
    if isinstance(extractor, nn.Module):
        extractor.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        f = extractor(x[start : start + batch_size])
        if f.dim() != 2:
            f = f.flatten(1)
        out.append(f.detach().cpu())
    return torch.cat(out)


def fid(
    model: MultimodalVAE,
    data: MultimodalDataset | MultimodalBatch,
    modality: str,
    extractor: FeatureExtractor,
    given: Sequence[str] | None = None,
    n: int | None = None,
    batch_size: int = 256,
    seed: int | None = 0,
) -> float:
    """FID between the real rows of ``modality`` in ``data`` and generated ones.

    Generated from the prior (``given=None``: ``n`` draws, default as many as real rows) or
    cross-generated from the rows that observe every modality of ``given`` (posterior draws,
    decoded to their mean). Real rows are those observing ``modality``.
    """
    batch = as_batch(model, data)
    model.check_targets([modality])  # known, and generated by the model
    real = batch.data[modality][batch.row_mask(modality)]
    if real.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 real rows of modality {modality!r}, got {real.shape[0]}")
    device = model_device(model)
    with evaluating(model), seeded(seed, device):
        if given is None:
            count = real.shape[0] if n is None else int(n)
            parts = []
            for start in range(0, count, batch_size):
                k = min(batch_size, count - start)
                parts.append(model.generate(k, targets=[modality])[modality].cpu())
            generated = torch.cat(parts) if parts else torch.zeros(0)
        else:
            given = list(given)
            for m in given:
                model.modality(m)
            rows = torch.ones(batch.batch_size, dtype=torch.bool)
            for m in given:
                rows &= batch.row_mask(m).cpu()
            sub = batch.index(rows.nonzero().flatten())
            parts = []
            for start in range(0, sub.batch_size, batch_size):
                chunk = sub.index(slice(start, start + batch_size)).to(device).restrict(given)
                parts.append(model.cross_generate(chunk, targets=[modality], sample=True)[modality].cpu())
            generated = torch.cat(parts) if parts else torch.zeros(0)
    if generated.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 generated rows of modality {modality!r}")
    if isinstance(extractor, nn.Module):
        was_training = extractor.training
    f_real = extract_features(extractor, real, batch_size)
    f_gen = extract_features(extractor, generated, batch_size)
    if isinstance(extractor, nn.Module):
        extractor.train(was_training)
    return fid_from_features(f_real, f_gen)


# ---------------------------------------------------------------------------- Inception
_INCEPTION_KEYS = ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight")


class InceptionFeatures(nn.Module):
    """torchvision's Inception-v3 with trained weights from a local file: images -> 2048 features.

    Images ``(B, C, H, W)`` with values in ``[0, 1]`` (1 channel is repeated to 3) are resized
    to 299x299 (bilinear), normalised with the ImageNet statistics and passed through the
    network up to its global average pool. The weights must be a state dict of
    ``torchvision.models.inception_v3`` (``.pt``/``.pth`` or ``.safetensors``), e.g. saved
    from ``inception_v3(weights="IMAGENET1K_V1")`` on a machine with internet access; FIDs
    are comparable between runs that use the same file (not with scores computed with the
    TensorFlow FID Inception unless those weights are the ones converted into the file).
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, weights_path: str | os.PathLike, transform_input: bool = True) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {path}: FID with Inception needs a local "
                "state-dict file of torchvision's inception_v3 (nothing is downloaded, and an "
                "untrained Inception gives meaningless scores)"
            )
        state = _load_state(path)
        missing = [k for k in _INCEPTION_KEYS if k not in state]
        if missing:  # cheap check before building the 27M-parameter network
            raise ValueError(
                f"{path} is not a state dict of torchvision's inception_v3: it lacks {missing}"
            )
        from torchvision.models import inception_v3

        aux = any(k.startswith("AuxLogits.") for k in state)
        net = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=transform_input)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path} is not a state dict of torchvision's inception_v3: {err}") from err
        net.fc = nn.Identity()
        net.eval()
        self.net = net
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures takes images (B, 1 or 3, H, W), got {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        self.net.eval()
        return self.net(x)


def _load_state(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which
        raise ValueError(f"cannot read Inception weights from {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def inception_extractor(weights_path: str | os.PathLike, device: str | torch.device = "cpu") -> InceptionFeatures:
    """An :class:`InceptionFeatures` extractor with the weights of a local file."""
    return InceptionFeatures(weights_path).to(device)
