"""The optimisation loop: epochs, validation, early stopping, checkpoints and exact resume."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from ..data.dataset import MultimodalDataset
from ..infer import KLWarmup
from ..models.base import MultimodalVAE
from . import distributed as ddp
from .checkpoint import (
    CheckpointWarning,
    CorruptCheckpointError,
    checkpoint_exists,
    load_checkpoint,
    read_manifest,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from .progress import progress_text
from .stages import Stage, frozen_except


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN or infinite during training."""


class DivergenceError(RuntimeError):
    """An epoch's loss jumped far above its recent history (see ``TrainerConfig.divergence_threshold``)."""


DIVERGENCE_WINDOW = 10  # the recent epochs (of the current stage) the divergence test looks at
DIVERGENCE_MIN_EPOCHS = 3  # fewer earlier epochs than this: no test
DEFAULT_DIVERGENCE_THRESHOLD = 20.0


def divergence_ceiling(recent: Sequence[float], threshold: float) -> tuple[float, float] | None:
    """The median of ``recent`` losses and the ceiling above which a new loss counts as divergence.

    ``ceiling = median + threshold * spread`` with ``spread = max(1.4826 * MAD, 0.05 * |median|, 0.1)``
    over the last :data:`DIVERGENCE_WINDOW` finite values (MAD: the median absolute deviation from
    the median; 1.4826 * MAD estimates a standard deviation and is unmoved by a few outliers). The
    floors keep a flat history (say a constant loss) from turning every small rise into divergence.
    None with fewer than :data:`DIVERGENCE_MIN_EPOCHS` values.
    """
    values = [float(v) for v in recent if math.isfinite(v)][-DIVERGENCE_WINDOW:]
    if len(values) < DIVERGENCE_MIN_EPOCHS:
        return None
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    spread = max(1.4826 * mad, 0.05 * abs(median), 0.1)
    return median, median + threshold * spread


def _grad_norm(parameters) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: one foreach kernel
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def default_optimizer(parameters, lr: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel where torch has one for the parameters' device (CPU since
    torch 2.4, CUDA): one pass over each parameter instead of several (4x faster on a 7M
    parameter model on 2 cores); the loop implementation elsewhere."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.Adam(parameters, lr=lr)


class _BatchFetcher(torch.utils.data.Dataset):
    """A DataLoader data set whose items are whole batches: ``fetcher[indices]`` is
    ``dataset.batch(indices)`` (decoded in the worker process; ``None`` for no rows)."""

    def __init__(self, dataset: MultimodalDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: torch.Tensor):
        return self.dataset.batch(indices) if len(indices) else None


def _no_collate(batch):
    return batch


