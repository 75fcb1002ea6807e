"""Multimodal VAE models, registered by name."""

from .base import MultimodalVAE
from .cmvae import CMVAE, CMVAEConfig
from .config import ModelConfig
from .crmvae import CRMVAE, CRMVAEConfig
from .cvae import CVAE, CVAEConfig
from .dccae import DCCAE, DCCAEConfig
from .dmvae import DMVAE, DMVAEConfig
from .dvcca import DVCCA, DVCCAConfig
from .gpoe import GPoE, GPoEConfig
from .io import build_model, load_model, save_model
from .jmvae import JMVAE, JMVAEConfig
from .jnf import JNF, JNFConfig
from .maae import MAAE, MAAEConfig
from .mcvae import MCVAE, MCVAEConfig
from .mhvae import MHVAE, MHVAEConfig
from .mmjsd import MMJSD, MMJSDConfig
from .mmvae import MMVAE, MMVAEConfig
from .mmvae_plus import MMVAEPlus, MMVAEPlusConfig
from .mopoe import MoPoE, MoPoEConfig
from .mvae import MVAE, MVAEConfig
from .mvtcae import MVTCAE, MVTCAEConfig
from .mwae import MWAE, MWAEConfig
from .nexus import Nexus, NexusConfig
from .registry import get_model_class, register_model, registered_models
from .telbo import TELBO, TELBOConfig

__all__ = [
    "CMVAE",
    "CMVAEConfig",
    "CRMVAE",
    "CRMVAEConfig",
    "CVAE",
    "CVAEConfig",
    "DCCAE",
    "DCCAEConfig",
    "DMVAE",
    "DMVAEConfig",
    "DVCCA",
    "DVCCAConfig",
    "GPoE",
    "GPoEConfig",
    "JMVAE",
    "JMVAEConfig",
    "JNF",
    "JNFConfig",
    "MAAE",
    "MAAEConfig",
    "MCVAE",
    "MCVAEConfig",
    "MHVAE",
    "MHVAEConfig",
    "MMJSD",
    "MMJSDConfig",
    "MMVAE",
    "MMVAEConfig",
    "MMVAEPlus",
    "MMVAEPlusConfig",
    "MVAE",
    "MVAEConfig",
    "MVTCAE",
    "MVTCAEConfig",
    "MWAE",
    "MWAEConfig",
    "ModelConfig",
    "MoPoE",
    "MoPoEConfig",
    "MultimodalVAE",
    "Nexus",
    "NexusConfig",
    "TELBO",
    "TELBOConfig",
    "build_model",
    "get_model_class",
    "load_model",
    "register_model",
    "registered_models",
    "save_model",
]
