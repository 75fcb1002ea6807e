"""The description of one modality: its name, shape, likelihood and networks."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: values of :attr:`Modality.mask_aware`
MASK_AWARE = ("auto", "on", "off")
#: values of :attr:`Modality.missingness` (:mod:`pyromv.nn.missingness`)
MISSINGNESS = ("ignorable", "self_masking", "self_masking_high", "self_masking_low", "linear")


@dataclass(frozen=True)
class NetworkSpec:
    """A network by registered name plus JSON-serialisable keyword arguments.

    The model fills in the shapes (``input_shape``/``output_shape`` and ``latent_dim``)
    when it builds the network, so ``kwargs`` only hold architecture choices such as
    ``hidden_dims``.
    """

    name: str = "mlp"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the fields (inverse of ``from_dict``)."""
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def coerce(cls, value: NetworkSpec | str | Mapping[str, Any]) -> NetworkSpec:
        """A NetworkSpec from a spec, a registered name or a ``{name, kwargs}`` mapping."""
        if isinstance(value, NetworkSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"name", "kwargs"}
            if unknown:
                raise ValueError(f"network spec has unknown keys {sorted(unknown)}")
            return cls(str(value.get("name", "mlp")), dict(value.get("kwargs", {}) or {}))
        raise TypeError(f"expected a NetworkSpec, a name or a dict, got {type(value).__name__}")


@dataclass(frozen=True)
class Modality:
    """One modality of a multimodal data set.

    Parameters
    ----------
    name : str
        Identifier, used in the observation site name ``x_{name}``.
    shape : tuple of int
        Shape of one row of this modality (without the batch dimension).
    likelihood : str
        Registered likelihood head (see :mod:`pyromv.distributions.likelihoods`).
    likelihood_kwargs : dict
        Options of the head, e.g. ``{"scale": 0.1}`` or ``{"num_categories": 10}``.
    encoder, decoder : NetworkSpec
        Registered networks for ``q(z | x_m)`` and ``p(x_m | z)``.
    rescale : float
        Weight of this modality's log-likelihood in the objective (likelihood rescaling,
        Shi et al. 2019); ``1.0`` is the plain likelihood.
    mask_aware : str
        Does the encoder see the feature mask (``(x * m, m)``, or the observed set for the
        ``"set"`` encoder; :mod:`pyromv.nn.masked`)? ``"on"``, ``"off"`` or ``"auto"``
        (``True``/``False``/``None`` are accepted too). ``"auto"`` becomes ``"on"`` in the specs of
        a :class:`~pyromv.data.MultimodalDataset` whose rows observe only some entries of this
        modality, and ``"off"`` when a model is built from a spec still ``"auto"``; a model
        records the resolved value (``config.json``), so it reloads identically.
    missingness : str
        How the entries of this modality go missing. ``"ignorable"`` (default: missing at
        random, the mask is not modelled) or a model ``p(s | x)`` of the feature mask ``s`` given
        the complete values, trained with the model (not-MIWAE, Ipsen, Frellsen & Mattei 2021;
        missing not at random): ``"self_masking"`` (each entry's chance of going missing is
        logistic in its own value), ``"self_masking_high"`` / ``"self_masking_low"`` (the same,
        with large / small values the more likely to go missing), ``"linear"`` (logistic in all
        the modality's values). Needs a reparameterisable likelihood (normal, laplace,
        continuous_bernoulli); see :mod:`pyromv.nn.missingness`.
    """

    name: str
    shape: tuple[int, ...]
    likelihood: str = "normal"
    likelihood_kwargs: Mapping[str, Any] = field(default_factory=dict)
    encoder: NetworkSpec = field(default_factory=NetworkSpec)
    decoder: NetworkSpec = field(default_factory=NetworkSpec)
    rescale: float = 1.0
    mask_aware: str = "auto"
    missingness: str = "ignorable"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"modality name {self.name!r} must start with a letter and contain only "
                "letters, digits and underscores (it names the Pyro site x_{name})"
            )
        try:
            shape = tuple(int(s) for s in self.shape)
        except TypeError as err:
            raise TypeError(f"modality {self.name!r}: shape must be a tuple of ints") from err
        if any(s <= 0 for s in shape):
            raise ValueError(f"modality {self.name!r}: shape {shape} must have positive sizes")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "likelihood_kwargs", dict(self.likelihood_kwargs))
        object.__setattr__(self, "encoder", NetworkSpec.coerce(self.encoder))
        object.__setattr__(self, "decoder", NetworkSpec.coerce(self.decoder))
        if not self.rescale > 0:
            raise ValueError(
                f"modality {self.name!r}: rescale must be positive, got {self.rescale}"
            )
        object.__setattr__(self, "rescale", float(self.rescale))
        setting = self.mask_aware
        if setting is None or isinstance(setting, bool):
            setting = {True: "on", False: "off", None: "auto"}[setting]
        if setting not in MASK_AWARE:
            raise ValueError(
                f"modality {self.name!r}: mask_aware must be one of {list(MASK_AWARE)}, got {self.mask_aware!r}"
            )
        object.__setattr__(self, "mask_aware", setting)
        if self.missingness not in MISSINGNESS:
            raise ValueError(
                f"modality {self.name!r}: missingness must be one of {list(MISSINGNESS)}, got {self.missingness!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the fields (inverse of ``from_dict``)."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["encoder"] = self.encoder.to_dict()
        out["decoder"] = self.decoder.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Modality:
        """Rebuild from :meth:`to_dict`'s output."""
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        return cls(**d)


def resolve_mask_aware(modalities: Sequence[Modality], partial: Mapping[str, bool],
                       auto: str = "auto") -> list[Modality]:
    """The specs with each ``mask_aware="auto"`` made ``"on"`` where ``partial[name]`` (the data
    observe only some entries of the modality in some row) and ``auto`` (``"auto"`` or
    ``"off"``) elsewhere; ``"on"``/``"off"`` are kept: the user's choice wins."""
    out = []
    for m in modalities:
        if m.mask_aware == "auto":
            setting = "on" if partial.get(m.name, False) else auto
            m = m if setting == "auto" else replace(m, mask_aware=setting)
        out.append(m)
    return out
