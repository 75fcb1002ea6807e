"""Data: modality specs, partially observed batches and data sets, missingness simulators."""

from .batch import MultimodalBatch
from .dataset import MultimodalDataset, collate, make_batch
from .missingness import mcar
from .modality import Modality, NetworkSpec
from .sources import PolyDigits

__all__ = [
    "Modality",
    "MultimodalBatch",
    "MultimodalDataset",
    "NetworkSpec",
    "PolyDigits",
    "collate",
    "make_batch",
    "mcar",
]
