r"""Mixed continuous/categorical columns: a distribution with one log-probability per column and
the ``"tabular"`` likelihood head built on it.

A tabular row ``x = (x_1, ..., x_C)`` mixes continuous columns (``cardinality 0``) and
categorical columns coded ``0 .. k_j - 1`` (``cardinality k_j >= 2``). Given ``z`` the columns
are independent:

.. math:: p(x | z) = \prod_{j\,\text{cont.}} \mathcal N(x_j; \mu_j(z), \sigma_j^2)
          \prod_{j\,\text{cat.}} \mathrm{softmax}(\ell_j(z))_{x_j}

so a missing entry is marginalised exactly by masking its column's term (feature-level
missingness, ``Distribution.mask`` before ``to_event``). This is the heterogeneous
likelihood of HI-VAE (Nazabal, Olmos, Ghahramani & Valera, Pattern Recognition 2020), with
Gaussian and categorical columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn

from .likelihoods import LikelihoodHead, outside_codes, register_likelihood


def check_cardinalities(cardinalities: Sequence[int], where: str = "tabular") -> tuple[int, ...]:
    """Validate per-column cardinalities: ``0`` (continuous) or ``>= 2`` (categorical)."""
    try:
        cards = tuple(int(k) for k in cardinalities)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where}: cardinalities must be a sequence of ints") from err
    if not cards:
        raise ValueError(f"{where}: at least one column is needed")
    bad = [k for k in cards if k != 0 and k < 2]
    if bad:
        raise ValueError(
            f"{where}: a column's cardinality is 0 (continuous) or >= 2 (categorical), got {bad[0]}"
        )
    return cards


class MixedColumns(TorchDistribution):
    """Independent columns, Normal where continuous and Categorical where categorical.

    Batch shape ``(*batch, C)``, event shape ``()``: :meth:`log_prob` gives one value per
    column, so ``mask(feature_mask).to_event(1)`` drops missing entries of a row.
    Categorical values are the codes ``0 .. k - 1`` held in the same float tensor as the
    continuous values.

    Parameters
    ----------
    cardinalities : sequence of int
        Per column: ``0`` continuous, ``k >= 2`` categorical with ``k`` categories.
    loc, scale : Tensor
        ``(*batch, n_cont)`` means and standard deviations of the continuous columns, in
        column order (``scale`` broadcasts).
    logits : Tensor
        ``(*batch, sum k)`` logits of the categorical columns, concatenated in column order.
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "logits": constraints.real,
    }
    support = constraints.real
    has_rsample = False

    def __init__(
        self,
        cardinalities: Sequence[int],
        loc: Tensor,
        scale: Tensor,
        logits: Tensor,
        validate_args: bool | None = None,
    ) -> None:
        self.cardinalities = check_cardinalities(cardinalities)
        self.continuous = [j for j, k in enumerate(self.cardinalities) if k == 0]
        self.categorical = [j for j, k in enumerate(self.cardinalities) if k > 0]
        n_cont = len(self.continuous)
        n_logits = sum(self.cardinalities)
        if loc.shape[-1:] != (n_cont,) or logits.shape[-1:] != (n_logits,):
            raise ValueError(
                f"MixedColumns: loc needs {n_cont} trailing entries and logits {n_logits}; got "
                f"{tuple(loc.shape)} and {tuple(logits.shape)}"
            )
        batch = torch.broadcast_shapes(
            loc.shape[:-1], scale.shape[:-1] if scale.dim() else (), logits.shape[:-1]
        )
        self.loc = loc.expand(batch + (n_cont,))
        self.scale = scale.expand(batch + (n_cont,))
        self.logits = logits.expand(batch + (n_logits,))
        # position of each column in the concatenation [continuous..., categorical...]
        order = self.continuous + self.categorical
        self._inverse = torch.tensor([order.index(j) for j in range(len(order))], dtype=torch.long)
        super().__init__(batch + (len(self.cardinalities),), validate_args=validate_args)

    def _pieces(self, logits: Tensor) -> list[Tensor]:
        sizes = [self.cardinalities[j] for j in self.categorical]
        return list(torch.split(logits, sizes, dim=-1)) if sizes else []

    def _assemble(self, cont: Tensor, cats: list[Tensor]) -> Tensor:
        """``(..., n_cont)`` and one ``(...)`` tensor per categorical column -> ``(..., C)``."""
        parts = torch.cat([cont, *(c.unsqueeze(-1) for c in cats)], -1)
        return parts.index_select(-1, self._inverse.to(parts.device))

    def log_prob(self, value: Tensor) -> Tensor:
        """``(*batch, C)`` log-probabilities, one per column."""
        if self._validate_args:
            self._check_codes(value)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        value = value.expand(shape)
        lead = shape[:-1]
        loc = self.loc.expand(lead + self.loc.shape[-1:])
        scale = self.scale.expand(lead + self.scale.shape[-1:])
        cont = dist.Normal(loc, scale).log_prob(value[..., self.continuous])
        logp = [
            F.log_softmax(piece, -1)
            for piece in self._pieces(self.logits.expand(lead + self.logits.shape[-1:]))
        ]
        cats = [
            lp.gather(-1, value[..., j].long().unsqueeze(-1)).squeeze(-1)
            for lp, j in zip(logp, self.categorical)
        ]
        return self._assemble(cont, cats)

    def _check_codes(self, value: Tensor) -> None:
        for j in self.categorical:
            v = value[..., j]
            k = self.cardinalities[j]
            if bool(((v != v.round()) | (v < 0) | (v >= k)).any()):
                raise ValueError(
                    f"MixedColumns: column {j} is categorical with {k} categories; its values must "
                    f"be whole numbers in 0..{k - 1}"
                )

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            cont = dist.Normal(self.loc, self.scale).sample(sample_shape)
            cats = [
                dist.Categorical(logits=p).sample(sample_shape).to(cont.dtype)
                for p in self._pieces(self.logits)
            ]
            return self._assemble(cont, cats)

    @property
    def mode(self) -> Tensor:
        """Continuous means and the most likely category of each categorical column."""
        cats = [p.argmax(-1).to(self.loc.dtype) for p in self._pieces(self.logits)]
        return self._assemble(self.loc, cats)

    @property
    def mean(self) -> Tensor:
        """A point estimate: the mean of continuous columns, the most likely code of
        categorical ones (the mean of a code is not meaningful)."""
        return self.mode

    @property
    def variance(self) -> Tensor:
        """Variance of continuous columns; categorical columns get ``nan``."""
        nan = [
            torch.full(self.loc.shape[:-1], math.nan, dtype=self.loc.dtype, device=self.loc.device)
            for _ in self.categorical
        ]
        return self._assemble(self.scale**2, nan)

    def expand(
        self, batch_shape: torch.Size, _instance: MixedColumns | None = None
    ) -> MixedColumns:
        batch_shape = torch.Size(batch_shape)
        if batch_shape[-1:] != self.batch_shape[-1:]:
            raise ValueError(
                f"MixedColumns: cannot expand {tuple(self.batch_shape)} to {tuple(batch_shape)}"
            )
        lead = batch_shape[:-1]
        return MixedColumns(
            self.cardinalities,
            self.loc.expand(lead + self.loc.shape[-1:]),
            self.scale.expand(lead + self.scale.shape[-1:]),
            self.logits.expand(lead + self.logits.shape[-1:]),
            validate_args=False,
        )


