"""Tabular modalities (mixed continuous/categorical columns) and two small real multi-view
tables that ship with scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...distributions.tabular import check_cardinalities
from ..dataset import MultimodalDataset
from ..modality import Modality, NetworkSpec

SPLITS = ("train", "test")


def tabular_modality(
    name: str,
    cardinalities: Sequence[int],
    scale: float = 1.0,
    learn_scale: bool = True,
    hidden_dims: Sequence[int] = (64, 64),
    network: str = "mlp",
) -> Modality:
    """A modality of ``C`` columns with the ``"tabular"`` likelihood.

    ``cardinalities[j]`` is ``0`` for a continuous column (Normal, standard deviation
    ``scale``, learned per column with ``learn_scale``) and ``k >= 2`` for a categorical one
    coded ``0 .. k - 1``. Its ``obs_mask`` may be per row ``(N,)`` or per entry ``(N, C)``.
    """
    cards = check_cardinalities(cardinalities, f"tabular modality {name!r}")
    spec = NetworkSpec(network, {"hidden_dims": list(hidden_dims)} if network == "mlp" else {})
    return Modality(
        name,
        (len(cards),),
        likelihood="tabular",
        likelihood_kwargs={
            "cardinalities": list(cards),
            "scale": float(scale),
            "learn_scale": bool(learn_scale),
        },
        encoder=spec,
        decoder=spec,
    )


def check_tabular(values: np.ndarray, cardinalities: Sequence[int], name: str) -> None:
    """Raise ``ValueError`` when a categorical column of ``values`` holds a code outside
    ``0 .. k - 1`` (NaN entries, i.e. missing ones, are skipped)."""
    values = np.asarray(values, dtype=np.float64)
    for j, k in enumerate(check_cardinalities(cardinalities, name)):
        if k == 0:
            continue
        v = values[:, j]
        v = v[~np.isnan(v)]
        if np.any((v != np.round(v)) | (v < 0) | (v >= k)):
            raise ValueError(
                f"{name}: column {j} is categorical with {k} categories; codes must be 0..{k - 1}"
            )


def _split(n: int, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([int(seed), 0x7AB])
    perm = rng.permutation(n)
    n_test = min(max(1, int(round(test_fraction * n))), n - 1)
    return {"test": np.sort(perm[:n_test]), "train": np.sort(perm[n_test:])}


@dataclass
class _TableSource:
    seed: int = 0
    test_fraction: float = 0.25
    standardize: bool = True
    learn_scale: bool = True
    hidden_dim: int = 32

    _name = "table"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a field outside its range."""
        if not 0.0 < float(self.test_fraction) < 1.0:
            raise ValueError(
                f"{self._name}: test_fraction must be in (0, 1), got {self.test_fraction}"
            )
        if int(self.hidden_dim) < 1:
            raise ValueError(f"{self._name}: hidden_dim must be >= 1, got {self.hidden_dim}")

    def _views(self) -> tuple[dict[str, np.ndarray], dict[str, list[int]], np.ndarray | None]:
        raise NotImplementedError

    def modalities(self) -> list[Modality]:
        self.check()
        _, cards, _ = self._views()
        h = int(self.hidden_dim)
        return [
            tabular_modality(n, c, learn_scale=self.learn_scale, hidden_dims=(h, h))
            for n, c in cards.items()
        ]

    def load(self, split: str) -> MultimodalDataset:
        """The ``"train"`` or ``"test"`` rows; continuous columns standardised with the
        training rows' mean and standard deviation when ``standardize``."""
        if split not in SPLITS:
            raise ValueError(f"unknown {self._name} split {split!r}; choose from {list(SPLITS)}")
        self.check()
        views, cards, labels = self._views()
        n = len(next(iter(views.values())))
        rows = _split(n, float(self.test_fraction), int(self.seed))
        data = {}
        for name, x in views.items():
            x = x.astype(np.float64)
            if self.standardize:
                cont = [j for j, k in enumerate(cards[name]) if k == 0]
                train = x[rows["train"]][:, cont]
                mean, std = train.mean(0), train.std(0)
                x = x.copy()
                x[:, cont] = (x[:, cont] - mean) / np.where(std > 0, std, 1.0)
            data[name] = torch.tensor(x[rows[split]], dtype=torch.get_default_dtype())
        lab = None if labels is None else torch.tensor(labels[rows[split]], dtype=torch.int64)
        return MultimodalDataset(self.modalities(), data, labels=lab)

    def column_names(self) -> dict[str, list[str]]:
        raise NotImplementedError


