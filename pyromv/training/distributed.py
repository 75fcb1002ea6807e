"""Data-parallel training with ``torch.distributed``: sharded batches and summed gradients.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``),
every process runs the same :class:`~pyromv.training.Trainer` on the same data set:

- **The same global batches** as one process: each epoch's permutation comes from the trainer's
  generator (seeded by ``TrainerConfig.seed``, stored in the checkpoint), exactly the draw of
  :meth:`MultimodalDataset.batches`; global batch ``b`` (``batch_size`` rows) is split into
  ``WORLD_SIZE`` contiguous shards (:func:`shard`, ``torch.tensor_split``: an uneven or short
  last batch gives some ranks one row fewer, or none). Rows carry their masks and labels.
- **Exactly the update of one process on the concatenated batch**: our objectives return the
  *sum* over rows (Pyro's convention), and the trainer steps on that sum without dividing by the
  batch size. The gradient of the global batch is therefore the *sum* of the per-rank gradients,
  ``grad sum_{i in B} l_i = sum_r grad sum_{i in B_r} l_i``: :func:`allreduce_gradients`
  all-reduces with ``SUM`` (no division by the world size, unlike DDP's average), then every
  rank clips and steps identically. A parameter that no rank used keeps ``grad = None``, as in
  one process (Adam then skips it), where DDP would hand it zeros.
- **Why not ``DistributedDataParallel``**: DDP averages (the loss would need a factor
  ``WORLD_SIZE``), needs ``find_unused_parameters`` for the encoders of modalities a shard does
  not observe and then gives them zero gradients (Adam's moments move: not the one-process
  update), needs every rank to run a forward pass (a rank with an empty shard of a short last
  batch has none), and fixes the trainable parameters at wrapping time (staged models change
  them). The parameters live in the model (a ``PyroModule``), not in Pyro's global param store,
  so reducing ``model.parameters()`` covers every one of them; one flat all-reduce per step.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta

import torch
from torch import Tensor

#: environment variables that torchrun sets
WORLD_SIZE_ENV = "WORLD_SIZE"


def is_available() -> bool:
    return torch.distributed.is_available()


def requested(option: bool | None) -> bool:
    """Distributed training on? ``option`` when given, else auto: ``WORLD_SIZE > 1`` in the
    environment (set by ``torchrun``) or a process group already initialised."""
    if option is not None:
        return bool(option)
    if is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    try:
        return int(os.environ.get(WORLD_SIZE_ENV, "1")) > 1
    except ValueError:
        return False


def default_backend() -> str:
    """``nccl`` where CUDA is available, ``gloo`` (CPU) otherwise."""
    return "nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() else "gloo"


def init(backend: str = "", timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join (or reuse) the default process group; returns ``(rank, world_size)``.

    Uses ``env://`` initialisation (``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``). Under NCCL each process uses ``cuda:LOCAL_RANK``.
    """
    if not is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    dist = torch.distributed
    if not dist.is_initialized():
        for var in ("RANK", WORLD_SIZE_ENV, "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(
                    f"distributed training needs the environment variable {var} (launch with torchrun "
                    "--nproc_per_node=N -m pyromv.cli.train ..., or set trainer.distributed=false)"
                )
        backend = backend or default_backend()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    """The device collectives run on: the current CUDA device under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous part of a global batch's row indices (``torch.tensor_split``:
    sizes differ by at most one; a batch shorter than ``world_size`` leaves some ranks empty)."""
    return torch.tensor_split(indices, world_size)[rank]


def epoch_order(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """The global batches of one shuffled epoch: the same draw from ``generator`` as
    :meth:`~pyromv.data.MultimodalDataset.batches` with ``shuffle=True``, so the same batches."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of rank ``rank``'s draws (reparameterised noise) in ``epoch``: independent across
    ranks and epochs, and a function of the epoch alone, so a resumed run draws the same."""
    digest = hashlib.sha256(f"pyromv-ddp:{seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def allreduce_gradients(parameters: Sequence[torch.nn.Parameter], loss: Tensor) -> Tensor:
    """Sum every parameter's gradient and ``loss`` over the ranks, in one flat all-reduce.

    A gradient that is ``None`` on a rank counts as zeros; a parameter whose gradient is
    ``None`` on every rank stays ``None`` (untouched by the optimiser, as in one process).
    Returns the summed loss (the global batch's loss).
    """
    dev = device()
    flat = [loss.detach().reshape(1).to(dev, torch.float64)]
    flags = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float64, device=dev)
    for p in parameters:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        flat.append(g.detach().reshape(-1).to(dev, torch.float64))
    flat.append(flags)
    buffer = torch.cat(flat)
    torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
    total, offset = buffer[0], 1
    has = buffer[-len(parameters):] if parameters else buffer[:0]
    for p, used in zip(parameters, has):
        n = p.numel()
        if float(used) > 0:
            p.grad = buffer[offset:offset + n].view_as(p).to(p.device, p.dtype)
        offset += n
    return total.to(loss.dtype if loss.is_floating_point() else torch.get_default_dtype())


def all_sum(values: Iterable[float]) -> list[float]:
    """Sum a few numbers over the ranks (float64)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (the start of training)."""
    dev = device()
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            buf = t.detach().to(dev)
            torch.distributed.broadcast(buf, src)
            t.copy_(buf.to(t.device))


def barrier() -> None:
    torch.distributed.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (pickled)."""
    box = [obj]
    torch.distributed.broadcast_object_list(box, src)
    return box[0]
