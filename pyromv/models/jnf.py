r"""JNF: a joint VAE whose unimodal posteriors are normalising flows, trained in two stages
(Senellart, Fernandez-Cabrera et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..distributions.flow_posterior import (
    EmpiricalRows,
    RowwiseChoice,
    flow_posterior,
    masked_autoregressive_flow,
)
from ..distributions.fusion import ProductOfExperts
from ..infer import ELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .joint import JointEncoderMixin
from .registry import register_model

SUBSET_INFERENCE = ("poe", "mcmc")


def _check_epochs(e) -> None:
    ok = not isinstance(e, bool) and (
        (isinstance(e, int) and e >= 1) or (isinstance(e, float) and (0 < e < 1 or (e >= 1 and e.is_integer()))))
    if not ok:
        raise ValueError(f"JNF joint_epochs must be an int >= 1 or a fraction in (0, 1) of the run, got {e!r}")


@dataclass
class JNFConfig(ModelConfig):
    """Options of :class:`JNF`.

    Attributes
    ----------
    joint_epochs : int or float
        Epochs of stage 1 (the joint ELBO) before the switch to stage 2: an int, or a fraction
        in ``(0, 1)`` of the trainer's epochs. MultiVae's ``warmup`` (default 10 epochs of a
        long run); pyromv's default, half the run, trains both stages whatever the budget.
    flow_layers : int
        Affine autoregressive layers (MADE blocks) of each unimodal flow; 0: Gaussian
        posteriors. Default 2, MultiVae's (pythae ``MAF``: 2 MADE blocks).
    flow_hidden_dims : list of int
        Hidden layers of each MADE (pythae's default: 3 layers of 128 units).
    joint_hidden_dims : list of int
        Hidden layers of the joint encoder (an MLP on every modality concatenated).
    analytic_kl : bool
        Closed-form KL to the prior where the guide of every row is Gaussian (the joint encoder,
        products of Gaussian experts); Monte Carlo otherwise.
    subset_inference : str
        How :meth:`JNF.encode` (and so ``cross_generate``) treats rows observing ``>= 2`` but not
        all modalities: ``"poe"`` (default: the product of the observed experts' Gaussian bases,
        closed form, instant) or ``"mcmc"`` (the paper's target
        ``prod_s q_s(z|x_s) / p(z)^(|S|-1)`` sampled by :meth:`JNF.sample_subset_posterior`).
    mcmc_num_samples, mcmc_warmup_steps : int
        Draws kept and warm-up steps of the NUTS chain in ``"mcmc"`` mode (MultiVae runs 200
        (encode) to 300 steps of fixed-step HMC and keeps the last state).
    """

    joint_epochs: int | float = 0.5
    flow_layers: int = 2
    flow_hidden_dims: list[int] = field(default_factory=lambda: [128, 128, 128])
    joint_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    analytic_kl: bool = True
    subset_inference: str = "poe"
    mcmc_num_samples: int = 200
    mcmc_warmup_steps: int = 200

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        _check_epochs(self.joint_epochs)
        if self.flow_layers < 0:
            raise ValueError(f"JNF flow_layers must be >= 0, got {self.flow_layers}")
        if self.flow_layers and (not self.flow_hidden_dims or min(self.flow_hidden_dims) < 1):
            raise ValueError(f"JNF flow_hidden_dims must be positive sizes, got {self.flow_hidden_dims}")
        if self.subset_inference not in SUBSET_INFERENCE:
            raise ValueError(f"JNF subset_inference must be one of {SUBSET_INFERENCE}, got {self.subset_inference!r}")
        if self.mcmc_num_samples < 2 or self.mcmc_warmup_steps < 0:
            raise ValueError("JNF needs mcmc_num_samples >= 2 and mcmc_warmup_steps >= 0, got "
                             f"{self.mcmc_num_samples}, {self.mcmc_warmup_steps}")


@register_model("jnf")
class JNF(JointEncoderMixin, MultimodalVAE):
    r"""Joint Normalising Flows (Senellart, Fernandez-Cabrera et al. 2023).

    A joint encoder ``q(z | X)`` and unimodal posteriors ``q_m(z | x_m)``: a diagonal Gaussian
    from the modality's encoder followed by a masked autoregressive flow (``flow_layers``
    layers, :func:`~pyromv.distributions.flow_posterior.flow_posterior`). Two stages:

    1. the joint ELBO ``E_{q(z|X)} log p(X | z) - beta KL(q(z|X) || p(z))``;
    2. joint encoder and decoders frozen,
       ``min sum_m E_{q(z|X)}[-log q_m(z | x_m)]`` (``= sum_m KL(q(z|X) || q_m) + const``).

    Inference: complete rows use ``q(z | X)``; a row observing one modality ``m`` uses ``q_m``;
    a row observing a subset ``S`` (``|S| >= 2``, not all) has the target
    ``prod_{s in S} q_s(z|x_s) / p(z)^(|S|-1)`` (the posterior ``p(z | X_S)`` when each ``q_s``
    is ``p(z | x_s)``), sampled by MCMC (:meth:`sample_subset_posterior`, ``subset_inference=
    "mcmc"``) or replaced by the product of the Gaussian bases (``"poe"``, default; also the
    guide and the likelihood proposal of such rows, which need a density).

    Missing data (pyromv's extension; the paper trains on complete data): in stage 1 an
    incomplete row contributes the ELBO of what it observes under its inference distribution
    above (one modality: ``q_m`` with its flow; several: the product of the Gaussian bases; none:
    the prior); in stage 2 complete rows contribute ``-sum_m log q_m(z|x_m)``, ``z ~ q(z|X)``,
    and incomplete rows that same ELBO again (decoders frozen), which trains their unimodal
    posteriors on their own data. Both stages' gradients are unbiased for their objectives
    (reparameterised Monte Carlo; the flows are reparameterised).
    """

    config_class = JNFConfig

    def __init__(self, modalities, config: JNFConfig | None = None) -> None:
        super().__init__(modalities, config)
        c = self.config
        self._build_joint_encoder(c.joint_hidden_dims)
        self.flows = nn.ModuleDict({
            m: masked_autoregressive_flow(c.latent_dim, c.flow_layers, c.flow_hidden_dims) for m in self.names
        })

    # ------------------------------------------------------------------ posteriors
    def unimodal_posterior(self, loc: Tensor, scale: Tensor, name: str) -> dist.TorchDistribution:
        """``q_m(z | x_m)`` from the Gaussian base ``(loc, scale)`` ``(B, D)`` of modality ``name``."""
        return flow_posterior(loc, scale, self.flows[name])

    def _guide_parts(self, batch: MultimodalBatch):
        """The Gaussian rows' ``(loc, scale)`` (joint encoder on complete rows, product of the
        observed bases elsewhere, the prior on empty rows), the unimodal flow posteriors, and
        each row's choice: ``0`` Gaussian, ``1 + j`` the flow of modality ``j`` (rows observing
        it alone)."""
        loc, scale, mask = experts = self.experts(batch)
        g_loc, g_scale, complete = self.joint_or_product(batch, experts)
        single = (mask.sum(-1) == 1) & ~complete
        choice = torch.where(single, 1 + mask.long().argmax(-1), torch.zeros_like(single, dtype=torch.long))
        flows = [self.unimodal_posterior(loc[:, j], scale[:, j], m) for j, m in enumerate(self.names)]
        return (g_loc, g_scale), flows, choice, (loc, scale, mask, complete)

    @staticmethod
    def _choose(gauss: tuple[Tensor, Tensor], flows: list, choice: Tensor, extra: list = ()) -> dist.TorchDistribution:
        g = dist.Normal(*gauss).to_event(1)
        if not bool(choice.any()):
            return g  # every row Gaussian: one Normal (closed-form KL)
        return RowwiseChoice([g, *flows, *extra], choice)

    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """The guide: ``q(z | X)`` on complete rows, ``q_m(z | x_m)`` (flow) on rows observing
        one modality, the product of the observed Gaussian bases on other rows (prior if none)."""
        gauss, flows, choice, _ = self._guide_parts(batch)
        return self._choose(gauss, flows, choice)

    def encode(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """:meth:`posterior`; with ``subset_inference="mcmc"`` the rows observing ``>= 2`` but not
        all modalities get :class:`~pyromv.distributions.flow_posterior.EmpiricalRows` of
        :meth:`sample_subset_posterior`'s draws instead (``mean``/``sample``; ``log_prob`` of a
        Gaussian fitted to the draws)."""
        self._check_batch(batch)
        gauss, flows, choice, (_, _, mask, complete) = self._guide_parts(batch)
        rows = (mask.sum(-1) >= 2) & ~complete
        if self.config.subset_inference == "poe" or not bool(rows.any()):
            return self._choose(gauss, flows, choice)
        idx = rows.nonzero().flatten()
        draws = self.sample_subset_posterior(batch.index(idx))  # (S, R, D)
        samples = draws.new_zeros((draws.shape[0], batch.batch_size, draws.shape[-1]))
        samples[:, idx] = draws
        choice = torch.where(rows, len(flows) + 1, choice)
        return RowwiseChoice([dist.Normal(*gauss).to_event(1), *flows, EmpiricalRows(samples)], choice)

    # ------------------------------------------------------------------ subset posteriors by MCMC
    def subset_log_density(self, z: Tensor, loc: Tensor, scale: Tensor, mask: Tensor) -> Tensor:
        r"""``log prod_{s in S} q_s(z | x_s) - (|S| - 1) log p(z)`` of each row (unnormalised),
        ``S`` the row's observed modalities (``mask`` ``(B, M)``; bases ``loc``/``scale``
        ``(B, M, D)``); ``z`` ``(..., B, D)``. A row observing nothing gets ``log p(z)``."""
        count = mask.sum(-1).to(z.dtype)
        total = (1.0 - count) * self.prior().log_prob(z)
        for j, m in enumerate(self.names):
            lq = self.unimodal_posterior(loc[:, j], scale[:, j], m).log_prob(z)
            total = total + torch.where(mask[:, j], lq, torch.zeros_like(lq))
        return total

    def sample_subset_posterior(
        self, batch: MultimodalBatch, num_samples: int | None = None, warmup_steps: int | None = None,
        initial: Tensor | None = None, max_tree_depth: int = 10,
    ) -> Tensor:
        r"""Draws ``(num_samples, B, D)`` from each row's ``prod_{s in S} q_s(z|x_s) / p(z)^(|S|-1)``
        (``S`` what the row observes; the division by ``p(z)^(|S|-1)`` keeps one prior, as in
        ``p(z | X_S) = prod_s p(z|x_s) / p(z)^(|S|-1) * const``; MultiVae divides by ``p(z)``
        once, correct only for ``|S| = 2``).

        One chain of Pyro's ``NUTS`` (``pyro.infer.mcmc``) over all rows at once: rows are
        independent, so the potential is the sum of the rows' negative log-densities; the step
        size and a diagonal mass matrix (one entry per row and coordinate) are adapted during
        ``warmup_steps``. The chain starts at ``initial`` (default: the mean of the product of
        the Gaussian bases). Defaults come from the config (``mcmc_*``). (Fixed-length HMC was
        measured to mix badly here: Pyro keeps its trajectory length while adapting the step,
        which lands near a period of the near-Gaussian targets.)

        The target need not be normalisable: where the experts are broader than the prior,
        dividing by ``p(z)^(|S|-1)`` leaves a non-decaying direction and the chain drifts
        (untrained models); trained experts are narrower than the prior.
        """
        from pyro.infer.mcmc import MCMC, NUTS

        self._check_batch(batch)
        c = self.config
        num_samples = c.mcmc_num_samples if num_samples is None else int(num_samples)
        warmup_steps = c.mcmc_warmup_steps if warmup_steps is None else int(warmup_steps)
        if num_samples < 1 or warmup_steps < 0:
            raise ValueError(f"need num_samples >= 1 and warmup_steps >= 0, got {num_samples}, {warmup_steps}")
        with torch.no_grad():
            loc, scale, mask = self.experts(batch)
            if initial is None:
                p_loc, p_scale, p_mask = self._prior_for_empty_rows(loc, scale, mask)
                initial = ProductOfExperts(p_loc, p_scale, p_mask, include_prior=False).loc
        if initial.shape != (batch.batch_size, self.latent_dim):
            raise ValueError(f"initial must have shape {(batch.batch_size, self.latent_dim)}, "
                             f"got {tuple(initial.shape)}")

        def potential(params: dict[str, Tensor]) -> Tensor:
            return -self.subset_log_density(params["z"], loc, scale, mask).sum()

        kernel = NUTS(potential_fn=potential, adapt_step_size=True, adapt_mass_matrix=True,
                      max_tree_depth=max_tree_depth)
        runner = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                      initial_params={"z": initial.detach().clone()}, disable_progbar=True)
        with torch.enable_grad():
            runner.run()
        return runner.get_samples()["z"].detach()

    # ------------------------------------------------------------------ stage 2
    def unimodal_model(self, batch: MultimodalBatch) -> None:
        """Stage 2's model: complete rows score ``sum_m log q_m(z | x_m)`` (factor
        ``jnf_unimodal``; their ``z`` site is masked out), incomplete rows the model itself."""
        self._check_batch(batch)
        self._announce_params()
        loc, scale, mask = self.experts(batch)
        complete = self.complete_rows(mask)
        with pyro.plate("batch", batch.batch_size):
            with poutine.mask(mask=~complete):
                z = pyro.sample("z", self.prior())
            self.observe(batch, z, scored=~complete)
            if bool(complete.any()):
                lq = sum(self.unimodal_posterior(loc[:, j], scale[:, j], m).log_prob(z)
                         for j, m in enumerate(self.names))
                pyro.factor("jnf_unimodal", torch.where(complete, lq, torch.zeros_like(lq)))

    def unimodal_guide(self, batch: MultimodalBatch) -> None:
        """Stage 2's guide: the stage-1 guide, its density masked out on complete rows (there
        ``z ~ q(z | X)`` only supplies the points at which ``q_m`` is scored)."""
        self._check_batch(batch)
        self._announce_params()
        q = self.posterior(batch)
        complete = self.complete_rows(torch.stack([batch.row_mask(m) for m in self.names], -1))
        with pyro.plate("batch", batch.batch_size), poutine.mask(mask=~complete):
            pyro.sample("z", q)

    def unimodal_loss(self) -> pyro.infer.ELBO:
        """Stage 2's objective (summed over rows): ``-sum_m log q_m(z|x_m)`` on complete rows,
        the negative ELBO on the others."""
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=1)

    # ------------------------------------------------------------------ objectives and stages
    def default_loss(self) -> pyro.infer.ELBO:
        """Stage 1's objective, the (beta-)ELBO of :meth:`model` and :meth:`guide`."""
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=1)

    def stages(self) -> list:
        """Stage ``joint`` (every parameter, the ELBO, ``joint_epochs``), then stage
        ``unimodal`` (``encoders.`` and ``flows.`` only, the rest of the run), validated on its own
        objective."""
        from ..training.stages import Stage

        second = (self.unimodal_loss(), self.unimodal_model, self.unimodal_guide)
        return [
            Stage("joint", self.default_loss(), self.model, self.guide, epochs=self.config.joint_epochs),
            Stage("unimodal", *second, trainable=("encoders.", "flows."), validation=second),
        ]


__all__ = ["JNF", "JNFConfig"]
