"""``pyromv-train logger=tensorboard|mlflow|csv``: one experiment-tracking run per training run.

:class:`Tracking` checks the option before anything is loaded, opens the logger once the job's
options are all known good, hands it to the trainer as a callback, logs the final metrics
(test ELBO, the evaluation's, the sampler's) and the run's pictures, and closes it however the
run ends (an MLflow run that raised is marked ``FAILED``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..training.loggers import LOG_DIRS, RunLogger, build_logger, flatten_metrics, registered_loggers
from .errors import UsageError

#: the final numbers of ``metrics.json`` that are logged (``result/<name>``)
RESULT_KEYS = ("test_elbo", "best_val_loss", "epochs", "train_rows", "test_rows", "seconds")


def logger_options(cfg: Any) -> tuple[str, dict[str, Any]]:
    """``(logger, logger_kwargs)`` of a job config (``("none", {})`` where it has none)."""
    kwargs = cfg.get("logger_kwargs", None)
    return str(cfg.get("logger", "none")), dict(OmegaConf.to_container(kwargs) if kwargs is not None else {})


def check_logger(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse an unknown logger, options it does not take, or a backend that is not installed
    (a :class:`~pyromv.cli.errors.UsageError` naming the extra to install)."""
    if name == "none":
        if kwargs:
            raise UsageError(f"logger_kwargs {sorted(kwargs)} given but logger=none: choose a logger "
                             f"({', '.join(registered_loggers())})")
        return
    if name not in LOG_DIRS:
        raise UsageError(f"logger={name}: no such logger; choose from none, {', '.join(registered_loggers())}")
    from ..training import loggers

    cls = {"tensorboard": loggers.TensorBoardLogger, "mlflow": loggers.MLflowLogger, "csv": loggers.CSVLogger}[name]
    try:
        inspect.signature(cls).bind("dir", **kwargs)
    except TypeError as err:
        accepted = [p for p in inspect.signature(cls).parameters if p != "save_dir"]
        raise UsageError(f"logger={name}: {err}; logger_kwargs may set {', '.join(accepted)}") from err
    every = kwargs.get("every_n_steps", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise UsageError(f"logger_kwargs.every_n_steps must be an int >= 0 (0: no step losses), got {every!r}")
    package = {"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(name)
    if package is not None:
        import importlib.util

        if importlib.util.find_spec(package) is None:
            raise UsageError(f"logger={name} needs the {package!r} package: pip install 'pyromv[{name}]'")


class Tracking:
    """The tracking of one ``pyromv-train`` run (does nothing with ``logger=none``)."""

    def __init__(self, name: str, kwargs: Mapping[str, Any], out: str | Path) -> None:
        self.name, self.kwargs, self.out = name, dict(kwargs), Path(out)
        self.logger: RunLogger | None = None

    def open(self, config: Mapping[str, Any]) -> list[RunLogger]:
        """Start the run, record ``config`` as its hyperparameters; the trainer callbacks."""
        if self.name == "none":
            return []
        check_logger(self.name, self.kwargs)
        self.logger = build_logger(self.name, self.out / LOG_DIRS[self.name], **self.kwargs)
        self.logger.log_hparams(config)
        return [self.logger]

    def log_results(self, metrics: Mapping[str, Any], step: int) -> None:
        """The final numbers (``result/...``, ``eval/...``, ``sampler/...``) and every PNG of the
        run directory and of ``eval/`` (names ``cross_generation``, ``eval/coherence`` ...)."""
        if self.logger is None:
            return
        values = {f"result/{k}": metrics[k] for k in RESULT_KEYS if k in metrics}
        evaluation = {k: v for k, v in (metrics.get("evaluation") or {}).items() if k not in ("config", "seconds")}
        found = {**flatten_metrics(values), **flatten_metrics(evaluation, "eval/"),
                 **flatten_metrics(metrics.get("sampler") or {}, "sampler/")}
        self.logger.log_metrics(found, step=step)
        for folder, prefix in ((self.out, ""), (self.out / "eval", "eval/")):
            for png in sorted(folder.glob("*.png")):
                self.logger.log_image(f"{prefix}{png.stem}", png, step=step)

    def close(self, success: bool = True) -> None:
        if self.logger is not None:
            self.logger.close(success=success)
