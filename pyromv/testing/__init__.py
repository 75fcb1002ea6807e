"""Tools for testing and benchmarking pyromv (hand-written reference losses)."""

from .reference import mmvae_reference_loss, mopoe_reference_loss, mvae_reference_loss

__all__ = ["mmvae_reference_loss", "mopoe_reference_loss", "mvae_reference_loss"]