@dataclass
class TrainerConfig:
    """Options of :class:`Trainer` (also a Hydra structured config).

    Attributes
    ----------
    epochs : int
        Maximum number of passes over the training set.
    batch_size : int
        Rows per step.
    lr : float
        Adam learning rate (when no optimiser is given).
    val_fraction : float
        Held out from the training set for validation when no validation set is given
        (0 disables validation and early stopping).
    patience : int
        Stop after this many epochs without a validation improvement (0: never).
    min_delta : float
        Smallest decrease of the validation loss that counts as an improvement.
    grad_clip : float
        Max gradient norm, clipped after ``backward()`` (0: no clipping).
    kl_warmup_epochs : float
        Epochs over which the KL weight rises linearly from 0 to ``beta`` (0: off).
    seed : int
        Seeds torch, numpy and Python and the shuffling of batches.
    validate_pyro : bool
        Keep Pyro's distribution validation on while training (slower).
    progress : bool
        Show a tqdm progress bar.
    divergence_threshold : float
        Stop with :class:`DivergenceError`, before the epoch's checkpoint is written, when the
        epoch's validation loss (the training loss without validation, once KL warm-up is over)
        exceeds the median of the stage's last 10 epochs by more than this many robust standard
        deviations (:func:`divergence_ceiling`; at least 3 earlier epochs). 0 turns the test off.
        The default 20 is twice the largest rise (9.6 robust standard deviations) seen in
        15-epoch runs of every registered model at lr 1e-2 on tiny data, where overfitting can
        double the validation loss within a few epochs; a diverging run rises by thousands.
    num_workers : int
        Build the training batches in this many ``torch.utils.data.DataLoader`` worker
        processes (for data sets that decode rows as they are read: byte images, memory maps).
        The batches are the same as with 0 (the default: batches by tensor indexing in the main
        process): the epoch's permutation is drawn in the main process from the same generator.
    distributed : bool or None
        Data-parallel training over the processes of a ``torch.distributed`` job
        (``torchrun --nproc_per_node=N -m pyromv.cli.train ...``; gloo on CPUs, NCCL on GPUs).
        ``None`` (default) turns it on when the environment says ``WORLD_SIZE > 1``. Each global
        batch of ``batch_size`` rows is split across the ranks and the per-rank gradients of the
        summed loss are all-reduced with SUM: the update equals one process's on the whole batch
        (:mod:`pyromv.training.distributed`). Rank 0 alone writes checkpoints; they do not
        depend on the number of processes (resume with any).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    val_fraction: float = 0.1
    patience: int = 10
    min_delta: float = 0.0
    grad_clip: float = 0.0
    kl_warmup_epochs: float = 0.0
    seed: int = 0
    validate_pyro: bool = False
    progress: bool = True
    divergence_threshold: float = DEFAULT_DIVERGENCE_THRESHOLD
    num_workers: int = 0
    distributed: bool | None = None


class Trainer:
    """Fit a :class:`~pyromv.models.MultimodalVAE` with a torch optimiser on an objective's
    ``differentiable_loss``.

    Each epoch ends with a validation pass (the negative ELBO per row, beta = 1), a divergence
    test (``config.divergence_threshold``), early-stopping bookkeeping and, with ``checkpoint_dir``,
    an atomic checkpoint ``checkpoint_dir/last`` (model, optimiser, RNG states, epoch, history;
    the one it replaces is kept as ``last.previous``) plus ``checkpoint_dir/best`` (the model
    with the best validation loss, never replaced by one with a worse loss). ``fit(resume=True)``
    continues from ``last`` exactly where it stopped: the same run interrupted and resumed gives
    the same weights as one uninterrupted. Checkpoints are verified when read (checksums
    recorded at write time, the safetensors header); a corrupt ``last`` is skipped for
    ``last.previous`` with a :class:`~pyromv.training.checkpoint.CheckpointWarning`, and
    :class:`~pyromv.training.checkpoint.CorruptCheckpointError` names the files when no intact
    checkpoint is left.

    A model trained in stages (``model.stages()``, :class:`~pyromv.training.stages.Stage`: TELBO,
    JNF) runs them in order: each stage trains its own parameters (the others frozen) on its own
    objective with a fresh optimiser, validates and stops early on its own validation loss, and
    the next stage starts from the stage's best weights (when checkpoints are written). The
    checkpoint records the stage, so a run killed mid-stage or at a switch resumes exactly.

    Parameters
    ----------
    model : MultimodalVAE
    loss : pyro.infer.ELBO, optional
        The objective (default ``model.default_loss()``); single-stage models only.
    optimizer : torch.optim.Optimizer, optional
        Default Adam on the stage's parameters with ``config.lr`` (:func:`default_optimizer`:
        the fused kernel where torch has one); single-stage models only.
    config : TrainerConfig, optional
    checkpoint_dir : path, optional
    callbacks : sequence of callables
        Called as ``callback(trainer, record)`` after each epoch with the epoch's metrics; a
        callback with an ``on_step`` method is also called as ``callback.on_step(trainer, loss)``
        after each optimisation step with the step's loss per row (the trackers of
        :mod:`pyromv.training.loggers` are such callbacks).
    """

    def __init__(
        self,
        model: MultimodalVAE,
        loss: pyro.infer.ELBO | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        config: TrainerConfig | None = None,
        checkpoint_dir: str | Path | None = None,
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = (),
    ) -> None:
        self.model = model
        self.config = config if config is not None else TrainerConfig()
        self.stages: list[Stage] = list(model.stages())
        if len(self.stages) > 1 and (loss is not None or optimizer is not None):
            raise ValueError(
                f"{type(model).__name__} trains in stages {[s.name for s in self.stages]}, each with its "
                "own objective and optimiser: do not pass loss= or optimizer="
            )
        if loss is not None:
            self.stages[0] = dataclasses.replace(self.stages[0], loss=loss)
        for stage in self.stages:
            stage.validate(model)
        threshold = self.config.divergence_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError("TrainerConfig.divergence_threshold must be a number >= 0 (0 turns the divergence "
                             f"test off), got {threshold!r}")
        self._given_optimizer = optimizer
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.callbacks = list(callbacks)
        self.eval_loss = model.evaluation_loss()
        self.generator = torch.Generator()
        self.epoch = 0
        self.step = 0
        self.stage_index = 0
        self.stage_start = 0  # the epoch at which the current stage began
        self.best_val = math.inf
        self.stale_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.stopped_early = False  # the current stage stopped early
        self.optimizer = optimizer or self._stage_optimizer()
        auxiliary = self._auxiliary_parameters()
        self.auxiliary_optimizer = default_optimizer(auxiliary, self.config.lr) if auxiliary else None
        self._best_known = False  # checkpoint_dir/best belongs to this run
        self._last_good: Path | None = None  # the verified or freshly written training checkpoint of this run
        self._best_floor: tuple[int, float] | None = None  # (stage, validation loss) of checkpoint_dir/best
        self._steps_per_epoch = 1
        self._warmup_steps = 0
        self._dist: tuple[int, int] | None = None  # (rank, world size) while training distributed

    @property
    def stage(self) -> Stage:
        """The stage being trained."""
        return self.stages[self.stage_index]

    @property
    def loss(self) -> pyro.infer.ELBO:
        """The current stage's objective."""
        return self.stage.loss

    def _stage_optimizer(self) -> torch.optim.Optimizer:
        if self._given_optimizer is not None:
            return self._given_optimizer
        auxiliary = {id(p) for p in self._auxiliary_parameters()}  # trained by their own optimiser
        return default_optimizer([p for p in self.stage.parameters(self.model) if id(p) not in auxiliary],
                                 self.config.lr)

    def _auxiliary_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the model trains with a second optimiser on ``model.auxiliary_loss(batch)``
        (``model.auxiliary_parameters()``: an adversarial model's discriminator); none for most."""
        get = getattr(self.model, "auxiliary_parameters", None)
        return list(get()) if callable(get) else []

    def _auxiliary_step(self, batch) -> None:
        """After the main step: one step of the auxiliary optimiser on ``model.auxiliary_loss(batch)``
        (gradients clipped as the main ones; left cleared so they never reach the main step's norm)."""
        if self.auxiliary_optimizer is None:
            return
        loss = self.model.auxiliary_loss(batch)
        self._check_finite(loss, "the auxiliary loss")
        self.auxiliary_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self._auxiliary_parameters()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self._check_finite(_grad_norm(params), "the auxiliary gradient norm")
        self.auxiliary_optimizer.step()
        self.auxiliary_optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, dataset: MultimodalDataset, batch_size: int | None = None) -> float:
        """Mean negative ELBO per row of ``dataset`` (``model.evaluation_loss()``: beta = 1,
        analytic KL where it exists, the stratified ELBO for mixture guides)."""
        dataset.check_against(self.model.modalities)
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        model, guide = self.model.evaluation_model(), self.model.evaluation_guide()
        for batch in dataset.batches(batch_size or self.config.batch_size):
            total += float(self.eval_loss.differentiable_loss(model, guide, batch))
        self.model.train(was_training)
        return total / len(dataset)

    def _validation_loss(self) -> pyro.infer.ELBO:
        """The objective the current stage validates on (named in the progress bar)."""
        return self.eval_loss if self.stage.validation is None else self.stage.validation[0]

    @torch.no_grad()
    def _validate(self, dataset: MultimodalDataset) -> float:
        """Mean validation loss per row of the current stage (single-stage models: :meth:`evaluate`)."""
        if self._dist is not None:
            return self._validate_distributed(dataset)
        if self.stage.validation is None:
            return self.evaluate(dataset)
        loss, model, guide = self.stage.validation
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        for batch in dataset.batches(self.config.batch_size):
            total += float(loss.differentiable_loss(model, guide, batch))
        self.model.train(was_training)
        return total / len(dataset)

    # ------------------------------------------------------------------ checkpoints
    @property
    def last_checkpoint(self) -> Path | None:
        """Folder of the latest checkpoint (None without a checkpoint directory)."""
        return None if self.checkpoint_dir is None else self.checkpoint_dir / "last"

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "stage": self.stage_index,
            "stage_start": self.stage_start,
            "best_val": self.best_val,
            "stale_epochs": self.stale_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "optimizer": self.optimizer.state_dict(),
            **({"auxiliary_optimizer": self.auxiliary_optimizer.state_dict()} if self.auxiliary_optimizer else {}),
            "rng": rng_state(self.generator),
            "trainer_config": asdict(self.config),
        }

    @property
    def best_checkpoint(self) -> Path | None:
        """Folder of the best-on-validation checkpoint (None without a checkpoint directory)."""
        return None if self.checkpoint_dir is None else self.checkpoint_dir / "best"

    def _resume(self) -> bool:
        if self.checkpoint_dir is None:
            return False
        checkpoint = load_checkpoint(self.checkpoint_dir / "last", require_state=True)  # verified, with fallback
        if checkpoint is None:
            return False
        found = self._last_good = checkpoint.path
        if checkpoint.description != json.loads(json.dumps(self.model.describe())):
            raise ValueError(
                f"the checkpoint in {found} was written by a different model (model, config or "
                "modalities differ); use a new checkpoint_dir or build the same model"
            )
        self.model.load_state_dict(checkpoint.weights)
        state = checkpoint.state
        self.stage_index, self.stage_start = state.get("stage", 0), state.get("stage_start", 0)
        if not 0 <= self.stage_index < len(self.stages):
            raise ValueError(f"the checkpoint in {found} is at stage {self.stage_index}; "
                             f"{type(self.model).__name__} has {len(self.stages)}")
        self.optimizer = self._stage_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        if self.auxiliary_optimizer is not None and "auxiliary_optimizer" in state:
            self.auxiliary_optimizer.load_state_dict(state["auxiliary_optimizer"])
        set_rng_state(state["rng"], self.generator)
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_val, self.stale_epochs = state["best_val"], state["stale_epochs"]
        self.history, self.stopped_early = list(state["history"]), state["stopped_early"]
        best = self.best_checkpoint
        self._best_known = checkpoint_exists(best)
        info = (read_manifest(best) or {}).get("info") or {}
        if isinstance(info.get("stage"), int) and isinstance(info.get("val_loss"), (int, float)):
            self._best_floor = (info["stage"], float(info["val_loss"]))
        return True

    def _load_best(self, when: str) -> None:
        """Load ``checkpoint_dir/best`` (verified) into the model; warn and keep the current
        weights if it is corrupt."""
        if self.checkpoint_dir is None or not self._best_known:
            return
        try:
            best = load_checkpoint(self.best_checkpoint, require_state=False)
        except CorruptCheckpointError as err:
            warnings.warn(f"{err}; {when} keeps the current weights", CheckpointWarning, stacklevel=3)
            return
        if best is not None:
            self.model.load_state_dict(best.weights)

    def _may_replace_best(self, val_loss: float) -> bool:
        """``best`` is replaced only by a lower validation loss of the same stage (a later stage
        has its own validation loss and starts a new best)."""
        return self._best_floor is None or self._best_floor[0] != self.stage_index or val_loss < self._best_floor[1]

    # ------------------------------------------------------------------ training
    def _warm(self, epoch: int) -> bool:
        """KL warm-up was over for all of ``epoch`` (1-based)."""
        return (epoch - 1) * self._steps_per_epoch >= self._warmup_steps

    def _jump(self, record: dict[str, Any], threshold: float) -> tuple[str, float, float, int] | None:
        """(which loss, its value, the recent median, epochs looked at) when ``record``'s loss is
        above :func:`divergence_ceiling` of the earlier epochs of its stage; else None."""
        key = "val_loss" if "val_loss" in record else "train_loss"
        if key == "train_loss" and not self._warm(record["epoch"]):
            return None  # the loss rises on purpose while the KL weight does
        earlier = [r[key] for r in self.history[: record["epoch"] - 1]
                   if r.get("stage") == record.get("stage") and key in r
                   and (key == "val_loss" or self._warm(r["epoch"]))]
        found = divergence_ceiling(earlier, threshold)
        if found is None or not record[key] > found[1]:
            return None
        return key.replace("_", " ").replace("val ", "validation "), record[key], found[0], min(
            len(earlier), DIVERGENCE_WINDOW)

    def _checkpoint_note(self) -> str:
        """Which checkpoint to go back to (for error messages); '' when this run wrote none."""
        found = self._last_good
        if found is None or not found.is_dir():
            return ""
        epoch = ((read_manifest(found) or {}).get("info") or {}).get("epoch")
        at = f" (epoch {epoch})" if epoch is not None else ""
        jump = None
        if isinstance(epoch, int) and 1 <= epoch <= len(self.history):
            jump = self._jump(self.history[epoch - 1], self.config.divergence_threshold or DEFAULT_DIVERGENCE_THRESHOLD)
        if jump is None:
            return f"; the last good checkpoint is {found}{at}"
        what, value, median, _ = jump
        best = self.best_checkpoint
        best_epoch = ((read_manifest(best) or {}).get("info") or {}).get("epoch")
        best_note = (f"; {best} holds the best validation loss" + (f" (epoch {best_epoch})" if best_epoch else "")
                     if best.exists() else "")
        return (f"; the last checkpoint {found}{at} is not a good one, it may already be diverged: its {what} "
                f"{value:.4g} was far above the recent median {median:.4g}{best_note}")

    def _check_divergence(self, record: dict[str, Any]) -> None:
        threshold = self.config.divergence_threshold
        if not threshold:
            return
        jump = self._jump(record, threshold)
        if jump is None:
            return
        what, value, median, n = jump
        note = self._checkpoint_note()
        kept = f" {self.last_checkpoint} was not overwritten{note}." if note else ""
        clip = (f"gradient clipping is on (grad_clip={self.config.grad_clip:g}): lower it too"
                if self.config.grad_clip > 0 else
                "gradient clipping is off: TrainerConfig.grad_clip caps the gradient norm of every step")
        raise DivergenceError(
            f"training diverged at epoch {record['epoch']}, step {self.step}: the {what} {value:.4g} is far above "
            f"its recent history (median {median:.4g} over the last {n} epochs; the limit is the median + "
            f"{threshold:g} robust standard deviations).{kept} Lower the learning rate; {clip}. "
            "To turn this test off, set divergence_threshold=0."
        )

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        if not bool(torch.isfinite(value)):
            where = self._checkpoint_note()
            raise NonFiniteLossError(
                f"{what} is {float(value.detach())} at epoch {self.epoch + 1}, step {self.step}{where}. "
                "Lower the learning rate, enable grad_clip, or check the data for extreme values."
            )

    def _train_epoch(self, train: MultimodalDataset, warmup: KLWarmup) -> float:
        """One epoch; mean training loss per row. Distributed, each rank takes its shard of every
        global batch, and the gradients (and the loss) are summed over the ranks before the
        step, so every rank takes the step one process would take on the whole batch."""
        self.model.train()
        total = 0.0
        stage = self.stage
        step_hooks = [c.on_step for c in self.callbacks if callable(getattr(c, "on_step", None))]
        distributed = self._dist is not None
        if distributed:
            if self.auxiliary_optimizer is not None:
                raise NotImplementedError(f"{type(self.model).__name__} trains an auxiliary optimiser; "
                                          "distributed training does not support it yet")
            torch.manual_seed(ddp.epoch_seed(self.config.seed, self.epoch, self._dist[0]))  # this rank's noise
            params = [p for p in self.model.parameters() if p.requires_grad]
            step_hooks = step_hooks if self.is_main_process else []
        for i, batch in enumerate(self._epoch_batches(train, shard=distributed)):
            if hasattr(stage.loss, "kl_anneal"):
                stage.loss.kl_anneal = warmup.factor(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            if batch is None:  # an empty shard of a short last batch: contributes nothing
                loss = torch.zeros(())
            else:
                loss = stage.loss.differentiable_loss(stage.model, stage.guide, batch)
                if not distributed:
                    self._check_finite(loss, "the training loss")
                loss.backward()
            if distributed:
                loss = ddp.allreduce_gradients(params, loss)  # the global batch's summed loss and gradient
                self._check_finite(loss, "the training loss")  # on every rank alike: no rank is left waiting
            if self.config.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            else:
                norm = _grad_norm(self.model.parameters())
            self._check_finite(norm, "the gradient norm")
            self.optimizer.step()
            self._auxiliary_step(batch)
            self.step += 1
            value = float(loss.detach())
            total += value
            rows = min(self.config.batch_size, len(train) - i * self.config.batch_size)  # the (global) batch
            for on_step in step_hooks:  # e.g. a RunLogger (pyromv.training.loggers): the step's loss per row
                on_step(self, value / rows)
        return total / len(train)

    # ------------------------------------------------------------------ batches, workers, ranks
    def _epoch_batches(self, train: MultimodalDataset, shard: bool = False):
        """The epoch's shuffled batches: by tensor indexing (``num_workers=0``, single process:
        :meth:`MultimodalDataset.batches`) or through a DataLoader with worker processes; with
        ``shard``, this rank's part of each global batch (``None`` where the part is empty).
        Every path draws the permutation once from ``self.generator``: the same batches."""
        cfg = self.config
        if not shard and cfg.num_workers == 0:
            yield from train.batches(cfg.batch_size, shuffle=True, generator=self.generator)
            return
        order = ddp.epoch_order(len(train), cfg.batch_size, self.generator)
        if shard:
            rank, world = self._dist
            order = [ddp.shard(idx, rank, world) for idx in order]
        if cfg.num_workers == 0:
            for idx in order:
                yield train.batch(idx) if len(idx) else None
            return
        loader = torch.utils.data.DataLoader(
            _BatchFetcher(train), sampler=order, batch_size=None, collate_fn=_no_collate,
            num_workers=cfg.num_workers, prefetch_factor=2,
            # the workers' seeds from a generator of their own: drawing them from torch's global RNG
            # would shift the model's reparameterised draws away from those of num_workers=0
            generator=torch.Generator().manual_seed(ddp.epoch_seed(cfg.seed, self.epoch, -1)),
        )
        yield from loader

    @torch.no_grad()
    def _validate_distributed(self, dataset: MultimodalDataset) -> float:
        """Mean validation loss per row: each rank sums the loss of a contiguous part of the rows."""
        rank, world = self._dist
        loss, model, guide = self.stage.validation or (
            self.eval_loss, self.model.evaluation_model(), self.model.evaluation_guide())
        was_training = self.model.training
        self.model.eval()
        part = ddp.shard(torch.arange(len(dataset)), rank, world)
        total = 0.0
        for idx in part.split(self.config.batch_size):
            total += float(loss.differentiable_loss(model, guide, dataset.batch(idx)))
        self.model.train(was_training)
        return ddp.all_sum([total])[0] / len(dataset)

    @property
    def is_main_process(self) -> bool:
        """Rank 0 of a distributed run, or the only process: the one that writes and reports."""
        return self._dist is None or self._dist[0] == 0

    def _start_distributed(self) -> None:
        """Join the process group (when configured) and give every rank rank 0's weights."""
        if not ddp.requested(self.config.distributed):
            self._dist = None
            return
        self._dist = ddp.init()
        ddp.broadcast_module(self.model)

    def fit(
        self, train: MultimodalDataset, val: MultimodalDataset | None = None, resume: bool = True,
    ) -> list[dict[str, Any]]:
        """Train; returns the history (one record of metrics per epoch)."""
        cfg = self.config
        for data in (train, val) if val is not None else (train,):
            data.check_against(self.model.modalities)  # values vs the model's likelihoods
        if val is None and cfg.val_fraction > 0:
            train, val = train.holdout(cfg.val_fraction, seed=cfg.seed)
        if not (resume and self._resume()):
            self._best_known, self._best_floor = False, None  # a best/ already there is another run's
            self._last_good = None
            torch.manual_seed(cfg.seed)
            self.generator.manual_seed(cfg.seed)
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        warmup = KLWarmup(steps=int(round(cfg.kl_warmup_epochs * steps_per_epoch)))
        self._steps_per_epoch, self._warmup_steps = steps_per_epoch, warmup.steps
        self._start_distributed()
        bar = tqdm(total=cfg.epochs, initial=self.epoch, desc="training", unit="epoch",
                   disable=not cfg.progress or not self.is_main_process, dynamic_ncols=True)
        try:
            with pyro.validation_enabled(cfg.validate_pyro):
                while self._stage_running():
                    start = time.perf_counter()
                    with frozen_except(self.model, self.stage):
                        train_loss = self._train_epoch(train, warmup)
                    record: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": train_loss}
                    if len(self.stages) > 1:
                        record["stage"] = self.stage.name
                    if val is not None:
                        record["val_loss"] = self._validate(val)
                        self._check_finite(torch.tensor(record["val_loss"]), "the validation loss")
                    record["seconds"] = time.perf_counter() - start
                    self._check_divergence(record)  # before anything of the epoch is recorded or written
                    self._end_epoch(record)
                    bar.update(1)
                    bar.set_postfix_str(progress_text(record, self.loss, self._validation_loss()))
        finally:
            bar.close()
        self._load_best("the trained model")
        return self.history

    def _stage_running(self) -> bool:
        """Is there an epoch to train? Moves on to the next stage when the current one is over
        (its epochs done or stopped early), starting from the stage's best weights."""
        while True:
            budget = self.stage.resolve_epochs(self.config.epochs, self.stage_start)
            if self.epoch < self.config.epochs and not self.stopped_early and self.epoch - self.stage_start < budget:
                return True
            if self.stage_index + 1 >= len(self.stages) or self.epoch >= self.config.epochs:
                return False
            self._load_best(f"stage {self.stages[self.stage_index + 1].name!r}")
            self.stage_index += 1
            self.stage_start = self.epoch
            self.best_val, self.stale_epochs, self.stopped_early = math.inf, 0, False
            self.optimizer = self._stage_optimizer()

    def _end_epoch(self, record: dict[str, Any]) -> None:
        self.epoch += 1
        improved = False
        if "val_loss" in record:
            improved = record["val_loss"] < self.best_val - self.config.min_delta
            if improved:
                self.best_val, self.stale_epochs = record["val_loss"], 0
            else:
                self.stale_epochs += 1
                if self.config.patience and self.stale_epochs >= self.config.patience:
                    self.stopped_early = True
        record["improved"] = improved
        self.history.append(record)
        if self.checkpoint_dir is not None:  # distributed: rank 0 writes, the others wait at a barrier
            if improved and self._may_replace_best(record["val_loss"]):
                info = {"epoch": self.epoch, "stage": self.stage_index, "val_loss": record["val_loss"]}
                if self.is_main_process:
                    write_checkpoint(self.best_checkpoint, self.model, info=info)
                self._best_known, self._best_floor = True, (self.stage_index, record["val_loss"])
            if self.is_main_process:
                self._last_good = write_checkpoint(self.last_checkpoint, self.model, self._state(),
                                                   keep_previous=True,
                                                   info={"epoch": self.epoch, "stage": self.stage_index})
            if self._dist is not None:
                ddp.barrier()
                self._last_good = self.last_checkpoint
        for callback in self.callbacks if self.is_main_process else ():
            callback(self, record)
