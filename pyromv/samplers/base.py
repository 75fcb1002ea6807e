r"""The interface of latent samplers: fit a density to encoded data, sample it, decode the draws.

A trained multimodal VAE's prior ``p(z)`` is often a poor proposal for joint generation: the
aggregated posterior ``q(z) = (1/N) \sum_n q(z | X_n)`` covers only part of it. A sampler fits a
density ``r(z)`` to latent codes of the training set (the posterior means of the guide's fused
posterior by default, rows with missing modalities included), then ``sample(n)`` draws codes and
``generate(n)`` decodes them into a synthetic :class:`~pyromv.data.MultimodalDataset`
(data augmentation). Ghosh et al. (2020) fit such "ex-post" densities to deterministic
autoencoders; Senellart et al. (2023, MultiVae) compare them on multimodal VAEs.

Private latents. A sampler models the shared ``z`` only. Models with modality-private latents
(sites ``w_{m}``) decode each sampled ``z`` with private latents drawn from their prior
``p(w_m)``: through the model's ``generate_from_shared(z, targets=None, sample=False)`` method
when it defines one, otherwise through the base class's decoding (``MultimodalVAE.decode`` and the
point decoder behind ``generate``), which draws any private latent it is not given from its prior.
``fit`` records the private sites it finds in a trace of the model (``fit_info["private_sites"]``).

References
----------
.. [1] P. Ghosh, M. S. M. Sajjadi, A. Vergari, M. Black and B. Schölkopf, "From Variational to
   Deterministic Autoencoders", ICLR 2020.
.. [2] A. Senellart, C. Chadebec and S. Allassonnière, "MultiVae: A Python package for
   Multimodal Variational Autoencoders on Partial Datasets", 2023.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import safetensors.torch
import torch
from pyro import poutine
from torch import Tensor, nn

from ..data.dataset import MultimodalDataset
from ..models.base import MultimodalVAE
from ..models.io import atomic_write

CONFIG_NAME = "sampler.json"
WEIGHTS_NAME = "sampler.safetensors"
FORMAT_VERSION = 1
CODE_KINDS = ("mean", "sample")
#: the optional model method that decodes shared codes, drawing private latents from their prior
PRIVATE_HOOK = "generate_from_shared"

Classifier = Callable[..., Tensor] | Mapping[str, Callable[[Tensor], Tensor]]
S = TypeVar("S", bound="LatentSampler")

_SAMPLERS: dict[str, type[LatentSampler]] = {}


class NotFittedError(ValueError):
    """A sampler was asked to sample, score, decode or save before it was fitted."""


def register_sampler(name: str) -> Callable[[type[S]], type[S]]:
    """Register a :class:`LatentSampler` subclass under ``name``."""

    def deco(cls: type[S]) -> type[S]:
        if name in _SAMPLERS and _SAMPLERS[name] is not cls:
            raise ValueError(f"a sampler is already registered as {name!r}")
        _SAMPLERS[name] = cls
        cls.name = name
        return cls

    return deco


def registered_samplers() -> list[str]:
    """Names accepted by :func:`build_sampler`."""
    return sorted(_SAMPLERS)


def get_sampler_class(name: str) -> type[LatentSampler]:
    """The sampler class registered under ``name``; ValueError listing the registered names."""
    if not isinstance(name, str) or name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; registered: {registered_samplers()}")
    return _SAMPLERS[name]


def build_sampler(name: str, **kwargs: Any) -> LatentSampler:
    """An unfitted sampler by registered name (``"prior"``, ``"gmm"``, ``"maf"``, ``"iaf"``)."""
    cls = get_sampler_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"sampler {name!r} rejected its options {sorted(kwargs)}: {err}") from err


# ---------------------------------------------------------------------- encoding and decoding
def _check_model(model: Any) -> MultimodalVAE:
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    return model


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def encode_latents(
    model: MultimodalVAE, dataset: MultimodalDataset, codes: str = "mean", batch_size: int = 512,
) -> Tensor:
    r"""Latent codes of every row of ``dataset`` under the guide's fused posterior ``q(z | X_obs)``.

    ``codes="mean"`` gives the posterior means (the default of the ex-post density estimation of
    Ghosh et al. 2020); ``"sample"`` gives one draw ``z_n \sim q(z | X_n)`` per row (torch's global
    RNG). Rows with missing modalities fuse the experts they observe. Returns ``(N, D)`` on the
    model's device; the model's train/eval mode is restored.
    """
    _check_model(model)
    if not isinstance(dataset, MultimodalDataset):
        raise TypeError(f"expected a MultimodalDataset, got {type(dataset).__name__}")
    if codes not in CODE_KINDS:
        raise ValueError(f"codes must be one of {CODE_KINDS}, got {codes!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("the dataset has no rows to encode")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        out = []
        for batch in dataset.batches(int(batch_size)):
            q = model.encode(batch.to(device))
            out.append(q.mean if codes == "mean" else q.sample())
    finally:
        model.train(was_training)
    z = torch.cat(out)
    if z.dim() != 2 or z.shape[1] != model.latent_dim:
        raise ValueError(
            f"model.encode returned codes of shape {tuple(z.shape)}; samplers need (N, latent_dim)"
        )
    return z


def private_latent_sites(model: MultimodalVAE, dataset: MultimodalDataset) -> list[str]:
    """Names of the model's private latent sites ``w_{m}``, from a trace of one row of its
    generative model (:meth:`~pyromv.models.MultimodalVAE.iw_model`; a training model may
    arrange them otherwise, e.g. MMVAE+'s one private site per stratum)."""
    batch = dataset.batch(slice(0, 1)).to(_model_device(model))
    with torch.no_grad():
        trace = poutine.trace(model.iw_model).get_trace(batch)
    return [
        name for name, site in trace.nodes.items()
        if site["type"] == "sample" and name.startswith("w_") and not site["is_observed"]
    ]


@torch.no_grad()
def decode_latents(
    model: MultimodalVAE, z: Tensor, sample: bool = False, targets: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    r"""Decode shared codes ``z`` (``(n, D)``) into every modality the model generates
    (``model.generated_modalities``; or ``targets``).

    ``sample=False`` returns the likelihood heads' point estimates (the means of ``p(x_m | z)``,
    the arg-max for categorical heads), ``sample=True`` one draw ``x_m \sim p(x_m | z)``. Private latents
    are drawn from their prior (by ``generate_from_shared`` when the model defines it).
    """
    names = model.check_targets(targets)
    hook = getattr(model, PRIVATE_HOOK, None)
    if callable(hook):
        return dict(hook(z, targets=names, sample=sample))
    if sample:
        decoded = model.decode(z)
        return {t: decoded[t].sample() for t in names}
    # the base class's point decoder (the heads' means), as model.generate uses it
    return model._point(z, names)


def _scores_to_labels(out: Any, n: int, what: str) -> Tensor:
    out = torch.as_tensor(out)
    if out.dim() == 2 and out.shape[0] == n:
        return out.argmax(-1)
    if out.dim() == 1 and out.shape[0] == n:
        if out.is_floating_point() and not bool((out == out.round()).all()):
            raise ValueError(f"{what} returned non-integer labels")
        return out.long()
    raise ValueError(
        f"{what} must return labels of shape ({n},) or class scores of shape ({n}, C), "
        f"got {tuple(out.shape)}"
    )


def _call(fn: Callable, x: Any) -> Any:
    was = fn.training if isinstance(fn, nn.Module) else None
    if was is not None:
        fn.eval()
    try:
        with torch.no_grad():
            return fn(x)
    finally:
        if was is not None:
            fn.train(was)


def label_generations(data: Mapping[str, Tensor], classifier: Classifier) -> Tensor:
    """Class labels of generated rows.

    ``classifier`` is either one callable ``f(data) -> labels (n,) or scores (n, C)`` that sees
    the dict of every modality, or a dict ``{modality: f_m}`` of per-modality classifiers
    ``f_m(x_m)``. With several per-modality classifiers the label is their majority vote; a tie
    goes to the class predicted by the classifier listed first among the tied classes (so with
    one classifier, or all disagreeing, the first modality's prediction wins).
    """
    n = next(iter(data.values())).shape[0]
    if isinstance(classifier, Mapping):
        if not classifier:
            raise ValueError("the dict of classifiers is empty")
        preds = []
        for m, f in classifier.items():
            if m not in data:
                raise ValueError(f"classifier given for unknown modality {m!r}; have {list(data)}")
            if not callable(f):
                raise TypeError(f"the classifier of modality {m!r} is not callable")
            preds.append(_scores_to_labels(_call(f, data[m]), n, f"the classifier of {m!r}"))
        votes = torch.stack([p.cpu() for p in preds], 1)  # (n, K)
        counts = (votes.unsqueeze(-1) == votes.unsqueeze(-2)).sum(-1)  # votes for each K's class
        first_best = (counts == counts.max(1, keepdim=True).values).long().argmax(1)
        return votes.gather(1, first_best.unsqueeze(1)).squeeze(1)
    if callable(classifier):
        return _scores_to_labels(_call(classifier, dict(data)), n, "the classifier").cpu()
    raise TypeError(
        "classifier must be a callable on the dict of modalities or a dict of per-modality "
        f"callables, got {type(classifier).__name__}"
    )


# ---------------------------------------------------------------------- the interface
class LatentSampler:
    r"""A density ``r(z)`` over the shared latent space of a multimodal VAE.

    Subclasses implement :meth:`_fit_codes`, :meth:`_sample`, :meth:`_log_density`, and the
    persistence pair :meth:`_tensors` / :meth:`_restore`; :meth:`options` lists the constructor
    arguments (JSON-serialisable) that :meth:`load` passes back.

    Workflow: ``fit(model, dataset)`` (or ``fit_codes(codes)`` for codes at hand), then
    ``sample(n)`` codes, ``log_density(codes)``, ``generate(n)`` synthetic data, ``save(folder)``
    and ``LatentSampler.load(folder, model)``.
    """

    name: ClassVar[str] = "base"
    needs_codes: ClassVar[bool] = True

    def __init__(self) -> None:
        self.model: MultimodalVAE | None = None
        self.latent_dim: int | None = None
        self.fit_info: dict[str, Any] = {}

    # ------------------------------------------------------------ for subclasses
    def options(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable (saved with the sampler)."""
        return {}

    def _fit_codes(self, codes: Tensor) -> None:
        raise NotImplementedError

    def _sample(self, n: int) -> Tensor:
        raise NotImplementedError

    def _log_density(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    def _tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ state
    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has been called."""
        return self.latent_dim is not None

    def _check_fitted(self, what: str) -> None:
        if not self.fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(model, dataset) or fit_codes(codes) "
                f"before {what}"
            )

    def _check_codes(self, codes: Any, what: str = "codes", check_dim: bool = True) -> Tensor:
        if not isinstance(codes, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dim() != 2:
            raise ValueError(f"{what} must have shape (N, D), got {tuple(codes.shape)}")
        if check_dim and self.latent_dim is not None and codes.shape[1] != self.latent_dim:
            raise ValueError(
                f"{what} have dimension {codes.shape[1]}; the sampler models {self.latent_dim}"
            )
        if not codes.is_floating_point():
            raise TypeError(f"{what} must be floating point, got {codes.dtype}")
        if not bool(torch.isfinite(codes).all()):
            raise ValueError(f"{what} hold NaN or infinite values")
        return codes.detach()

    def attach(self, model: MultimodalVAE) -> LatentSampler:
        """Use ``model`` to decode (its latent size must match the sampler's)."""
        _check_model(model)
        if self.latent_dim is not None and model.latent_dim != self.latent_dim:
            raise ValueError(
                f"the model's latent_dim is {model.latent_dim}; the sampler models "
                f"{self.latent_dim}-dimensional codes"
            )
        self.model = model
        return self

    # ------------------------------------------------------------ fitting
    def fit(
        self, model: MultimodalVAE, dataset: MultimodalDataset | None = None, codes: str = "mean",
        batch_size: int = 512,
    ) -> LatentSampler:
        """Encode ``dataset`` with the model's guide (:func:`encode_latents`) and fit the codes.

        ``codes="mean"`` fits the posterior means (the default), ``"sample"`` one posterior draw
        per row. The model is kept for :meth:`generate`.
        """
        _check_model(model)
        if self.needs_codes and dataset is None:
            raise ValueError(f"{type(self).__name__}.fit needs the dataset to encode")
        private = private_latent_sites(model, dataset) if dataset is not None else []
        self._fit_model(model, dataset, codes, batch_size)
        if private:
            self.fit_info["private_sites"] = private
        self.model = model
        return self

    def _fit_model(
        self, model: MultimodalVAE, dataset: MultimodalDataset | None, codes: str, batch_size: int,
    ) -> None:
        self.fit_codes(encode_latents(model, dataset, codes, batch_size))
        self.fit_info["codes"] = codes

    def fit_codes(self, codes: Tensor) -> LatentSampler:
        """Fit the density to latent codes ``(N, D)`` (refitting replaces the previous fit)."""
        codes = self._check_codes(codes, check_dim=False)
        if codes.shape[0] < 2:
            raise ValueError(f"need at least 2 codes to fit a density, got {codes.shape[0]}")
        self.latent_dim = None
        self.fit_info = {}
        self._fit_codes(codes)
        self.latent_dim = int(codes.shape[1])
        self.fit_info.setdefault("rows", int(codes.shape[0]))
        if self.model is not None and self.model.latent_dim != self.latent_dim:
            self.model = None
        return self

    # ------------------------------------------------------------ use
    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` latent codes ``(n, D)`` drawn from the fitted density (torch's global RNG)."""
        self._check_fitted("sample")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        return self._sample(n)

    def log_density(self, codes: Tensor) -> Tensor:
        """``log r(z)`` of each row of ``codes`` ``(N, D)``: ``(N,)``."""
        self._check_fitted("log_density")
        codes = self._check_codes(codes)
        with torch.no_grad():
            return self._log_density(codes)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        classifier: Classifier | None = None,
        sample_likelihood: bool = False,
        batch_size: int = 1024,
        model: MultimodalVAE | None = None,
    ) -> MultimodalDataset:
        """``n`` synthetic rows: codes from :meth:`sample`, decoded into every modality the
        model generates (``model.generated_modalities``).

        Parameters
        ----------
        n : int
        classifier : callable or dict of callables, optional
            Labels the rows (see :func:`label_generations`: one classifier on the dict of
            modalities, or per-modality classifiers combined by majority vote, ties to the
            first listed).
        sample_likelihood : bool
            Draw ``x_m ~ p(x_m | z)`` instead of taking the heads' means.
        batch_size : int
            Rows decoded at a time.
        model : MultimodalVAE, optional
            Decoder to use (default: the model given to :meth:`fit` or :meth:`attach`).

        Returns
        -------
        MultimodalDataset
            Every generated modality observed in every row, tensors on the CPU.
        """
        self._check_fitted("generate")
        if model is not None:
            self.attach(model)
        if self.model is None:
            raise ValueError(
                "no model to decode with: fit(model, dataset), attach(model) or pass model="
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        model = self.model
        device = _model_device(model)
        z = self.sample(n)
        was_training = model.training
        model.eval()
        try:
            names = list(model.generated_modalities)
            parts: dict[str, list[Tensor]] = {m: [] for m in names}
            if isinstance(classifier, Mapping):  # modalities the model only conditions on are not generated
                classifier = {m: f for m, f in classifier.items() if m in names or m not in model.names}
            labels: list[Tensor] = []
            for start in range(0, n, int(batch_size)):
                chunk = z[start : start + int(batch_size)].to(device)
                data = decode_latents(model, chunk, sample=sample_likelihood)
                if classifier is not None:
                    labels.append(label_generations(data, classifier))
                for m in names:
                    parts[m].append(data[m].cpu())
        finally:
            model.train(was_training)
        out = {m: torch.cat(v) for m, v in parts.items()}
        specs = [m for m in model.modalities if m.name in parts]
        return MultimodalDataset(specs, out, labels=torch.cat(labels) if labels else None)

    # ------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``sampler.json`` (name, options, latent size) and ``sampler.safetensors``.

        No pickled code: :meth:`load` rebuilds the sampler by registered name and options.
        """
        self._check_fitted("save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "sampler": self.name,
            "latent_dim": self.latent_dim,
            "options": self.options(),
            "fit_info": self.fit_info,
        }
        text = json.dumps(config, indent=2, sort_keys=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self._tensors().items()}
        atomic_write(folder / WEIGHTS_NAME, lambda p: safetensors.torch.save_file(tensors, p))
        atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(text))
        return folder

    @classmethod
    def load(
        cls: type[S], folder: str | os.PathLike, model: MultimodalVAE | None = None,
        map_location: str = "cpu",
    ) -> S:
        """Rebuild a sampler saved by :meth:`save`; ``model`` (optional) is attached for
        :meth:`generate`. Called on a subclass, the saved sampler must be of that kind."""
        folder = Path(folder)
        for p in (folder / CONFIG_NAME, folder / WEIGHTS_NAME):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} not found: a saved sampler folder holds {CONFIG_NAME} and {WEIGHTS_NAME}"
                )
        config = json.loads((folder / CONFIG_NAME).read_text())
        version = config.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"{folder} has format version {version}; this pyromv reads <= {FORMAT_VERSION}")
        try:
            klass = get_sampler_class(config["sampler"])
            latent_dim, options = int(config["latent_dim"]), dict(config["options"])
        except KeyError as err:
            raise ValueError(f"{folder / CONFIG_NAME} lacks the key {err}") from err
        if cls is not LatentSampler and not issubclass(klass, cls):
            raise ValueError(f"{folder} holds a {klass.__name__}, not a {cls.__name__}")
        sampler = klass(**options)
        tensors = safetensors.torch.load_file(str(folder / WEIGHTS_NAME), device=map_location)
        sampler.latent_dim = latent_dim
        sampler._restore(tensors)
        sampler.fit_info = dict(config.get("fit_info", {}))
        if model is not None:
            sampler.attach(model)
        return sampler  # type: ignore[return-value]

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        state = f"latent_dim={self.latent_dim}" if self.fitted else "not fitted"
        return f"{type(self).__name__}({opts}) [{state}]"


def load_sampler(
    folder: str | os.PathLike, model: MultimodalVAE | None = None, map_location: str = "cpu",
) -> LatentSampler:
    """Rebuild any saved sampler (see :meth:`LatentSampler.load`)."""
    return LatentSampler.load(folder, model, map_location)
