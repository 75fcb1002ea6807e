"""MHVAE: a multimodal hierarchical VAE with a product of experts at every level (Dorent et al. 2023)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..distributions.fusion import ProductOfExperts
from ..infer import StratifiedELBO
from ..nn.layers import GaussianHead, mlp
from ..nn.registry import build_decoder, build_encoder
from .base import MultimodalVAE
from .config import ModelConfig
from .registry import register_model

_MAX_SAMPLED_MODALITIES = 52  # subsets drawn as integers through a float64 uniform


@dataclass
class MHVAEConfig(ModelConfig):
    """Options of :class:`MHVAE`.

    Attributes
    ----------
    latent_dim : int
        Size of the top latent ``z_L`` (what :meth:`MHVAE.encode` returns).
    num_levels : int
        ``L``, the number of latent levels ``z_L, ..., z_1`` (the paper: 3 for 2-D slices).
        ``L = 1`` is a flat PoE model trained on every subset (MoPoE's stratified objective with
        the prior expert).
    level_dims : list of int, optional
        Sizes of ``z_{L-1}, ..., z_1`` in top-down order (default: ``latent_dim`` each).
    hidden_dim : int
        Width of the bottom-up, top-down, prior and posterior blocks (small MLPs standing in
        for the paper's convolutional blocks).
    feature_dim : int
        Output size of each modality's registered encoder; its ``(loc, log scale)`` pair is the
        modality's bottom feature vector (``2 * feature_dim``).
    shared_posterior_blocks : bool
        One posterior block per level for every modality, fed with the modality's own
        features (the official code's ``qz`` blocks; default) or one block per modality.
    max_subsets : int, optional
        Cap on the subsets averaged per step. While ``2^M - 1 <= max_subsets`` every non-empty
        subset is used (the paper, ``M = 2``); above it each row draws ``max_subsets`` subsets
        uniformly, with replacement, among the non-empty subsets of what it observes (an
        unbiased estimate of the same average). ``None``: never cap.
    analytic_kl : bool
        Closed-form KL at every level given the parent's sample (default, as MultiVae) or the
        official code's Monte Carlo ``log q(z_l) - log p(z_l | z_{l+1})``.
    """

    num_levels: int = 3
    level_dims: list[int] | None = None
    hidden_dim: int = 64
    feature_dim: int = 32
    shared_posterior_blocks: bool = True
    max_subsets: int | None = 15
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.num_levels < 1:
            raise ValueError(f"MHVAE num_levels must be >= 1, got {self.num_levels}")
        if self.level_dims is not None:
            if len(self.level_dims) != self.num_levels - 1:
                raise ValueError(f"MHVAE level_dims must give the sizes of the {self.num_levels - 1} levels below "
                                 f"the top (z_{{L-1}} .. z_1), got {list(self.level_dims)}")
            if any(int(d) < 1 for d in self.level_dims):
                raise ValueError(f"MHVAE level_dims must be positive, got {list(self.level_dims)}")
        if self.hidden_dim < 1 or self.feature_dim < 1:
            raise ValueError(f"MHVAE hidden_dim and feature_dim must be >= 1, got {self.hidden_dim}, "
                             f"{self.feature_dim}")
        if self.max_subsets is not None and self.max_subsets < 1:
            raise ValueError(f"MHVAE max_subsets must be >= 1 or None, got {self.max_subsets}")


def sample_subsets(observed: Tensor, num: int) -> Tensor:
    """``num`` subsets per row, each uniform over the non-empty subsets of the row's observed
    modalities: ``(num, B, M)`` membership from ``observed`` ``(B, M)``.

    One ``float64`` uniform per (draw, row): ``k = 1 + floor(u (2^n - 1))`` is uniform on
    ``1 .. 2^n - 1`` (``n`` observed modalities) and its bits pick the observed modalities. A row
    observing nothing gets the empty subset.
    """
    n = observed.sum(-1)  # (B,)
    count = torch.pow(2.0, n.to(torch.float64)) - 1
    u = torch.rand(num, observed.shape[0], dtype=torch.float64, device=observed.device)
    k = torch.minimum((u * count).floor() + 1, count.clamp(min=1)).long()  # (num, B)
    rank = (observed.long().cumsum(-1) - 1).clamp(min=0)  # position among the observed
    bits = (k.unsqueeze(-1) >> rank.unsqueeze(0)) & 1
    return observed.unsqueeze(0) & bits.bool()


@register_model("mhvae")
class MHVAE(MultimodalVAE):
    r"""Multi-modal hierarchical VAE (Dorent, Haouchine, Kogl, Joutard, Juvekar, Torio, Golby,
    Ourselin, Frisken, Vercauteren, Kapur & Wells, "Unified Brain MR-Ultrasound Synthesis using
    Multi-Modal Hierarchical Representations", MICCAI 2023).

    Generative model ``p(z_L) prod_{l<L} p(z_l | z_{l+1}) prod_m p(x_m | z_1)``; for a subset
    ``s`` of the modalities the posterior is, at every level, a product of experts of the prior
    block and the modalities' posterior blocks,

    .. math:: q_s(z_l | X_s, z_{l+1}) \propto p(z_l | z_{l+1}) \prod_{m \in s} q_m(z_l | x_m, z_{l+1}),
              \quad q_s(z_L | X_s) \propto p(z_L) \prod_{m \in s} q_m(z_L | x_m),

    and the objective averages the subsets' ELBOs, each reconstructing every observed modality:

    .. math:: \mathcal L = \frac{1}{|\mathcal S_O|} \sum_{s \in \mathcal S_O}
              \mathbb E_{q_s}\Big[\log p(X_O | z_1) - \sum_l \mathrm{KL}\big(q_s(z_l | \cdot)
              \,\|\, p(z_l | z_{l+1})\big)\Big]

    ``S_O``: the non-empty subsets inside the row's observed set ``O``, all under one vectorised
    ``pyro.plate("experts", S)`` (:class:`~pyromv.infer.StratifiedELBO`, weights ``1/|S_O|``);
    above ``max_subsets`` each row draws that many subsets uniformly from ``S_O``. Each KL is
    closed-form given the parent's reparameterised sample (``analytic_kl``), so the gradient is
    unbiased for ``L``. Sites: ``z`` (the top level ``z_L``), ``z_{l}`` for ``l = L-1 .. 1``.
    """

    config_class = MHVAEConfig
    max_plate_nesting = 2

    def __init__(self, modalities, config: MHVAEConfig | None = None) -> None:
        super().__init__(modalities, config)
        c = self.config
        if getattr(c, "private_latent_dim", 0):
            raise ValueError("MHVAE has no private latents")
        L, H, M = c.num_levels, c.hidden_dim, len(self.modalities)
        self.level_sizes = [c.latent_dim, *([c.latent_dim] * (L - 1) if c.level_dims is None else c.level_dims)]
        self.level_sizes = [int(d) for d in self.level_sizes]  # z_L, z_{L-1}, ..., z_1
        feature_sizes = [2 * c.feature_dim] + [H] * (L - 1)  # d^1 .. d^L
        self.bottom_up = nn.ModuleDict()
        self.top_experts = nn.ModuleDict()
        for m in self.modalities:  # replace the base's networks: features out, z_1 in
            head = self.likelihoods[m.name]
            self.encoders[m.name] = build_encoder(m.encoder.name, m.encoder.kwargs, head.input_shape, c.feature_dim,
                                                  mask_aware=m.mask_aware == "on")
            self.decoders[m.name] = build_decoder(m.decoder.name, m.decoder.kwargs, self.level_sizes[-1],
                                                  head.param_shape)
            self.bottom_up[m.name] = nn.ModuleList(mlp([feature_sizes[i], H], "relu", final_activation=True)
                                                   for i in range(L - 1))
            self.top_experts[m.name] = GaussianHead(feature_sizes[-1], c.latent_dim)
        # top-down step i = 0 .. L-2 produces level l = L-1-i from z_{l+1}
        self.top_down = nn.ModuleList(mlp([self.level_sizes[i], H, H], "relu", final_activation=True)
                                      for i in range(L - 1))
        self.prior_blocks = nn.ModuleList(GaussianHead(H, self.level_sizes[i + 1]) for i in range(L - 1))

        def posterior_blocks() -> nn.ModuleList:
            return nn.ModuleList(
                nn.Sequential(mlp([H + feature_sizes[L - 2 - i], H], "relu", final_activation=True),
                              GaussianHead(H, self.level_sizes[i + 1]))
                for i in range(L - 1))

        if c.shared_posterior_blocks:
            self.posterior_blocks = posterior_blocks()
        else:
            self.posterior_blocks = nn.ModuleDict({m.name: posterior_blocks() for m in self.modalities})
        self.enumerated = c.max_subsets is None or 2**M - 1 <= c.max_subsets
        if self.enumerated:
            subsets = [s for r in range(1, M + 1) for s in itertools.combinations(range(M), r)]
            membership = torch.tensor([[j in s for j in range(M)] for s in subsets], dtype=torch.bool)
            self.register_buffer("membership", membership, persistent=False)  # (S, M)
        elif M > _MAX_SAMPLED_MODALITIES:
            raise ValueError(f"MHVAE samples subsets of at most {_MAX_SAMPLED_MODALITIES} modalities, got {M}")

    # ------------------------------------------------------------------ structure
    @property
    def num_levels(self) -> int:
        """Number of latent levels of the hierarchy (``config.num_levels``)."""
        return self.config.num_levels

    def _site(self, i: int) -> str:
        """The site of top-down step ``i`` (level ``L - 1 - i``)."""
        return f"z_{self.num_levels - 1 - i}"

    def _observed(self, batch: MultimodalBatch) -> Tensor:
        return torch.stack([batch.row_mask(m) for m in self.names], -1)  # (B, M)

    def level_features(self, batch: MultimodalBatch) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        """Bottom-up pass of every modality: the features ``d^l`` ``(B, M, F_l)`` of levels
        ``1 .. L-1`` (bottom first), the top experts ``q_m(z_L | x_m)`` (``loc``, ``scale``
        ``(B, M, D)``) and the observed mask ``(B, M)``."""
        feats: list[list[Tensor]] = [[] for _ in range(self.num_levels - 1)]
        locs, scales = [], []
        for m in self.names:
            loc, scale = self.apply_encoder(self.encoders[m], m, batch)
            d = torch.cat([loc, scale.log()], -1)
            for i, block in enumerate(self.bottom_up[m]):
                feats[i].append(d)
                d = block(d)
            loc, scale = self.top_experts[m](d)
            locs.append(loc)
            scales.append(scale)
        return [torch.stack(f, -2) for f in feats], torch.stack(locs, -2), torch.stack(scales, -2), \
            self._observed(batch)

    def top_posterior(self, loc: Tensor, scale: Tensor, member: Tensor) -> ProductOfExperts:
        """``q(z_L | X_s) ∝ p(z_L) prod_{m in s} q_m(z_L | x_m)``; ``member`` ``(*P, M)``."""
        shape = member.shape + loc.shape[-1:]
        return ProductOfExperts(loc.expand(shape), scale.expand(shape), member, self.prior_loc, self.prior_scale,
                                include_prior=True)

    def conditional_prior(self, i: int, z: Tensor) -> tuple[Tensor, dist.Independent]:
        """Top-down features ``h`` and ``p(z_l | z_{l+1})`` of step ``i`` for the parent ``z``."""
        h = self.top_down[i](z)
        loc, scale = self.prior_blocks[i](h)
        return h, dist.Normal(loc, scale).to_event(1)

    def level_posterior(self, i: int, h: Tensor, prior: dist.Independent, feats: list[Tensor],
                        member: Tensor) -> ProductOfExperts:
        """``q(z_l | X_s, z_{l+1}) ∝ p(z_l | z_{l+1}) prod_{m in s} q_m(z_l | x_m, z_{l+1})`` of step
        ``i``: each expert reads the top-down features ``h`` ``(*P, H)`` and the modality's own
        features of the level."""
        f = feats[self.num_levels - 2 - i]  # (B, M, F)
        M = f.shape[-2]
        inputs = torch.cat([h.unsqueeze(-2).expand(h.shape[:-1] + (M, h.shape[-1])),
                            f.expand(h.shape[:-1] + f.shape[-2:])], -1)
        if self.config.shared_posterior_blocks:
            loc, scale = self.posterior_blocks[i](inputs)
        else:
            outs = [self.posterior_blocks[m][i](inputs[..., j, :]) for j, m in enumerate(self.names)]
            loc, scale = torch.stack([o[0] for o in outs], -2), torch.stack([o[1] for o in outs], -2)
        base = prior.base_dist
        return ProductOfExperts(loc, scale, member.expand(loc.shape[:-1]), base.loc, base.scale, include_prior=True)

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """``q(z_L | X_obs)``: the top level's product of the prior and the observed experts
        (the prior for a row that observes nothing)."""
        _, loc, scale, observed = self.level_features(batch)
        return self.top_posterior(loc, scale, observed)

    # ------------------------------------------------------------------ subsets
    def _active(self, observed: Tensor) -> Tensor:
        """``(S, B)``: the plate's entries that count in each row."""
        if self.enumerated:
            return (self.membership.unsqueeze(1) <= observed.unsqueeze(0)).all(-1)
        return observed.any(-1).expand(self.config.max_subsets, observed.shape[0])

    def subset_slots(self, observed: Tensor) -> tuple[Tensor, Tensor]:
        """The subsets of the plate, ``member`` ``(S, B, M)``, and the active entries ``(S, B)``.

        Enumerated: every non-empty subset (active where inside the row's observed set; the
        others keep their members so every product is finite, and are masked). Capped:
        ``max_subsets`` draws per row from :func:`sample_subsets` (active where the row observes
        anything)."""
        if self.enumerated:
            member = self.membership.unsqueeze(1).expand(-1, observed.shape[0], -1)
        else:
            member = sample_subsets(observed, self.config.max_subsets)
        return member, self._active(observed)

    # ------------------------------------------------------------------ model / guide
    def _prior_path(self) -> Tensor:
        """Sites ``z``, ``z_{L-1}``, ..., ``z_1`` from the generative model; returns ``z_1``."""
        z = pyro.sample("z", self.prior())
        for i in range(self.num_levels - 1):
            z = pyro.sample(self._site(i), self.conditional_prior(i, z)[1])
        return z

    def _posterior_path(self, feats: list[Tensor], loc: Tensor, scale: Tensor, member: Tensor) -> None:
        """Sites ``z``, ``z_{L-1}``, ..., ``z_1`` from the subsets' products of experts."""
        z = pyro.sample("z", self.top_posterior(loc, scale, member))
        for i in range(self.num_levels - 1):
            h, prior = self.conditional_prior(i, z)
            z = pyro.sample(self._site(i), self.level_posterior(i, h, prior, feats, member))

    def model(self, batch: MultimodalBatch) -> None:
        """The hierarchy once per subset entry of ``pyro.plate("experts", S)``; each scores
        every observed modality from ``z_1`` where the entry is active."""
        self._check_batch(batch)
        self._announce_params()
        active = self._active(self._observed(batch))
        S, B = active.shape
        with pyro.plate("experts", S, dim=-2), pyro.plate("batch", B, dim=-1), poutine.mask(mask=active):
            self.observe(batch, self._prior_path(), None, scored=active)

    def guide(self, batch: MultimodalBatch) -> None:
        """Every level from the products of experts of each subset entry (drawn first when
        capped)."""
        self._check_batch(batch)
        self._announce_params()
        feats, loc, scale, observed = self.level_features(batch)
        member, active = self.subset_slots(observed)
        S, B = active.shape
        with pyro.plate("experts", S, dim=-2), pyro.plate("batch", B, dim=-1), poutine.mask(mask=active):
            self._posterior_path(feats, loc, scale, member)

    def iw_model(self, batch: MultimodalBatch) -> None:
        """The hierarchy with one draw per row (no subset plate)."""
        self._check_batch(batch)
        self._announce_params()
        with pyro.plate("batch", batch.batch_size):
            self.observe(batch, self._prior_path(), None)

    def iw_guide(self, batch: MultimodalBatch) -> None:
        """The proposal ``q(z_L, ..., z_1 | X_obs)``: at every level the product of the prior
        block and the experts of the modalities the batch observes (only those: an unobserved
        modality's expert has zero precision, so its data never reaches the draw)."""
        self._check_batch(batch)
        self._announce_params()
        feats, loc, scale, observed = self.level_features(batch)
        with pyro.plate("batch", batch.batch_size):
            self._posterior_path(feats, loc, scale, observed)

    # ------------------------------------------------------------------ objectives
    def default_loss(self) -> pyro.infer.ELBO:
        c = self.config
        return StratifiedELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl,
                              max_plate_nesting=2)

    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The subset-averaged ELBO with ``beta = 1`` and closed-form KLs: a bound on
        ``log p(X_O)`` (an average of bounds), estimated without bias when subsets are drawn."""
        return StratifiedELBO(analytic_kl=True, max_plate_nesting=2)

    # ------------------------------------------------------------------ generation
    def _descend(self, z: Tensor, sample: bool, batch_parts: tuple | None = None) -> Tensor:
        """From ``z_L`` down to ``z_1``: through ``q(z_l | X_obs, z_{l+1})`` when ``batch_parts``
        (features, observed) are given, else through ``p(z_l | z_{l+1})``; draws or means."""
        for i in range(self.num_levels - 1):
            h, prior = self.conditional_prior(i, z)
            fn = prior if batch_parts is None else self.level_posterior(i, h, prior, *batch_parts)
            z = fn.sample() if sample else fn.mean
        return z

    def _decode_bottom(self, z1: Tensor, targets: Sequence[str] | None) -> dict[str, Tensor]:
        names = self.names if targets is None else list(targets)
        for t in names:
            self.modality(t)
        return {t: self.likelihoods[t].mean(self.decoders[t](z1)) for t in names}

    def _point(self, z: Tensor, targets: Sequence[str] | None, private=None) -> dict[str, Tensor]:
        """A point decode of top codes ``z`` (``z_L``): the means of ``p(z_l | z_{l+1})`` down to
        ``z_1``, then the means of ``p(x_m | z_1)`` (deterministic, as a sampler's decode of a
        code expects)."""
        return self._decode_bottom(self._descend(z, sample=False), targets)

    def decode(self, z: Tensor, private=None) -> dict[str, dist.TorchDistribution]:
        """``p(x_m | z_1)`` for top codes ``z`` (``z_L``), lower levels drawn from
        ``p(z_l | z_{l+1})``: a draw from it is a draw from ``p(x_m | z_L)``."""
        z1 = self._descend(z, sample=True)
        return {m: self.likelihood(m, z1) for m in self.names}

    @torch.no_grad()
    def generate(self, n: int, targets: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Ancestral generation: ``z_L ~ p(z_L)``, ``z_l ~ p(z_l | z_{l+1})``, then the means of
        ``p(x_m | z_1)``."""
        z1 = self._descend(self.prior().sample((n,)), sample=True)
        return self._decode_bottom(z1, targets)

    @torch.no_grad()
    def _through_posterior(self, batch: MultimodalBatch, targets, sample: bool) -> dict[str, Tensor]:
        self._check_batch(batch)
        feats, loc, scale, observed = self.level_features(batch)
        q = self.top_posterior(loc, scale, observed)
        z = q.sample() if sample else q.mean
        return self._decode_bottom(self._descend(z, sample, (feats, observed)), targets)

    def reconstruct(self, batch: MultimodalBatch, sample: bool = False) -> dict[str, Tensor]:
        """Decode each row through ``q(z_L, ..., z_1 | X_obs)`` (means of every level, or draws)."""
        return self._through_posterior(batch, None, sample)

    def cross_generate(self, batch: MultimodalBatch, targets: Sequence[str] | None = None,
                       sample: bool = False) -> dict[str, Tensor]:
        """Generate ``targets`` top-down through the posterior of what each row observes."""
        return self._through_posterior(batch, targets, sample)

