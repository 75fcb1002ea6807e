"""Data set sources; :class:`PolyDigits` is the embedded default (no download)."""

from .polydigits import PolyDigits

__all__ = ["PolyDigits"]
