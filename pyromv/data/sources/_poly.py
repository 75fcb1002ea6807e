"""Shared pieces of the PolyMNIST construction: textures, compositing and same-class draws.

PolyMNIST (Sutter, Daunhawer & Vogt, "Generalized Multimodal ELBO", ICLR 2021) shows one
class in ``M`` modalities, each a different image of that class on a background of its own,
the strokes drawn in the inverted background colour. :class:`~pyromv.data.PolyDigits` and
:class:`~pyromv.data.PolyFashion` both build on the helpers here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation of a small ``(g, g)`` grid onto ``(height, width)``."""
    g = grid.shape[0]

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.linspace(0.0, g - 1.0, n)
        i0 = np.minimum(t.astype(int), g - 2)
        return i0, t - i0

    r0, rw = axis(height)
    c0, cw = axis(width)
    rows = grid[r0] * (1 - rw)[:, None] + grid[r0 + 1] * rw[:, None]  # (height, g)
    return rows[:, c0] * (1 - cw)[None, :] + rows[:, c0 + 1] * cw[None, :]


def texture(
    m: int,
    seed: int,
    height: int,
    width: int,
    freqs: Sequence[float],
    max_value: float,
    grid: int = 3,
    salt: int = 0x9D,
) -> np.ndarray:
    """The background texture of modality ``m``: a ``(height, width)`` array in ``[0, max_value]``.

    ``b = max_value * clip(0.75 s + 0.25 t, 0, 1)`` where ``s`` are sinusoidal stripes at angle
    ``pi * frac(m * 0.618...)`` (well spread for every number of modalities) and frequency
    ``freqs[m % len(freqs)]`` (cycles per pixel) with a random phase, and ``t`` is a smooth
    random texture (a ``grid x grid`` uniform grid, bilinearly interpolated). Fixed by
    ``(seed, m, salt)``.
    """
    rng = np.random.default_rng([int(seed), int(m), int(salt)])
    angle = math.pi * ((m * _GOLDEN) % 1.0)
    freq = float(freqs[m % len(freqs)])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    stripes = 0.5 + 0.5 * np.sin(
        2.0 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase
    )
    smooth = _bilinear(rng.uniform(0.0, 1.0, size=(grid, grid)), height, width)
    return max_value * np.clip(0.75 * stripes + 0.25 * smooth, 0.0, 1.0)


def composite(image: np.ndarray, back: np.ndarray) -> np.ndarray:
    """PolyMNIST compositing, strokes in the inverted background colour.

    ``x = b (1 - d) + (1 - b) d`` for an image ``d`` and a background ``b`` in ``[0, 1]``;
    ``x`` stays in ``[0, 1]`` and ``d = (x - b) / (1 - 2 b)`` recovers the image when ``b < 1/2``.
    """
    return back * (1.0 - image) + (1.0 - back) * image


def random_crops(
    big: np.ndarray, n: int, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops of ``(height, width)`` at uniform positions of ``big``; returns the crops
    ``(n, height, width)`` and their top-left corners ``(n, 2)``."""
    H, W = big.shape
    if H < height or W < width:
        raise ValueError(f"cannot crop {height}x{width} windows from a {H}x{W} texture")
    top = rng.integers(0, H - height + 1, size=n)
    left = rng.integers(0, W - width + 1, size=n)
    rows = top[:, None] + np.arange(height)[None, :]  # (n, height)
    cols = left[:, None] + np.arange(width)[None, :]  # (n, width)
    crops = big[rows[:, :, None], cols[:, None, :]]
    return crops, np.stack([top, left], 1)


def draw_same_class(
    pool: np.ndarray,
    labels: np.ndarray,
    num_modalities: int,
    rows_per_image: int,
    rng: np.random.Generator,
    num_classes: int,
    source: str,
) -> np.ndarray:
    """Rows of distinct same-class images: ``(rows_per_image * len(pool), M)`` indices.

    Row ``i`` anchors on ``pool[i % len(pool)]`` (column 0); the other ``M - 1`` columns are
    distinct images of the anchor's class drawn uniformly without replacement from the
    rest of ``pool``. ``labels`` gives the class of every index that ``pool`` holds.
    """
    n = len(pool)
    anchors = np.tile(np.arange(n), rows_per_image)  # positions in the pool
    out = np.empty((len(anchors), num_modalities), dtype=np.int64)
    out[:, 0] = pool[anchors]
    if num_modalities == 1:
        return out
    pool_labels = labels[pool]
    for c in range(num_classes):
        members = np.flatnonzero(pool_labels == c)  # positions in the pool, ascending
        rows = np.flatnonzero(pool_labels[anchors] == c)
        if len(rows) == 0:
            continue
        if len(members) < num_modalities:
            raise ValueError(
                f"{source}: class {c} has {len(members)} images in a split, fewer than "
                f"num_modalities={num_modalities}; lower num_modalities or use more images"
            )
        # distinct draws per row: rank random keys, the anchor's key forced last
        keys = rng.random((len(rows), len(members)))
        anchor_col = np.searchsorted(members, anchors[rows])
        keys[np.arange(len(rows)), anchor_col] = np.inf
        picks = np.argsort(keys, axis=1)[:, : num_modalities - 1]
        out[rows, 1:] = pool[members[picks]]
    return out
