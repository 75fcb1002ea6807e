"""CMVAE: MMVAE+ with a cluster variable on the shared latent (Palumbo et al. 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset
from ..distributions.fusion import MixtureOfExperts
from .mmvae_plus import MMVAEPlus, MMVAEPlusConfig
from .registry import register_model


@dataclass
class CMVAEConfig(MMVAEPlusConfig):
    """Options of :class:`CMVAE`: those of MMVAE+ (same defaults) and the clusters.

    Attributes
    ----------
    n_clusters : int
        Number of clusters ``C`` of the prior ``p(u) = sum_c pi_c p(u | c)`` before pruning
        (:meth:`CMVAE.prune_clusters` selects how many to keep).
    """

    n_clusters: int = 10

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.n_clusters < 2:
            raise ValueError(f"CMVAE n_clusters must be >= 2, got {self.n_clusters}")


@register_model("cmvae")
class CMVAE(MMVAEPlus):
    r"""Clustering multimodal VAE (Palumbo, Manduchi, Laguna, Chopard & Vogt, "Deep Generative
    Clustering with Multimodal Diffusion Variational Autoencoders", ICLR 2024).

    MMVAE+ with a cluster variable ``c ~ Cat(pi)`` above the shared latent,
    ``u | c ~ Laplace(mu_c, s)`` (``s = prior_scale``, fixed as in the paper's setting; ``pi`` and
    ``mu_c`` learned). The paper's bound takes the expectation over ``q(c | u)`` inside the
    importance weight, with ``q(c | u) = softmax_c(log pi_c + log p(u | c))`` in closed form:

    .. math:: \mathbb E_{q(c|u)}\big[\log p(u | c) + \log \pi_c - \log q(c | u)\big]
              = \log \sum_c \pi_c\, p(u | c) = \log p(u),

    because that ``q(c | u)`` is the exact posterior of the prior. So the objective is MMVAE+'s with
    the mixture prior ``p(u)`` (a :class:`pyro.distributions.MixtureSameFamily`), and ``c`` is
    marginalised exactly rather than sampled. Clusters of a row are read from ``p(c | u)`` at the
    posterior means of its *observed* unimodal encoders (:meth:`predict_clusters`); the number of
    clusters is chosen after training (:meth:`prune_clusters`).
    """

    config_class = CMVAEConfig

    def __init__(self, modalities, config: CMVAEConfig | None = None) -> None:
        super().__init__(modalities, config)
        C, D = self.config.n_clusters, self.latent_dim
        self.cluster_logits = nn.Parameter(torch.zeros(C))
        self.cluster_means = nn.Parameter(2 * torch.rand(C, D) - 1)  # uniform in [-1, 1], as the paper's code
        self.register_buffer("active_clusters", torch.ones(C, dtype=torch.bool))

    # ------------------------------------------------------------------ the clustered prior
    @property
    def num_clusters(self) -> int:
        """Clusters left after pruning."""
        return int(self.active_clusters.sum())

    def cluster_log_weights(self) -> Tensor:
        """``log pi_c`` (``-inf`` for pruned clusters), shape ``(C,)``."""
        logits = self.cluster_logits.masked_fill(~self.active_clusters, -math.inf)
        return torch.log_softmax(logits, -1)

    def _cluster_components(self) -> dist.TorchDistribution:
        scale = self.log_prior_scale.exp() if self.config.learn_prior_scale else self.prior_scale
        return self.family(self.cluster_means, scale.expand_as(self.cluster_means)).to_event(1)  # (C,)

    def prior(self) -> dist.TorchDistribution:
        """``p(u) = sum_c pi_c Laplace(u; mu_c, s)`` (event shape ``(D,)``)."""
        return dist.MixtureSameFamily(dist.Categorical(logits=self.cluster_log_weights()),
                                      self._cluster_components())

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The mixture of each row's observed experts; a row that observes nothing gets the
        prior mixture itself."""
        loc, scale, mask = self.experts(batch)  # (B, M, D), (B, M)
        B, C = batch.batch_size, self.config.n_clusters
        clusters = self._cluster_components().base_dist
        loc = torch.cat([loc, clusters.loc.expand(B, C, -1)], -2)
        scale = torch.cat([scale, clusters.scale.expand(B, C, -1)], -2)
        empty = ~mask.any(-1, keepdim=True)
        experts = torch.zeros_like(mask, dtype=loc.dtype).masked_fill(~mask, -math.inf)
        prior = self.cluster_log_weights().expand(B, C).masked_fill(~empty, -math.inf)
        return MixtureOfExperts(self.family(loc, scale).to_event(1), log_weights=torch.cat([experts, prior], -1))

    # ------------------------------------------------------------------ clusters
    def cluster_probabilities(self, u: Tensor) -> Tensor:
        """``p(c | u) = softmax_c(log pi_c + log p(u | c))`` for codes ``u`` ``(..., D)``:
        ``(..., C)`` (0 for pruned clusters)."""
        log_joint = self._cluster_components().log_prob(u.unsqueeze(-2)) + self.cluster_log_weights()
        return torch.softmax(log_joint, -1)

    @torch.no_grad()
    def _per_modality_codes(self, batch: MultimodalBatch) -> tuple[Tensor, Tensor]:
        loc, _, mask = self.experts(batch)  # posterior means of q(u | x_m): (B, M, D), (B, M)
        return loc, mask

    @torch.no_grad()
    def cluster_posterior(self, batch: MultimodalBatch) -> Tensor:
        """Each row's distribution over clusters, ``(B, C)``: the average over its *observed*
        modalities of ``p(c | u_m)`` at the posterior mean ``u_m`` of ``q(u | x_m)`` (a soft vote
        of the unimodal encoders); ``pi`` for a row that observes nothing."""
        self._check_batch(batch)
        u, mask = self._per_modality_codes(batch)
        return self._vote(self.cluster_probabilities(u), mask)

    def _vote(self, probs: Tensor, mask: Tensor) -> Tensor:
        weights = mask.to(probs.dtype)  # probs (B, M, C), mask (B, M)
        votes = (probs * weights.unsqueeze(-1)).sum(-2)
        total = weights.sum(-1, keepdim=True)
        return torch.where(total > 0, votes / total.clamp(min=1), self.cluster_log_weights().exp().expand_as(votes))

    @torch.no_grad()
    def predict_clusters(self, batch: MultimodalBatch) -> Tensor:
        """The most probable cluster of each row under :meth:`cluster_posterior`, ``(B,)``."""
        return self.cluster_posterior(batch).argmax(-1)

    @torch.no_grad()
    def _selection_criterion(self, batch: MultimodalBatch) -> tuple[Tensor, Tensor]:
        """Per observed (row, modality): ``beta H(p(c | u_m)) / log C - log p(u_m) / D`` (the
        normalised entropy of the assignment, penalised by the prior density of the code), and
        the rows' hard assignments."""
        u, mask = self._per_modality_codes(batch)
        probs = self.cluster_probabilities(u)  # (B, M, C)
        entropy = -(probs * probs.clamp(min=1e-30).log()).sum(-1) / math.log(self.num_clusters)
        log_density = self.prior().log_prob(u) / self.latent_dim
        score = self.config.beta * entropy - log_density  # (B, M)
        return score[mask], self._vote(probs, mask).argmax(-1)

    @torch.no_grad()
    def prune_clusters(self, data: MultimodalDataset | MultimodalBatch, batch_size: int = 512) -> dict[str, Any]:
        r"""Select the number of clusters after training (the paper's post-hoc selection).

        From the current clusters down to two, repeatedly: score the clustering of ``data`` by
        the mean over observed (row, modality) pairs of
        ``beta H(p(c | u_m)) / log C - log p(u_m) / D`` (a confident assignment of codes that the
        prior finds likely scores low), then remove the cluster with the fewest rows assigned.
        The clusters of the lowest score are kept (:attr:`active_clusters`); rows observing
        nothing are left out. Returns the scores by number of clusters and the choice.
        """
        batch = data.batch() if isinstance(data, MultimodalDataset) else data
        self._check_batch(batch)
        rows = torch.stack([batch.row_mask(m) for m in self.names], -1).any(-1)
        if not bool(rows.any()):
            raise ValueError("prune_clusters needs rows that observe at least one modality")
        device = self.cluster_means.device
        scores: dict[int, float] = {}
        kept: dict[int, Tensor] = {}
        original = self.active_clusters.clone()
        while self.num_clusters >= 2:
            values, counts = [], torch.zeros_like(self.cluster_logits)
            for start in range(0, batch.batch_size, batch_size):
                chunk = batch.index(slice(start, start + batch_size)).to(device)
                value, assigned = self._selection_criterion(chunk)
                observed = torch.stack([chunk.row_mask(m) for m in self.names], -1).any(-1)
                values.append(value)
                counts += torch.bincount(assigned[observed], minlength=counts.numel()).to(counts)
            n = self.num_clusters
            scores[n] = float(torch.cat(values).mean())
            kept[n] = self.active_clusters.clone()
            counts = counts.masked_fill(~self.active_clusters, math.inf)
            self.active_clusters[counts.argmin()] = False
        best = min(scores, key=scores.get)
        self.active_clusters.copy_(kept[best])
        return {"scores": dict(sorted(scores.items())), "n_clusters": best,
                "clusters": self.active_clusters.nonzero().flatten().tolist(),
                "before": int(original.sum())}
