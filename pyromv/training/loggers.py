"""Experiment tracking: TensorBoard, MLflow or CSV, as trainer callbacks.

A :class:`RunLogger` is a :class:`~pyromv.training.Trainer` callback: called as
``logger(trainer, record)`` after each epoch it logs the epoch's record (training loss,
validation loss, seconds) at the epoch number, and ``logger.on_step(trainer, loss)`` logs the
training loss per row of every ``every_n_steps``-th step. Besides, :meth:`RunLogger.log_hparams`
records a (nested) config as hyperparameters, :meth:`RunLogger.log_metrics` any numbers (say the
evaluation's, flattened to ``eval/log_likelihood/mean`` ...), :meth:`RunLogger.log_image` a PNG
file. Close it (or use it as a context manager) to flush.

Backends (:func:`build_logger` by name):

* ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` event files (extra ``tensorboard``);
* ``mlflow``: an MLflow run, by default in a SQLite store inside the run directory
  (``sqlite:///<dir>/mlflow.db``, artifacts under ``<dir>/mlartifacts``; MLflow 3 refuses its old
  ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``) or any ``tracking_uri`` (extra ``mlflow``);
* ``csv``: ``metrics.csv`` (columns ``name, value, step, epoch``) and ``hparams.json``, no extra.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CSVLogger", "MLflowLogger", "RunLogger", "TensorBoardLogger", "build_logger",
           "flatten_metrics", "registered_loggers"]

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dictionary, keyed by ``/``-joined paths (booleans, strings,
    lists and non-finite values left out; characters MLflow refuses in a name become ``_``)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = _NAME_CHARS.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b": value}`` with values int, float, str or bool (others as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_params(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


class RunLogger:
    """What every tracking backend does; subclasses write ``_write_metrics`` and may override the rest.

    Parameters
    ----------
    every_n_steps : int
        Log the step loss of every n-th optimisation step (0: no step losses).
    """

    name = "base"

    def __init__(self, every_n_steps: int = 1) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(f"logger: every_n_steps must be an int >= 0 (0: no step losses), got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.closed = False

    # ---- the trainer's hooks
    def __call__(self, trainer: Any, record: Mapping[str, Any]) -> None:
        """After each epoch: ``train/loss``, ``val/loss`` and ``train/seconds`` at the epoch number."""
        names = {"train_loss": "train/loss", "val_loss": "val/loss", "seconds": "train/seconds"}
        values = {names.get(k, f"train/{k}"): v for k, v in record.items() if k not in ("epoch", "improved")}
        self.log_metrics(flatten_metrics(values), step=int(record["epoch"]), epoch=int(record["epoch"]))

    def on_step(self, trainer: Any, loss: float) -> None:
        """After each optimisation step: the step's loss per row as ``train/loss_step`` at the step."""
        if self.every_n_steps and trainer.step % self.every_n_steps == 0:
            self.log_metrics({"train/loss_step": float(loss)}, step=int(trainer.step), epoch=int(trainer.epoch) + 1)

    # ---- what a run logs
    def log_hparams(self, config: Mapping[str, Any]) -> None:
        """Record a (nested) configuration as the run's hyperparameters."""

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        """Record numbers at ``step`` (an epoch number for the per-epoch values)."""
        metrics = {k: float(v) for k, v in metrics.items()}
        if metrics:
            self._write_metrics(metrics, step, epoch)

    def _write_metrics(self, metrics: dict[str, float], step: int, epoch: int | None) -> None:
        raise NotImplementedError

    def log_image(self, name: str, path: str | os.PathLike, step: int = 0) -> None:
        """Record a PNG file under ``name`` (e.g. ``eval/cross_generation``)."""

    def flush(self) -> None:
        """Write what is buffered."""

    def close(self, success: bool = True) -> None:
        """Flush and release the backend (idempotent); ``success=False`` marks a failed run where
        the backend records it (MLflow)."""
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _missing_extra(extra: str, package: str) -> ImportError:
    return ImportError(f"logger={extra} needs the {package!r} package: pip install 'pyromv[{extra}]'")


class CSVLogger(RunLogger):
    """``<dir>/metrics.csv`` (one row per value: ``name, value, step, epoch``, appended to on
    resume) and ``<dir>/hparams.json``. PNGs are not copied: they stay in the run directory.

    ``pandas.read_csv(dir / "metrics.csv").pivot_table(index="step", columns="name", values="value")``
    gives one column per metric.
    """

    name = "csv"
    FIELDS = ("name", "value", "step", "epoch")

    def __init__(self, save_dir: str | os.PathLike, every_n_steps: int = 1) -> None:
        super().__init__(every_n_steps)
        self.save_dir = Path(save_dir)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.save_dir / "metrics.csv"
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(self.FIELDS)

    def log_hparams(self, config: Mapping[str, Any]) -> None:
        (self.save_dir / "hparams.json").write_text(json.dumps(config, indent=2, default=str))

    def _write_metrics(self, metrics: dict[str, float], step: int, epoch: int | None) -> None:
        for name, value in metrics.items():
            self._writer.writerow((name, repr(value), step, "" if epoch is None else epoch))

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self, success: bool = True) -> None:
        super().close(success)
        self._file.close()


