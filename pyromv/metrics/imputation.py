r"""Imputation of missing entries and missing modalities by self-normalised importance sampling.

The imputation of Mattei & Frellsen's MIWAE (ICML 2019), for any multimodal VAE: with
``z_k ~ q(z | X_obs)`` (the model's proposal, :meth:`~pyromv.models.MultimodalVAE.iw_guide`) and
weights ``w_k ∝ p(X_obs, z_k) / q(z_k | X_obs)`` (:func:`~pyromv.metrics.importance_weights`,
normalised over the ``K`` draws of a row to ``w~_k``),

.. math:: \mathbb E[x_{miss} | X_{obs}] \approx \sum_k \tilde w_k\, \mathbb E[x_{miss} | z_k],
          \qquad \mathrm{Var}[x_{miss} | X_{obs}] \approx \sum_k \tilde w_k
          \left(\mathrm{Var}[x | z_k] + \mathbb E[x | z_k]^2\right) - \mathbb E[x_{miss} | X_{obs}]^2

(both consistent as ``K`` grows), and multiple imputations draw ``z`` by sampling-importance-
resampling (``P(z_k) = w~_k``) and then ``x_miss ~ p(x | z)`` (or its mean). The same formulas
fill entries missing inside an observed modality (``x_m`` given the rest of ``x_m`` and the
other modalities) and whole missing modalities (cross-modal prediction). Private latents
``w_m`` come from ``q(w_m | x_m)`` where the row observes part of ``m`` and from the prior
``p(w_m)`` where it misses all of ``m`` (never from data the proposal does not see).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.trace_messenger import TraceMessenger
from torch import Tensor
from tqdm.auto import tqdm

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..distributions.tabular import MixedColumns
from ..infer.importance import PARTICLE_PLATE
from ..models.base import MultimodalVAE
from ._util import evaluating, model_device, seeded
from .likelihood import importance_weights, pareto_khat

__all__ = ["Imputation", "impute", "imputation_error"]


@dataclass(frozen=True)
class Imputation:
    """What :func:`impute` returns.

    Attributes
    ----------
    dataset : MultimodalDataset
        The data with every missing entry of the imputed modalities filled by the single
        imputation ``E[x_miss | X_obs]`` (for categorical entries the most probable code under
        the weighted predictive probabilities); observed entries are the input's, bit for bit,
        and the imputed modalities' masks say "observed" everywhere.
    missing : dict of str to Tensor
        ``(N, *shape)`` bool: the entries that were imputed.
    std : dict of str to Tensor
        ``(N, *shape)``: the standard deviation of the predictive ``p(x_miss | X_obs)`` of each
        imputed entry (0 where observed; NaN for categorical entries, which have no std).
    imputations : dict of str to Tensor or None
        ``(num_imputations, N, *shape)`` multiple imputations (observed entries as given).
    ess : Tensor
        ``(N,)`` effective sample size ``1 / sum_k w~_k^2`` of each row's weights.
    khat : Tensor
        ``(N,)`` PSIS k-hat of each row's weights (NaN when ``K < 25``; see
        :func:`~pyromv.metrics.pareto_khat`).
    num_samples : int
        ``K``.
    """

    dataset: MultimodalDataset
    missing: dict[str, Tensor]
    std: dict[str, Tensor]
    imputations: dict[str, Tensor] | None
    ess: Tensor
    khat: Tensor
    num_samples: int

    @property
    def data(self) -> dict[str, Tensor]:
        """The imputed arrays, ``name -> (N, *shape)``."""
        return self.dataset.data


# ---------------------------------------------------------------------------- moments of p(x | z)
class _Moments:
    """Per-entry first/second moments (continuous entries) and probabilities (categorical
    entries) of a likelihood, so that weighted sums of them give the predictive's."""

    def __init__(self, fn: dist.TorchDistribution, shape: tuple[int, ...]) -> None:
        base = fn
        while isinstance(base, (dist.Independent, dist.MaskedDistribution)):
            base = base.base_dist
        self.base, self.shape = base, shape
        self.kind = ("tabular" if isinstance(base, MixedColumns)
                     else "categorical" if isinstance(base, torch.distributions.Categorical) else "continuous")

    def _full(self, t: Tensor, K: int, B: int, extra: tuple[int, ...] = ()) -> Tensor:
        # the plates' shape is (K, [1, ...,] B): flatten it to (K, B)
        return t.reshape((K, B) + self.shape + extra)

    def parts(self, K: int, B: int) -> dict[str, Tensor]:
        """``mean`` and ``second`` moments ``(K, B, *shape)`` of the continuous entries and
        ``probs`` ``(K, B, *shape, C)`` / ``(K, B, sum k)`` of the categorical ones."""
        d = self.base
        if self.kind == "categorical":
            probs = d.probs.expand(d.batch_shape + d.probs.shape[-1:])
            return {"probs": self._full(probs, K, B, probs.shape[-1:])}
        if self.kind == "tabular":
            loc = d.loc.reshape(K, B, -1)
            pieces = [torch.softmax(p, -1) for p in d._pieces(d.logits)]
            out = {"mean": loc, "second": d.scale.reshape(K, B, -1) ** 2 + loc**2}
            if pieces:
                out["probs"] = torch.cat(pieces, -1).reshape(K, B, -1)
            return out
        mean = d.mean.expand(d.batch_shape)
        try:
            var = d.variance.expand(d.batch_shape)
        except NotImplementedError:
            var = torch.full_like(mean, math.nan)
        mean = self._full(mean, K, B)
        return {"mean": mean, "second": self._full(var, K, B) + mean**2}

    def point(self, acc: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The single imputation and the predictive std from the weighted sums ``acc``."""
        if self.kind == "categorical":
            probs = acc["probs"]
            return probs.argmax(-1), torch.full(probs.shape[:-1], math.nan, dtype=probs.dtype)
        mean = acc["mean"]
        std = (acc["second"] - mean**2).clamp_min(0).sqrt()
        if self.kind == "tabular":
            d = self.base
            cats = [p.argmax(-1).to(mean.dtype) for p in _split(acc.get("probs"), d)]
            nan = [torch.full(mean.shape[:-1], math.nan, dtype=mean.dtype) for _ in cats]
            return d._assemble(mean, cats), d._assemble(std, nan)
        return mean, std

    def draw(self, K: int, B: int, sample: bool) -> Tensor:
        """One value ``(K, B, *shape)`` per particle: a draw of ``p(x | z_k)`` or its point estimate."""
        d = self.base
        if sample:
            x = d.sample()
        elif self.kind == "categorical":
            x = d.probs.argmax(-1)
        elif self.kind == "tabular":
            x = d.mode
        else:
            x = d.mean
        return x.expand(d.batch_shape).reshape((K, B) + self.shape)


def _split(probs: Tensor | None, d: MixedColumns) -> list[Tensor]:
    if probs is None:
        return []
    sizes = [d.cardinalities[j] for j in d.categorical]
    return list(torch.split(probs, sizes, dim=-1))


# ---------------------------------------------------------------------------- one chunk of rows
def _capture(model: MultimodalVAE, store: dict) -> object:
    """The proposal ``model.iw_guide``, recording its trace in ``store["trace"]``."""

    def guide(batch: MultimodalBatch) -> None:
        with TraceMessenger() as tracer:
            model.iw_guide(batch)
        store["trace"] = tracer.trace

    return guide


def _missingness_draws(trace, name: str, batch: MultimodalBatch, K: int, B: int,
                       shape: tuple[int, ...]) -> tuple[Tensor, Tensor] | None:
    """For a modality with a missingness model: ``(rows, values)``, the rows whose mask the
    model scored ``(1, B, 1, ...)`` and the complete values ``(K, B, *shape)`` the weights were
    computed at (observed entries, and the draws of the missing ones); None otherwise."""
    site = trace.nodes.get(f"xfill_{name}")
    if site is None:
        return None
    value = site["value"]
    value = value.expand(value.shape[:1] + value.shape[1:-len(shape) - 1] + (B,) + shape).reshape((K, B) + shape)
    seen = batch.row_mask(name).reshape((1, B) + (1,) * len(shape))
    return seen, value


def _observed_everywhere(batch: MultimodalBatch, targets: Sequence[str]) -> MultimodalBatch:
    """``batch`` with every target observed in every row (so the model decodes all of them)."""
    mask = dict(batch.obs_mask)
    for m in targets:
        mask[m] = torch.ones(batch.batch_size, dtype=torch.bool, device=mask[m].device)
    return MultimodalBatch(batch.data, mask, batch.labels)


def _impute_chunk(
    model: MultimodalVAE, batch: MultimodalBatch, targets: Sequence[str], K: int, particle_chunk: int,
    num_imputations: int, sample: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor] | None, Tensor, Tensor]:
    B = batch.batch_size
    full = _observed_everywhere(batch, targets)
    particle_dim = -model.max_plate_nesting - 1
    acc: dict[str, dict[str, Tensor]] = {}
    moments: dict[str, _Moments] = {}
    draws: dict[str, Tensor] = {}
    shift = torch.full((B,), -math.inf, dtype=torch.float64)  # running max of the log-weights
    total = torch.zeros(B, dtype=torch.float64)  # sum_k exp(lw_k - shift)
    stored = []
    for start in range(0, K, particle_chunk):
        k = min(particle_chunk, K - start)
        store: dict = {}
        record: dict = {}
        lw, _ = importance_weights(model, batch, batch, k, guide=_capture(model, store), record=record)
        plate = pyro.plate(PARTICLE_PLATE, k, dim=particle_dim)
        trace = poutine.trace(poutine.replay(plate(model.iw_model), trace=store["trace"])).get_trace(full)
        lw = lw.detach().to("cpu", torch.float64)
        stored.append(lw)
        new_shift = torch.maximum(shift, lw.max(0).values)
        rescale = torch.exp(shift - new_shift)  # 0 on the first chunk
        w = torch.exp(lw - new_shift)  # (k, B)
        chunk_total = w.sum(0)
        # streaming resampling: each imputation keeps its draw or takes one of this chunk's,
        # with probability (this chunk's weight) / (the weight so far)
        replace = chunk_total / (total * rescale + chunk_total)
        total = total * rescale + chunk_total
        shift = new_shift
        if num_imputations:
            pick = torch.distributions.Categorical(probs=w.T).sample((num_imputations,))  # (I, B)
            take = torch.rand(num_imputations, B, dtype=torch.float64) < replace
        for m in targets:
            site = trace.nodes[f"x_{m}"]
            shape = tuple(model.modality(m).shape)
            mom = moments[m] = _Moments(site["fn"], shape)
            parts = mom.parts(k, B)
            drawn = _missingness_draws(record["model"], m, batch, k, B, shape)
            if drawn is not None:  # not-MIWAE: the draws the weights scored, not E[x | z_k]
                seen, v = drawn
                parts = {"mean": torch.where(seen, v, parts["mean"]),
                         "second": torch.where(seen, v**2, parts["second"])}
            for name, value in parts.items():
                value = value.to("cpu", torch.float64)
                ww = w.reshape((k, B) + (1,) * (value.dim() - 2))
                s = (ww * value).sum(0)
                prev = acc.setdefault(m, {}).get(name)
                r = rescale.reshape((B,) + (1,) * (s.dim() - 1))
                acc[m][name] = s if prev is None else prev * r + s
            if num_imputations:
                x = mom.draw(k, B, sample)
                if drawn is not None:
                    x = torch.where(drawn[0], drawn[1], x)
                x = x.cpu()
                chosen = x[pick, torch.arange(B)]  # (I, B, *shape)
                t = take.reshape(take.shape + (1,) * len(shape))
                draws[m] = chosen if m not in draws else torch.where(t, chosen, draws[m])
    means, stds = {}, {}
    for m in targets:
        norm = {name: v / total.reshape((B,) + (1,) * (v.dim() - 1)) for name, v in acc[m].items()}
        means[m], stds[m] = moments[m].point(norm)
    log_w = torch.cat(stored)
    wn = torch.softmax(log_w, 0)
    ess = 1.0 / (wn**2).sum(0)
    return means, stds, (draws if num_imputations else None), ess, log_w


# ---------------------------------------------------------------------------- the entry point
def _entry_mask(dataset: MultimodalDataset, name: str) -> Tensor:
    """``(N, *shape)`` observed entries of modality ``name``."""
    mask, x = dataset.obs_mask[name], dataset.data[name]
    return mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim())).expand(x.shape)


def impute(
    model: MultimodalVAE,
    dataset: MultimodalDataset,
    num_samples: int = 1000,
    *,
    targets: Sequence[str] | str | None = None,
    num_imputations: int = 0,
    sample: bool = True,
    batch_size: int = 64,
    particle_chunk: int = 100,
    seed: int | None = None,
    progress: bool = False,
) -> Imputation:
    r"""Fill the missing entries of ``dataset`` by self-normalised importance sampling (MIWAE).

    Single imputation ``E[x_miss | X_obs] ~= sum_k w~_k E[x_miss | z_k]`` with
    ``z_k ~ q(z | X_obs)``, ``w_k ∝ p(X_obs, z_k) / q(z_k | X_obs)``; the predictive standard
    deviation of every imputed entry from the same weights; optionally ``num_imputations``
    multiple imputations by sampling-importance-resampling of ``z`` (Mattei & Frellsen 2019).
    Entries missing inside an observed modality and whole missing modalities are filled alike.

    For a modality with a missingness model (``Modality.missingness``, not-MIWAE: Ipsen et al.
    2021) the weights include ``p(s | x_obs, x_miss,k)`` at a draw ``x_miss,k ~ p(x_miss | z_k)``,
    and the imputation weighs those draws, ``sum_k w~_k x_miss,k``, which estimates
    ``E[x_miss | X_obs, s]`` (its multiple imputations are the resampled draws, whatever
    ``sample``); in rows missing that modality entirely it is filled as above.

    Parameters
    ----------
    model : MultimodalVAE
        A trained model (the imputation is as good as its decoder and its proposal; the MIWAE
        bound, ``IWAE`` over the observed entries, trains both for this use).
    dataset : MultimodalDataset
        Partially observed rows, with the model's modalities.
    num_samples : int
        ``K`` importance samples per row.
    targets : modality name(s), optional
        The modalities to fill (default: every modality the model generates). A conditional
        model (CVAE) cannot fill the modalities it only conditions on (``ValueError``).
    num_imputations : int
        Multiple imputations to draw (0: none).
    sample : bool
        Multiple imputations draw ``x_miss ~ p(x | z)`` (proper imputations); ``False``: the
        mean of ``p(x | z)`` at the resampled ``z`` (the latent uncertainty only).
    batch_size, particle_chunk : int
        Rows per chunk and particles per pass: memory is set by
        ``batch_size * particle_chunk * entries``, not by ``K``.
    seed : int, optional
        Seed of every draw (the global RNG state is restored afterwards).
    progress : bool
        Show a progress bar over row chunks.

    Returns
    -------
    Imputation

    References
    ----------
    .. [1] P.-A. Mattei and J. Frellsen, "MIWAE: Deep Generative Modelling and Imputation of
       Incomplete Data Sets", ICML 2019.
    .. [2] N. B. Ipsen, P.-A. Mattei and J. Frellsen, "not-MIWAE: Deep generative modelling with
       missing not at random data", ICLR 2021.
    """
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE, got {type(model).__name__}")
    if not isinstance(dataset, MultimodalDataset):
        raise TypeError(f"impute takes a MultimodalDataset, got {type(dataset).__name__}")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size),
                        ("particle_chunk", particle_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(num_imputations, bool) or not isinstance(num_imputations, int) or num_imputations < 0:
        raise ValueError(f"num_imputations must be an int >= 0, got {num_imputations!r}")
    if set(dataset.names) != set(model.names):
        raise ValueError(f"the data has modalities {dataset.names}; the model expects {model.names}")
    dataset.check_against(model.modalities)
    if isinstance(targets, str):
        targets = [targets]
    for m in targets or ():
        if m not in model.names:
            raise ValueError(f"unknown modality {m!r} in targets: the model has {model.names}")
    targets = model.check_targets(targets)

    n = len(dataset)
    missing = {m: ~_entry_mask(dataset, m) for m in targets}
    fill = [m for m in targets if bool(missing[m].any())]
    data = dict(dataset.data)
    std = {m: torch.zeros(dataset.data[m].shape, dtype=torch.get_default_dtype()) for m in targets}
    ess = torch.full((n,), float(num_samples), dtype=torch.float64)
    khat = torch.full((n,), math.nan, dtype=torch.float64)
    imputations = ({m: dataset.data[m].unsqueeze(0).repeat((num_imputations,) + (1,) * dataset.data[m].dim())
                    for m in targets} if num_imputations else None)
    rows = torch.zeros(n, dtype=torch.bool)
    for m in fill:
        rows |= missing[m].flatten(1).any(1)
    todo = rows.nonzero().flatten()
    if fill:
        device = model_device(model)
        means: dict[str, list[Tensor]] = {m: [] for m in fill}
        stds: dict[str, list[Tensor]] = {m: [] for m in fill}
        draws: dict[str, list[Tensor]] = {m: [] for m in fill}
        esses, log_ws = [], []
        full = dataset.batch()
        starts = range(0, len(todo), batch_size)
        with evaluating(model), seeded(seed, device):
            for start in tqdm(starts, desc="imputation", disable=not progress, leave=False):
                chunk = full.index(todo[start:start + batch_size]).to(device)
                mu, sd, dr, e, lw = _impute_chunk(
                    model, chunk, fill, num_samples, particle_chunk, num_imputations, sample
                )
                for m in fill:
                    means[m].append(mu[m])
                    stds[m].append(sd[m])
                    if dr is not None:
                        draws[m].append(dr[m])
                esses.append(e)
                log_ws.append(lw)
        ess[todo] = torch.cat(esses)
        khat[todo] = torch.cat([torch.from_numpy(pareto_khat(lw)) for lw in log_ws])
        for m in fill:
            x, miss = dataset.data[m], missing[m]
            mu = torch.cat(means[m]).to(x.dtype)
            new = x.clone()
            new[todo] = torch.where(miss[todo], mu, x[todo])
            data[m] = new
            s = std[m]
            s[todo] = torch.where(miss[todo], torch.cat(stds[m]).to(s.dtype), s[todo])
            if imputations is not None:
                d = torch.cat(draws[m], 1).to(x.dtype)
                imp = imputations[m]
                imp[:, todo] = torch.where(miss[todo], d, x[todo])
    mask = dict(dataset.obs_mask)
    for m in targets:
        mask[m] = torch.ones_like(dataset.obs_mask[m])
    out = MultimodalDataset._from_clean(dataset.modalities, data, mask, dataset.labels)
    return Imputation(out, missing, std, imputations, ess, khat, num_samples)


def imputation_error(
    imputed: Tensor, truth: Tensor, entries: Tensor,
) -> dict[str, float]:
    """RMSE and MAE of ``imputed`` against ``truth`` on the boolean ``entries`` (e.g. held out).

    ``sqrt(mean_j (x^_j - x_j)^2)`` and ``mean_j |x^_j - x_j|`` over the selected entries.
    """
    entries = entries.bool()
    if entries.shape != truth.shape or imputed.shape != truth.shape:
        raise ValueError(f"imputed {tuple(imputed.shape)}, truth {tuple(truth.shape)} and entries "
                         f"{tuple(entries.shape)} must have one shape")
    if not bool(entries.any()):
        raise ValueError("no entry selected to score")
    diff = (imputed.double() - truth.double())[entries]
    return {"rmse": float(diff.pow(2).mean().sqrt()), "mae": float(diff.abs().mean()),
            "entries": int(entries.sum())}
