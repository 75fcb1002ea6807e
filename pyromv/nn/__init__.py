"""Encoder and decoder networks, registered by name (see :mod:`pyromv.nn.registry`), and the
missingness models of not-MIWAE (:mod:`pyromv.nn.missingness`)."""

from . import conv, mlp, set_encoder  # noqa: F401  (registers the networks)
from .conv import ConvDecoder, ConvEncoder
from .masked import MaskConcat
from .missingness import LinearMissingness, SelfMasking, build_missingness
from .mlp import LinearDecoder, LinearEncoder, MLPDecoder, MLPEncoder
from .registry import (
    build_decoder,
    build_encoder,
    register_decoder,
    register_encoder,
    registered_decoders,
    registered_encoders,
)
from .set_encoder import SetEncoder

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "LinearDecoder",
    "LinearEncoder",
    "LinearMissingness",
    "MaskConcat",
    "MLPDecoder",
    "MLPEncoder",
    "SelfMasking",
    "SetEncoder",
    "build_decoder",
    "build_encoder",
    "build_missingness",
    "register_decoder",
    "register_encoder",
    "registered_decoders",
    "registered_encoders",
]
