"""The command line under ``torchrun``: one output folder, rank 0 writes and reports.

``torchrun --nproc_per_node=N -m pyromv.cli.train ...`` starts ``N`` copies of ``pyromv-train``.
Each joins the process group before anything is written (``trainer.distributed``, default: on
when ``WORLD_SIZE > 1``), takes rank 0's Hydra output folder (the folders' names carry the time,
which may differ by a second between ranks) and trains its shards; rank 0 alone writes the
checkpoints, the model, the metrics, the pictures and the evaluation and prints the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..training import distributed as ddp


def is_main_process() -> bool:
    """Rank 0 of the process group, or no process group at all."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def distributed_job(cfg: Any, out: Path) -> tuple[Path, bool]:
    """Join the process group when the job is distributed; returns ``(rank 0's output folder,
    is this rank 0)``. A job that is not distributed gets ``(out, True)``."""
    option = cfg.get("trainer", {}).get("distributed", None) if hasattr(cfg, "get") else None
    if not ddp.requested(option):
        return out, True
    rank, _ = ddp.init()
    return Path(str(ddp.broadcast_object(str(out)))), rank == 0


def leave_distributed_job() -> None:
    """Wait for every rank (rank 0 evaluates after training), then leave the process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
