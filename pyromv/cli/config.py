"""Hydra structured configs of the command line: groups ``model``, ``data`` and ``trainer``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..data.prepared import Prepared
from ..data.sources import (
    MHD,
    MNISTSVHN,
    CelebA,
    CUBImageCaptions,
    Diabetes,
    FashionText,
    Linnerud,
    MNISTSVHNText,
    NoisyFashion,
    PolyDigits,
    PolyFashion,
    PolyMNIST,
    TranslatedPolyMNIST,
)
from ..metrics.evaluate import QUICK_EVALUATION, EvalConfig
from ..models import get_model_class, registered_models
from ..training import TrainerConfig
from .help import TEMPLATES as HELP_TEMPLATES

#: data sources by config-group name; each config has ``modalities()`` and ``load(split)``
DATA_SOURCES: dict[str, type] = {
    "polydigits": PolyDigits,
    "polyfashion": PolyFashion,
    "fashiontext": FashionText,
    "noisyfashion": NoisyFashion,
    "mnist_svhn": MNISTSVHN,
    "mnist_svhn_text": MNISTSVHNText,
    "polymnist": PolyMNIST,
    "translated_polymnist": TranslatedPolyMNIST,
    "mhd": MHD,
    "cub": CUBImageCaptions,
    "celeba": CelebA,
    "linnerud": Linnerud,
    "diabetes": Diabetes,
    "prepared": Prepared,  # a folder written by pyromv-prepare (memory-mapped)
}


@dataclass
class TrainJob:
    """``pyromv-train``: train a model on a data set with simulated missingness, then evaluate.

    Attributes
    ----------
    missing_rate : float
        MCAR rate of every modality in the *training* set (every row keeps one modality).
    missing_seed : int
        Seed of the missingness.
    feature_missing_rate : float
        Feature-level MCAR rate (:func:`~pyromv.data.feature_mcar`): each entry of every modality
        of the training *and* test sets goes missing with this probability (seeds ``missing_seed``
        and ``missing_seed + 1``), after ``missing_rate``. 0 (default): none.
    feature_missing_pattern : str
        How ``feature_missing_rate``'s entries go missing: ``mcar`` (default) or ``self_masking``
        (:func:`~pyromv.data.feature_mnar`, strength 2: the larger an entry, the likelier it goes
        missing; missing not at random).
    mask_aware : str
        Do the encoders see the feature masks: ``auto`` (default: the modalities whose data have
        feature-level missingness, e.g. ``feature_missing_rate > 0``), ``on`` or ``off`` for every
        modality (see docs/missing-data.md).
    missingness : str
        The model of how entries go missing, for every modality whose training data miss single
        entries: ``ignorable`` (default: not modelled) or a
        :class:`~pyromv.data.Modality` ``missingness`` model (``self_masking``,
        ``self_masking_high``, ``self_masking_low``, ``linear``: not-MIWAE, docs/imputation.md).
    plot_rows : int
        Columns in the cross-generation picture.
    num_threads : int
        torch intra-op threads (0 keeps torch's default). Small networks run fastest on one;
        two threads on two busy cores were measured 40x slower.
    sampler : str
        ``"none"`` or a registered latent sampler (``prior``, ``gmm``, ``maf``, ``iaf``) fitted to
        the training set's posterior means after training (saved in ``sampler/``; picture
        ``sampler_generations.png``).
    sampler_kwargs : dict
        Options of the sampler, e.g. ``+sampler_kwargs.n_components=20``.
    evaluate : bool
        Run :func:`pyromv.metrics.evaluate` after training (into ``eval/``, as ``pyromv-eval``).
    evaluation : EvalConfig
        Its options; a small budget by default (``pyromv-eval`` on the run dir does more).
    logger : str
        Experiment tracking: ``none``, ``tensorboard`` (into ``tensorboard/``), ``mlflow`` (an MLflow
        run in ``mlflow/``) or ``csv`` (``csv/metrics.csv``): losses per step and epoch, the
        evaluation's metrics, the pictures and this config (:mod:`pyromv.training.loggers`).
    logger_kwargs : dict
        Options of the logger, e.g. ``+logger_kwargs.every_n_steps=10`` or, for MLflow,
        ``+logger_kwargs.tracking_uri=http://localhost:5000 +logger_kwargs.experiment=mine``.
    """

    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"model": "mvae"}, {"data": "polydigits"}, {"trainer": "default"},
                                 {"override hydra/help": "pyromv_train"}]  # --help: pyromv.cli.help
    )
    model: Any = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = MISSING
    missing_rate: float = 0.3
    missing_seed: int = 0
    feature_missing_rate: float = 0.0
    feature_missing_pattern: str = "mcar"
    mask_aware: str = "auto"
    missingness: str = "ignorable"
    plot_rows: int = 8
    num_threads: int = 1
    sampler: str = "none"
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True
    evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(**QUICK_EVALUATION))
    logger: str = "none"
    logger_kwargs: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    """Put the job, every registered model's config and every data source in Hydra's store."""
    store = ConfigStore.instance()
    store.store(name="train", node=TrainJob)
    for name in registered_models():
        store.store(group="model", name=name, node=get_model_class(name).config_class)
    for name, source in DATA_SOURCES.items():
        store.store(group="data", name=name, node=source)
    store.store(group="trainer", name="default", node=TrainerConfig(epochs=100, patience=15))
    store.store(group="hydra/help", name="pyromv_train", node=HELP_TEMPLATES["train"])