@dataclass
class Linnerud(_TableSource):
    """Linnerud's fitness club data (scikit-learn's ``load_linnerud``): 20 men, two views.

    Modalities: ``exercise`` (chin-ups, sit-ups, jumps) and ``physiology`` (weight, waist,
    pulse), 3 continuous columns each, ``"tabular"`` likelihoods (Normal columns with learned
    standard deviations). No class labels. Rows are split at random (seeded) into
    ``1 - test_fraction`` train and ``test_fraction`` test.

    Parameters
    ----------
    seed, test_fraction
        The seeded split (15 / 5 rows by default).
    standardize : bool
        Standardise each column with the training rows' statistics.
    learn_scale, hidden_dim
        Learned per-column standard deviations; width of the MLPs.

    References
    ----------
    .. [1] A. Tenenhaus, "La régression PLS: théorie et pratique", Technip, 1998 (the data).
    """

    _name = "Linnerud"

    def _views(self) -> tuple[dict[str, np.ndarray], dict[str, list[int]], np.ndarray | None]:
        from sklearn.datasets import load_linnerud

        raw = load_linnerud()
        views = {"exercise": np.asarray(raw.data), "physiology": np.asarray(raw.target)}
        return views, {"exercise": [0, 0, 0], "physiology": [0, 0, 0]}, None

    def column_names(self) -> dict[str, list[str]]:
        """Column names of each tabular modality, as scikit-learn names them."""
        from sklearn.datasets import load_linnerud

        raw = load_linnerud()
        return {"exercise": list(raw.feature_names), "physiology": list(raw.target_names)}


@dataclass
class Diabetes(_TableSource):
    """Efron et al.'s diabetes data (scikit-learn's ``load_diabetes``, unscaled): 442 patients,
    two views with mixed columns.

    Modalities: ``clinical`` (age, sex, body-mass index, blood pressure; ``sex`` categorical
    with 2 codes, the rest continuous) and ``serum`` (six blood serum measurements,
    continuous). Labels: the tertile (0, 1, 2) of the disease-progression target over all
    rows, for plots and coherence only.

    Parameters
    ----------
    seed, test_fraction, standardize, learn_scale, hidden_dim
        As in :class:`Linnerud`.

    References
    ----------
    .. [1] B. Efron, T. Hastie, I. Johnstone and R. Tibshirani, "Least Angle Regression",
       Annals of Statistics 32(2), 2004.
    """

    _name = "Diabetes"

    def _views(self) -> tuple[dict[str, np.ndarray], dict[str, list[int]], np.ndarray | None]:
        from sklearn.datasets import load_diabetes

        raw = load_diabetes(scaled=False)
        x = np.asarray(raw.data, dtype=np.float64)
        clinical = x[:, :4].copy()
        clinical[:, 1] = clinical[:, 1] - 1.0  # sex is coded 1 / 2 in the file
        cards = {"clinical": [0, 2, 0, 0], "serum": [0] * 6}
        check_tabular(clinical, cards["clinical"], "Diabetes clinical view")
        y = np.asarray(raw.target)
        labels = np.searchsorted(np.quantile(y, [1 / 3, 2 / 3]), y, side="right")
        return {"clinical": clinical, "serum": x[:, 4:]}, cards, labels

    def column_names(self) -> dict[str, list[str]]:
        """Column names of each tabular modality, as scikit-learn names them."""
        from sklearn.datasets import load_diabetes

        names = list(load_diabetes().feature_names)
        return {"clinical": names[:4], "serum": names[4:]}
