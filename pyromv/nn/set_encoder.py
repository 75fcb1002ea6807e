"""A permutation-invariant encoder of the observed entries (the partial VAE of EDDI)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import gaussian_head, mlp
from .masked import masked_values
from .registry import register_encoder


@register_encoder("set")
class SetEncoder(nn.Module):
    r"""Point-net-plus encoder of a partially observed vector (Ma et al., "EDDI", ICML 2019).

    Entry ``j`` of the (flattened) input is one element of a set, described by its value and a
    learned feature embedding ``e_j``; the observed elements are embedded, summed, and mapped to
    the Gaussian's parameters:

    .. math:: c = \sum_j m_j\, h([x_j e_j,\ e_j]), \qquad (\mu, \sigma) = \mathrm{head}(g(c))

    The sum over observed entries makes ``q(z | x_O)`` invariant to their order and defined
    for every observation pattern; a missing entry contributes nothing (not a zero value).
    With a linear ``h`` (``feature_hidden_dims=()``), ``g`` the identity (``hidden_dims=()``)
    and ``head="natural"``, ``c`` and hence the natural parameters are linear in ``(x * m, m)``
    with a free coefficient per entry: the exact posterior expert of a linear-Gaussian modality
    under any feature mask (latent of dimension 1 or axis-aligned loadings).

    ``forward(x, mask=None)``: ``x`` ``(*batch, *input_shape)``, ``mask`` the boolean observed
    entries (broadcastable to ``x``; ``None``: all observed). Cost ``O(B d F)`` for ``d``
    entries and ``F`` hidden units of ``h``: meant for tabular modalities (tens to hundreds of
    entries), usable on small images.

    Parameters
    ----------
    input_shape, latent_dim
        Set by the model.
    embed_dim : int
        Size of each feature embedding ``e_j``.
    feature_hidden_dims : sequence of int
        Hidden layers of ``h``.
    feature_dim : int
        Output width of ``h`` (the pooled code ``c``).
    hidden_dims : sequence of int
        Hidden layers of ``g`` (after pooling).
    activation : str
        Activation of ``h`` and ``g``.
    head : str
        ``"loc_scale"`` or ``"natural"`` (:class:`~pyromv.nn.layers.NaturalHead`), options in
        ``head_kwargs``.
    """

    #: the forward takes the feature mask as its second argument
    takes_mask = True

    def __init__(
        self, input_shape: Sequence[int], latent_dim: int, embed_dim: int = 16,
        feature_hidden_dims: Sequence[int] = (32,), feature_dim: int = 32,
        hidden_dims: Sequence[int] = (64,), activation: str = "relu", head: str = "loc_scale",
        head_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        d = math.prod(self.input_shape)
        self.embedding = nn.Parameter(torch.randn(d, embed_dim))
        self.feature_net = mlp([2 * embed_dim, *feature_hidden_dims, feature_dim], activation)
        sizes = [feature_dim, *hidden_dims]
        self.body = mlp(sizes, activation, final_activation=True)
        self.head = gaussian_head(head, sizes[-1], latent_dim, **dict(head_kwargs or {}))

    def pooled(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The masked sum ``c`` ``(*batch, feature_dim)``."""
        values, observed = masked_values(x, mask)
        lead = x.shape[: x.dim() - len(self.input_shape)]
        values, observed = values.reshape(lead + (-1,)), observed.reshape(lead + (-1,))
        first, rest = self.feature_net[0], self.feature_net[1:]
        E = self.embedding.shape[1]
        # the first layer on [x_j e_j, e_j], factorised: x_j (A e_j) + (B e_j + bias)
        slope = self.embedding @ first.weight[:, :E].T  # (d, F)
        offset = self.embedding @ first.weight[:, E:].T + first.bias  # (d, F)
        h = rest(values.unsqueeze(-1) * slope + offset)  # (*batch, d, F')
        return (observed.unsqueeze(-1) * h).sum(-2)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.head(self.body(self.pooled(x, mask)))
