"""Data: modality specs, partially observed batches and data sets, missingness simulators."""

from .batch import MultimodalBatch
from .dataset import MultimodalDataset, collate, make_batch
from .missingness import block, feature_mcar, feature_mnar, mcar, mnar, pattern_histogram
from .modality import Modality, NetworkSpec
from .sources import (
    MHD,
    MNISTSVHN,
    CelebA,
    CUBImageCaptions,
    Diabetes,
    FashionText,
    Linnerud,
    MNISTSVHNText,
    NoisyFashion,
    PolyDigits,
    PolyFashion,
    PolyMNIST,
    TranslatedPolyMNIST,
    tabular_modality,
)

__all__ = [
    "MHD",
    "MNISTSVHN",
    "CUBImageCaptions",
    "CelebA",
    "Diabetes",
    "FashionText",
    "Linnerud",
    "MNISTSVHNText",
    "Modality",
    "MultimodalBatch",
    "MultimodalDataset",
    "NetworkSpec",
    "NoisyFashion",
    "PolyDigits",
    "PolyFashion",
    "PolyMNIST",
    "TranslatedPolyMNIST",
    "block",
    "collate",
    "feature_mcar",
    "feature_mnar",
    "make_batch",
    "mcar",
    "mnar",
    "pattern_histogram",
    "tabular_modality",
]
