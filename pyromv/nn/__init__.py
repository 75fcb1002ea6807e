"""Encoder and decoder networks, registered by name (see :mod:`pyromv.nn.registry`)."""

from . import conv, mlp, set_encoder  # noqa: F401  (registers the networks)
from .conv import ConvDecoder, ConvEncoder
from .masked import MaskConcat
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
    "MaskConcat",
    "MLPDecoder",
    "MLPEncoder",
    "SetEncoder",
    "build_decoder",
    "build_encoder",
    "register_decoder",
    "register_encoder",
    "registered_decoders",
    "registered_encoders",
]
