"""Data set sources: each a dataclass config with ``modalities()`` and ``load(split)``.

:class:`PolyDigits` is embedded (scikit-learn's digits, no files); the Fashion-MNIST sources
read the real idx files (Debian's ``dataset-fashion-mnist``); the papers' benchmarks read
their standard files from a local ``root``; :class:`Linnerud` and :class:`Diabetes` are
small real tables that ship with scikit-learn. See ``docs/datasets.md``.
"""

from ._files import clear_cache, read_idx, write_idx
from .celeba import CelebA
from .cub import CUBImageCaptions
from .fashion import (
    FASHION_MNIST_ROOT,
    FashionText,
    NoisyFashion,
    PolyFashion,
    fashion_mnist_files,
    load_fashion_mnist,
)
from .mhd import MHD
from .mnist_svhn import MNISTSVHN, MNISTSVHNText, match_by_label
from .polydigits import PolyDigits
from .polymnist import PolyMNIST, TranslatedPolyMNIST
from .tabular import Diabetes, Linnerud, check_tabular, tabular_modality

__all__ = [
    "FASHION_MNIST_ROOT",
    "MHD",
    "MNISTSVHN",
    "CUBImageCaptions",
    "CelebA",
    "Diabetes",
    "FashionText",
    "Linnerud",
    "MNISTSVHNText",
    "NoisyFashion",
    "PolyDigits",
    "PolyFashion",
    "PolyMNIST",
    "TranslatedPolyMNIST",
    "check_tabular",
    "clear_cache",
    "fashion_mnist_files",
    "load_fashion_mnist",
    "match_by_label",
    "read_idx",
    "tabular_modality",
    "write_idx",
]