@register_likelihood("tabular")
class TabularHead(LikelihoodHead):
    """Mixed continuous/categorical columns: the decoder outputs the continuous means and the
    categorical logits; the encoder sees continuous values and one-hot categories.

    Parameters
    ----------
    shape : tuple of int
        ``(C,)``, the number of columns.
    cardinalities : sequence of int
        Per column, ``0`` (continuous, Normal) or ``k >= 2`` (categorical).
    scale : float
        Standard deviation of the continuous columns (initial value when learned).
    learn_scale : bool
        Learn one standard deviation per continuous column (``exp(raw) + min_scale``).
    min_scale : float
        Floor of a learned standard deviation.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        cardinalities: Sequence[int],
        scale: float = 1.0,
        learn_scale: bool = True,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(shape)
        if len(self.shape) != 1:
            raise ValueError(
                f"tabular likelihood needs a 1-D modality shape (C,), got {self.shape}"
            )
        self.cardinalities = check_cardinalities(cardinalities, "tabular likelihood")
        if len(self.cardinalities) != self.shape[0]:
            raise ValueError(
                f"tabular likelihood: {len(self.cardinalities)} cardinalities for "
                f"{self.shape[0]} columns"
            )
        if not scale > 0:
            raise ValueError(f"tabular likelihood: scale must be positive, got {scale}")
        self.continuous = [j for j, k in enumerate(self.cardinalities) if k == 0]
        self.categorical = [j for j, k in enumerate(self.cardinalities) if k > 0]
        n_cont = len(self.continuous)
        self.learn_scale = bool(learn_scale)
        if self.learn_scale:
            if not scale > min_scale:
                raise ValueError(
                    f"tabular likelihood: initial scale {scale} must exceed min_scale {min_scale}"
                )
            self.min_scale = float(min_scale)
            self.raw_scale = nn.Parameter(torch.full((n_cont,), math.log(scale - min_scale)))
        else:
            self.register_buffer("fixed_scale", torch.full((n_cont,), float(scale)))

    @property
    def support(self) -> str:  # type: ignore[override]
        return "finite values in continuous columns, whole numbers 0..k-1 in a column of k categories"

    def invalid(self, x: Tensor) -> Tensor:
        """Non-finite entries anywhere; non-codes in categorical columns (one vectorised pass)."""
        cards = torch.tensor(self.cardinalities, device=x.device)
        bad = outside_codes(x, torch.where(cards > 0, cards, 1)) & (cards > 0)
        return bad | ~torch.isfinite(x) if x.is_floating_point() else bad

    @property
    def scale(self) -> Tensor:
        """Standard deviations of the continuous columns."""
        if self.learn_scale:
            return self.raw_scale.exp() + self.min_scale
        return self.fixed_scale

    @property
    def param_shape(self) -> tuple[int, ...]:
        return (len(self.continuous) + sum(self.cardinalities),)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.param_shape

    def encoder_mask(self, mask: Tensor) -> Tensor:
        """The column mask ``(*batch, C)`` on :meth:`encoder_input`'s layout: continuous columns,
        then each categorical column's mask repeated over its one-hot code."""
        parts = [mask[..., self.continuous]]
        parts += [mask[..., j : j + 1].expand(mask.shape[:-1] + (self.cardinalities[j],)) for j in self.categorical]
        return torch.cat(parts, -1)

    def encoder_input(self, x: Tensor) -> Tensor:
        dtype = torch.get_default_dtype()
        parts = [x[..., self.continuous].to(dtype)]
        parts += [
            F.one_hot(x[..., j].long(), self.cardinalities[j]).to(dtype) for j in self.categorical
        ]
        return torch.cat(parts, -1)

    def forward(self, params: Tensor) -> MixedColumns:
        n_cont = len(self.continuous)
        return MixedColumns(
            self.cardinalities, params[..., :n_cont], self.scale, params[..., n_cont:]
        )

    def mean(self, params: Tensor) -> Tensor:
        return self(params).mode
