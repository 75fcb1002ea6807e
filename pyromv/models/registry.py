"""Models registered by name, with their config dataclasses."""

from __future__ import annotations

from collections.abc import Callable

_MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`~pyromv.models.MultimodalVAE` under ``name``."""

    def deco(cls: type) -> type:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = cls
        cls.name = name
        return cls

    return deco


def get_model_class(name: str) -> type:
    """The model class registered under ``name``; ValueError listing the registered names.

    A name not registered yet triggers the import of the plugins (:mod:`pyromv.models.plugins`).
    """
    if name not in _MODELS:
        from .plugins import load_plugins

        load_plugins()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(_MODELS)}")
    return _MODELS[name]


def registered_models() -> list[str]:
    """Names of the registered models (plugins included), sorted."""
    from .plugins import load_plugins

    load_plugins()
    return sorted(_MODELS)
