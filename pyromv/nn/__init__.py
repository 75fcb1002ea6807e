"""Encoder and decoder networks, registered by name (see :mod:`pyromv.nn.registry`)."""

from . import conv, mlp  # noqa: F401  (registers the networks)
from .conv import ConvDecoder, ConvEncoder
from .mlp import LinearDecoder, LinearEncoder, MLPDecoder, MLPEncoder
from .registry import (
    build_decoder,
    build_encoder,
    register_decoder,
    register_encoder,
    registered_decoders,
    registered_encoders,
)

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "LinearDecoder",
    "LinearEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "build_decoder",
    "build_encoder",
    "register_decoder",
    "register_encoder",
    "registered_decoders",
    "registered_encoders",
]
