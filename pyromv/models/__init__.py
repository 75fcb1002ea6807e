"""Multimodal VAE models, registered by name."""

from .base import MultimodalVAE
from .config import ModelConfig
from .io import build_model, load_model, save_model
from .jmvae import JMVAE, JMVAEConfig
from .mmvae import MMVAE, MMVAEConfig
from .mopoe import MoPoE, MoPoEConfig
from .mvae import MVAE, MVAEConfig
from .registry import get_model_class, register_model, registered_models

__all__ = [
    "JMVAE",
    "JMVAEConfig",
    "MMVAE",
    "MMVAEConfig",
    "MVAE",
    "MVAEConfig",
    "ModelConfig",
    "MoPoE",
    "MoPoEConfig",
    "MultimodalVAE",
    "build_model",
    "get_model_class",
    "load_model",
    "register_model",
    "registered_models",
    "save_model",
]
