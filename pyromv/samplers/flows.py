r"""Autoregressive normalising flows on the latent codes: MAF and IAF.

Both stack ``K`` affine autoregressive layers (:class:`pyro.distributions.transforms.AffineAutoregressive`
with a MADE network, :class:`pyro.nn.AutoRegressiveNN`) with a fixed permutation between layers
(:class:`~pyro.distributions.transforms.Permute`), over a standard normal base, followed by the
fixed standardisation ``z = mu + sigma * y`` of the codes. One layer ``f`` maps ``u`` to
``y = u * exp(s(u)) + m(u)`` where ``m_i, s_i`` depend on ``u_{<i}`` only: ``f`` takes one
network pass, its inverse takes ``D`` sequential passes. The direction decides which is cheap:

- **IAF** (Kingma et al. 2016) uses the layers from base to data: *sampling* is one pass per
  layer; the density of an external point needs the inverse, ``D`` passes per layer.
- **MAF** (Papamakarios et al. 2017) uses their inverses (``[t.inv for t in reversed(layers)]``):
  the *density* ``log r(z) = log N(f(z); 0, I) + log|det df/dz|`` is one pass per layer;
  sampling needs the inverse, ``D`` passes per layer.

Both are fitted by maximum likelihood on the codes (Adam, mini-batches, a validation split,
early stopping on the validation negative log-density, the best state restored), so training
an IAF pays the sequential inverse at every step; MAF is the usual choice for density
estimation, IAF when sampling speed matters.

Transforms cache their last ``(x, y)`` pair (``cache_size=1``): the layers' caches are cleared
before every training step and every evaluation, so no value computed with stale parameters (or
a freed graph) is ever reused.

References
----------
.. [1] G. Papamakarios, T. Pavlakou and I. Murray, "Masked Autoregressive Flow for Density
   Estimation", NeurIPS 2017.
.. [2] D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever and M. Welling,
   "Improving Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016.
.. [3] M. Germain, K. Gregor, I. Murray and H. Larochelle, "MADE: Masked Autoencoder for
   Distribution Estimation", ICML 2015.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive, AffineTransform, Permute
from pyro.nn import AutoRegressiveNN
from torch import Tensor, nn
from tqdm.auto import tqdm

from .base import LatentSampler, register_sampler

DIRECTIONS = ("maf", "iaf")
_EVAL_CHUNK = 4096


def split_codes(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Reproducible random split of ``range(n)`` into (train, validation) index tensors.

    The validation part has ``max(1, round(n * val_fraction))`` rows (none when the fraction
    is 0); both parts are sorted.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return torch.arange(n), torch.arange(0)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ValueError(f"cannot hold out {n_val} of {n} codes for validation")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _permutations(dim: int, count: int, seed: int) -> list[Tensor]:
    """Random permutations between layers (seeded); the reversal where a draw is the identity."""
    g = torch.Generator().manual_seed(seed)
    identity = torch.arange(dim)
    out = []
    for _ in range(count):
        p = torch.randperm(dim, generator=g)
        out.append(identity.flip(0) if torch.equal(p, identity) else p)
    return out


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (0: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


class AutoregressiveFlow(nn.Module):
    """``K`` affine autoregressive layers with permutations between them, a standard normal base
    and a fixed standardisation ``z = shift + spread * y`` (buffers, saved with the weights).

    :meth:`distribution` returns the flow as a :class:`pyro.distributions.TransformedDistribution`
    in the ``"iaf"`` direction (layers from base to data) or the ``"maf"`` direction (their
    inverses, in reverse order).
    """

    def __init__(
        self, dim: int, num_layers: int, hidden_dims: Sequence[int], seed: int = 0,
        log_scale_min_clip: float = -5.0, log_scale_max_clip: float = 3.0,
    ) -> None:
        super().__init__()
        self.dim = int(dim)
        self.layers = nn.ModuleList(
            AffineAutoregressive(
                AutoRegressiveNN(self.dim, list(hidden_dims), permutation=torch.arange(self.dim)),
                log_scale_min_clip=log_scale_min_clip, log_scale_max_clip=log_scale_max_clip,
            )
            for _ in range(int(num_layers))
        )
        for k, p in enumerate(_permutations(self.dim, int(num_layers) - 1, seed)):
            self.register_buffer(f"permutation_{k}", p)
        self.register_buffer("shift", torch.zeros(self.dim))
        self.register_buffer("spread", torch.ones(self.dim))

    def permutation(self, k: int) -> Tensor:
        """The fixed permutation applied after flow layer ``k``."""
        return getattr(self, f"permutation_{k}")

    def sequence(self) -> list:
        """The transforms from base to data in the IAF direction: ``[l_0, P_0, l_1, ..., l_{K-1}]``."""
        seq: list = []
        for k, layer in enumerate(self.layers):
            if k > 0:
                seq.append(Permute(self.permutation(k - 1)))
            seq.append(layer)
        return seq

    def clear_cache(self) -> None:
        """Forget the layers' cached ``(x, y)`` pairs and log-scales."""
        for layer in self.layers:
            layer._cached_x_y = (None, None)
            layer._cached_log_scale = None

    def distribution(self, direction: str) -> dist.TransformedDistribution:
        """The fitted flow as a distribution, sampled forward (``iaf``) or scored fast (``maf``)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        seq = self.sequence()
        transforms = seq if direction == "iaf" else [t.inv for t in reversed(seq)]
        transforms = transforms + [AffineTransform(self.shift, self.spread, event_dim=1)]
        base = dist.Normal(torch.zeros_like(self.shift), torch.ones_like(self.spread)).to_event(1)
        return dist.TransformedDistribution(base, transforms)


class _FlowSampler(LatentSampler):
    direction = "maf"

    def __init__(
        self,
        num_layers: int = 5,
        hidden_dims: Sequence[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 256,
        max_epochs: int = 500,
        patience: int = 20,
        min_delta: float = 0.0,
        val_fraction: float = 0.1,
        standardize: bool = True,
        seed: int = 0,
        progress: bool = True,
        num_threads: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or int(num_layers) != num_layers or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        if hidden_dims is not None:
            hidden_dims = [int(h) for h in hidden_dims]
            if not hidden_dims or any(h < 1 for h in hidden_dims):
                raise ValueError(f"hidden_dims must be positive sizes, got {hidden_dims}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if int(batch_size) < 1 or int(max_epochs) < 1:
            raise ValueError(f"batch_size and max_epochs must be >= 1, got {batch_size}, {max_epochs}")
        if int(patience) < 0:
            raise ValueError(f"patience must be >= 0 (0: never stop early), got {patience}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if int(num_threads) < 0:
            raise ValueError(f"num_threads must be >= 0 (0: keep torch's setting), got {num_threads}")
        self.num_layers = int(num_layers)
        self.hidden_dims = hidden_dims
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.val_fraction = float(val_fraction)
        self.standardize = bool(standardize)
        self.seed = int(seed)
        self.progress = bool(progress)
        self.num_threads = int(num_threads)
        self.flow: AutoregressiveFlow | None = None
        self.history: list[dict[str, Any]] = []

    def options(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "hidden_dims": self.hidden_dims,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "val_fraction": self.val_fraction,
            "standardize": self.standardize,
            "seed": self.seed,
            "progress": self.progress,
            "num_threads": self.num_threads,
        }

    def resolved_hidden_dims(self, dim: int) -> list[int]:
        """``hidden_dims``, by default two layers of ``max(64, 4 D)`` units (MADE needs >= D)."""
        hidden = self.hidden_dims if self.hidden_dims is not None else [max(64, 4 * dim)] * 2
        if min(hidden) < dim:
            raise ValueError(
                f"hidden_dims {hidden} must be at least the latent size {dim} (MADE masks)"
            )
        return list(hidden)

    def _build(self, dim: int) -> AutoregressiveFlow:
        if dim < 2:
            raise ValueError(
                f"{type(self).__name__} needs codes of dimension >= 2, got {dim}; use "
                "GaussianMixtureSampler for one-dimensional latents"
            )
        return AutoregressiveFlow(dim, self.num_layers, self.resolved_hidden_dims(dim), self.seed)

    def distribution(self) -> dist.TransformedDistribution:
        """The fitted flow as a Pyro distribution (caches cleared; event shape ``(D,)``)."""
        self._check_fitted("distribution")
        self.flow.clear_cache()
        return self.flow.distribution(self.direction)

    def _nll(self, codes: Tensor) -> Tensor:
        """Mean negative log-density of ``codes`` (chunked, no gradient)."""
        total = codes.new_zeros(())
        for start in range(0, codes.shape[0], _EVAL_CHUNK):
            self.flow.clear_cache()
            total = total - self.flow.distribution(self.direction).log_prob(
                codes[start : start + _EVAL_CHUNK]
            ).sum()
        self.flow.clear_cache()
        return total / codes.shape[0]

    def _fit_codes(self, codes: Tensor) -> None:
        device = codes.device
        codes = codes.to(torch.get_default_dtype())
        train_idx, val_idx = split_codes(codes.shape[0], self.val_fraction, self.seed)
        train, val = codes[train_idx.to(device)], codes[val_idx.to(device)]
        if train.shape[0] < 2:
            raise ValueError(f"need at least 2 training codes, got {train.shape[0]}")
        devices = [device] if device.type == "cuda" else []
        # fitting works inside a caller's torch.no_grad() too
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), _threads(self.num_threads):
            torch.manual_seed(self.seed)
            flow = self._build(codes.shape[1]).to(device)
            if self.standardize:
                flow.shift.copy_(train.mean(0))
                flow.spread.copy_(train.std(0).clamp_min(1e-6))
            self.flow = flow
            self._train(train, val if val.shape[0] else None)
        self.fit_info.update(train_rows=int(train.shape[0]), val_rows=int(val.shape[0]))

    def _train(self, train: Tensor, val: Tensor | None) -> None:
        flow = self.flow
        opt = torch.optim.Adam(flow.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        g = torch.Generator().manual_seed(self.seed)
        best_val, best_state, best_epoch, stale = math.inf, None, 0, 0
        stopped_early = False
        self.history = []
        bar = tqdm(total=self.max_epochs, desc=f"fitting {self.name}", unit="epoch",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            for epoch in range(1, self.max_epochs + 1):
                flow.train()
                order = torch.randperm(train.shape[0], generator=g).to(train.device)
                total = 0.0
                for start in range(0, train.shape[0], self.batch_size):
                    x = train[order[start : start + self.batch_size]]
                    flow.clear_cache()
                    loss = -flow.distribution(self.direction).log_prob(x).mean()
                    if not bool(torch.isfinite(loss)):
                        raise FloatingPointError(
                            f"{type(self).__name__}: the training loss is {float(loss)} at epoch "
                            f"{epoch}; lower lr or check the codes for extreme values"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * x.shape[0]
                flow.clear_cache()
                flow.eval()
                record: dict[str, Any] = {"epoch": epoch, "train_nll": total / train.shape[0]}
                if val is not None:
                    with torch.no_grad():
                        record["val_nll"] = float(self._nll(val))
                    if record["val_nll"] < best_val - self.min_delta:
                        best_val, best_epoch, stale = record["val_nll"], epoch, 0
                        best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
                    else:
                        stale += 1
                self.history.append(record)
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("nll")})
                if val is not None and self.patience and stale >= self.patience:
                    stopped_early = True
                    break
        finally:
            bar.close()
            flow.clear_cache()
        if best_state is not None:
            flow.load_state_dict(best_state)
        flow.eval()
        self.fit_info.update(
            epochs=len(self.history),
            best_epoch=best_epoch if val is not None else len(self.history),
            best_val_nll=best_val if val is not None else None,
            stopped_early=stopped_early,
        )

    def _sample(self, n: int) -> Tensor:
        self.flow.clear_cache()
        out = self.flow.distribution(self.direction).sample((n,))
        self.flow.clear_cache()
        return out

    def _log_density(self, codes: Tensor) -> Tensor:
        x = codes.to(self.flow.shift)
        out = []
        for start in range(0, x.shape[0], _EVAL_CHUNK):
            self.flow.clear_cache()
            out.append(self.flow.distribution(self.direction).log_prob(x[start : start + _EVAL_CHUNK]))
        self.flow.clear_cache()
        return torch.cat(out).to(codes.device)

    def _tensors(self) -> dict[str, Tensor]:
        return dict(self.flow.state_dict())

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        device = next(iter(tensors.values())).device
        flow = self._build(self.latent_dim).to(device)
        flow.load_state_dict(tensors, strict=True)
        flow.eval()
        self.flow = flow


@register_sampler("maf")
class MAFSampler(_FlowSampler):
    r"""Masked autoregressive flow (Papamakarios et al. 2017) on the latent codes.

    Direction: the layers map *data to base*, so the density of any code
    (:meth:`log_density`, and the maximum-likelihood fit) takes one network pass per layer;
    :meth:`sample` inverts each layer in ``D`` sequential passes. Built as
    ``[t.inv for t in reversed(layers)]`` of :class:`~pyro.distributions.transforms.AffineAutoregressive`.

    Parameters
    ----------
    num_layers : int
        Autoregressive layers ``K`` (a random, seeded permutation between consecutive layers).
    hidden_dims : sequence of int, optional
        Hidden sizes of each MADE network (default two layers of ``max(64, 4 D)``).
    lr, weight_decay : float
        Adam options.
    batch_size, max_epochs : int
    patience : int
        Stop after this many epochs without a validation improvement larger than ``min_delta``
        (0: never); the state of the best validation epoch is restored.
    val_fraction : float
        Share of the codes held out for validation (0: no validation, no early stopping).
    standardize : bool
        Model ``(z - mean) / std`` of the training codes; the affine map is the flow's last
        transform, so its Jacobian ``-sum(log std)`` is part of every density.
    seed : int
        Seeds the split, the permutations, the initialisation and the batch order (the caller's
        global RNG is left as it was).
    progress : bool
        tqdm progress bar over epochs.
    num_threads : int
        torch intra-op threads while fitting (restored afterwards; 0 keeps torch's setting).
        The networks are tiny: one thread is fastest, and on a busy machine more threads can
        make each step many times slower (measured 30x on 2 shared cores).
    """

    direction = "maf"


@register_sampler("iaf")
class IAFSampler(_FlowSampler):
    r"""Inverse autoregressive flow (Kingma et al. 2016) on the latent codes.

    Direction: the layers map *base to data*, so :meth:`sample` takes one network pass per
    layer; the density of an external code (:meth:`log_density`, and every step of the
    maximum-likelihood fit) inverts each layer in ``D`` sequential passes, so fitting is about
    ``D`` times slower than :class:`MAFSampler`'s. Options as :class:`MAFSampler`.
    """

    direction = "iaf"
