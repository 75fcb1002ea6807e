"""Modality specs shared by the data sources: default networks and likelihood options."""

from __future__ import annotations

from typing import Any

from ..modality import NetworkSpec


def network_spec(name: str, hidden_dim: int) -> NetworkSpec:
    """A registered network with a source's width: two hidden layers for ``"mlp"``, the dense
    layer for ``"conv"``, no options for anything else."""
    h = int(hidden_dim)
    if name == "mlp":
        return NetworkSpec(name, {"hidden_dims": [h, h]})
    if name == "conv":
        return NetworkSpec(name, {"hidden_dim": h})
    return NetworkSpec(name, {})


def likelihood_kwargs(likelihood: str, scale: float) -> dict[str, Any]:
    """``{"scale": scale}`` for the location-scale heads (``normal``, ``laplace``), else none."""
    return {"scale": float(scale)} if likelihood in ("normal", "laplace") else {}