class TensorBoardLogger(RunLogger):
    """Event files in ``<dir>`` (``tensorboard --logdir <dir>``): scalars, the PNGs as images,
    the config as hyperparameters (HParams tab) and as text."""

    name = "tensorboard"

    def __init__(self, save_dir: str | os.PathLike, every_n_steps: int = 1) -> None:
        super().__init__(every_n_steps)
        try:
            import tensorboard  # noqa: F401  (SummaryWriter needs it)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise _missing_extra("tensorboard", "tensorboard") from err
        self.save_dir = Path(save_dir)
        self.writer = SummaryWriter(log_dir=str(self.save_dir))

    def log_hparams(self, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = _flatten_params(config)
        for summary in hparams(params, {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def _write_metrics(self, metrics: dict[str, float], step: int, epoch: int | None) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)

    def log_image(self, name: str, path: str | os.PathLike, step: int = 0) -> None:
        import matplotlib.image

        image = matplotlib.image.imread(str(path))  # float RGB(A) in [0, 1] for a PNG
        if image.ndim == 2:
            image = image[..., None]
        self.writer.add_image(name, image[..., :3], global_step=step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self, success: bool = True) -> None:
        super().close(success)
        self.writer.close()


class MLflowLogger(RunLogger):
    """One MLflow run: step losses buffered and sent once per epoch (``log_batch``), the config
    as parameters (flattened, ``model.latent_dim``) and as the artifact ``config.json``, the PNGs
    as artifacts under ``images/``.

    Parameters
    ----------
    save_dir : path
        Where the default store goes: ``sqlite:///<save_dir>/mlflow.db`` and artifacts in
        ``<save_dir>/mlartifacts``.
    tracking_uri : str, optional
        Any MLflow tracking URI instead (a server, another database); default the environment's
        ``MLFLOW_TRACKING_URI`` if set, else the store in ``save_dir``.
    experiment : str
        Experiment name (created if needed).
    run_name : str, optional
    """

    name = "mlflow"

    def __init__(self, save_dir: str | os.PathLike, tracking_uri: str | None = None, experiment: str = "pyromv",
                 run_name: str | None = None, every_n_steps: int = 1) -> None:
        super().__init__(every_n_steps)
        try:
            import mlflow
        except ImportError as err:
            raise _missing_extra("mlflow", "mlflow") from err
        self.save_dir = Path(save_dir).resolve()
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not self.tracking_uri:  # the default store: a database and the artifacts in save_dir
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self.tracking_uri = f"sqlite:///{self.save_dir / 'mlflow.db'}"
            artifacts = (self.save_dir / "mlartifacts").as_uri()
        with warnings.catch_warnings():  # SQLAlchemy 2.1 deprecations inside MLflow's store, not the user's
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"sqlalchemy|mlflow|alembic")
            warnings.filterwarnings("ignore", message=".*noload.*")
            self.client = mlflow.MlflowClient(self.tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (found.experiment_id if found is not None
                             else self.client.create_experiment(experiment, artifact_location=artifacts))
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self._pending: list[Any] = []

    def log_hparams(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in _flatten_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, json.loads(json.dumps(config, default=str)), "config.json")

    def _write_metrics(self, metrics: dict[str, float], step: int, epoch: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(name, value, now, step) for name, value in metrics.items())
        if "train/loss_step" not in metrics or len(self._pending) >= 1000:  # step losses wait for the epoch's
            self.flush()

    def log_image(self, name: str, path: str | os.PathLike, step: int = 0) -> None:
        folder = str(Path("images") / Path(name).parent) if Path(name).parent != Path(".") else "images"
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def close(self, success: bool = True) -> None:
        if not self.closed:
            super().close(success)
            self.client.set_terminated(self.run_id, status="FINISHED" if success else "FAILED")


_LOGGERS: dict[str, type[RunLogger]] = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "csv": CSVLogger}
#: the sub-directory of the run directory each backend writes to by default
LOG_DIRS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "csv": "csv"}


def registered_loggers() -> list[str]:
    """Names :func:`build_logger` accepts."""
    return sorted(_LOGGERS)


def build_logger(name: str, save_dir: str | os.PathLike, **kwargs: Any) -> RunLogger:
    """The logger ``name`` (``tensorboard``, ``mlflow``, ``csv``) writing under ``save_dir``.

    Raises ``ValueError`` for an unknown name and ``ImportError`` naming the extra to install
    when the backend's package is missing.
    """
    if name not in _LOGGERS:
        raise ValueError(f"logger={name}: no such logger; choose from none, {', '.join(registered_loggers())}")
    return _LOGGERS[name](save_dir, **kwargs)
