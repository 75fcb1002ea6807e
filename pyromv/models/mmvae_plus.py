"""MMVAE+: a mixture of experts with modality-specific latents and auxiliary priors
(Palumbo, Daunhawer & Vogt 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from ..data.batch import MultimodalBatch
from ..infer import StratifiedELBO
from .mmvae import MMVAE, MMVAEConfig
from .registry import register_model


@dataclass
class MMVAEPlusConfig(MMVAEConfig):
    """Options of :class:`MMVAEPlus` (defaults: the paper's PolyMNIST reproduction setting).

    Attributes
    ----------
    latent_dim : int
        Size of the shared latent ``u`` (paper: 32).
    private_latent_dim : int
        Size of each modality-specific latent ``w_m`` (paper: 32).
    beta : float
        Weight of the latent terms inside the importance weights (paper: 2.5).
    num_particles : int
        ``K`` particles per expert (paper: 1).
    objective : str
        ``"dreg"`` (default, the paper's code): the stratified IWAE with the doubly
        reparameterised gradient, unbiased for ``K = 1`` (it is then the sticking-the-landing
        gradient, and the strata average to the mixture) and biased for ``K > 1`` on rows mixing
        several experts, as for MMVAE; ``"iwae"``: the same bound with the standard
        (unbiased) gradient; ``"elbo"``: the stratified ELBO with ``K`` particles; ``"siwae"``: the
        bound with the log outside the sum over strata (:class:`~pyromv.infer.SIWAE`).
    distribution : str
        ``"laplace"`` (paper) or ``"normal"``: prior and posteriors of ``u`` and ``w_m``.
    learn_auxiliary_scale : bool
        Learn the scales of the auxiliary priors ``r_m(w_m)`` (paper: yes). They are
        parameterised as in the paper's code, ``scale = D_w * softmax(a_m)``: the scales sum to
        ``D_w`` (1 on average) and learning moves scale between dimensions (none to move when
        ``D_w = 1``).
    """

    latent_dim: int = 32
    private_latent_dim: int = 32
    beta: float = 2.5
    num_particles: int = 1
    objective: str = "dreg"
    learn_auxiliary_scale: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        if self.private_latent_dim < 1:
            raise ValueError(f"MMVAE+ needs private latents: private_latent_dim must be >= 1, "
                             f"got {self.private_latent_dim}")


@register_model("mmvae_plus")
class MMVAEPlus(MMVAE):
    r"""MMVAE+ (Palumbo, Daunhawer & Vogt, "MMVAE+: Enhancing the Generative Quality of Multimodal
    VAEs without Compromises", ICLR 2023).

    A shared latent ``u`` with the mixture of unimodal experts ``q(u | X) = (1/|O|) sum_m
    q(u | x_m)`` and a private latent ``w_m ~ q(w_m | x_m)`` per modality. The stratum of expert
    ``m`` draws ``u ~ q(u | x_m)``, its own ``w_m ~ q(w_m | x_m)`` and, for every other modality
    ``n``, ``w~_n ~ r_n`` from an *auxiliary prior*, so that cross-modal reconstruction must carry
    the shared information through ``u``:

    .. math:: \log \omega_m = \log p(x_m | u, w_m) + \sum_{n \in O, n \ne m} \log p(x_n | u, \tilde w_n)
              + \beta\,[\log p(u) p(w_m) - \log q(u | X) - \log q(w_m | x_m)], \qquad
              \mathcal L = \frac{1}{|O|} \sum_{m \in O} \log \frac1K \sum_k \omega_{m,k}

    ``O``: the modalities a row observes (rows with missing modalities mix and reconstruct only
    those). In Pyro terms the strata are ``pyro.plate("experts", M)``; site ``z`` is ``u`` (scored
    by the mixture, :class:`~pyromv.distributions.StratifiedMixture`), site ``w`` the stratum's own
    private latent. The draws ``w~_n ~ r_n`` are auxiliary noise of the objective, not latent
    variables of the bound, so they are not sites (a site would add ``log r - log r = 0`` and,
    under DReG, a weight on ``r_n``'s gradient that the paper does not apply).

    The generative model is ``p(u) prod_m p(w_m) p(x_m | u, w_m)``: its likelihood, the reported
    bound (:meth:`evaluation_loss`) and cross-generation (target's ``w`` from its prior, as in the
    paper's code at test time) use ``p(w_m)``; ``r_m`` serves training only.
    """

    config_class = MMVAEPlusConfig

    def __init__(self, modalities, config: MMVAEPlusConfig | None = None) -> None:
        super().__init__(modalities, config)
        logits = torch.zeros(len(self.names), self.private_dim)  # scale 1 in every dimension
        if self.config.learn_auxiliary_scale and self.private_dim > 1:  # D_w = 1: the scale is 1
            self.auxiliary_logits = nn.Parameter(logits)
        else:
            self.register_buffer("auxiliary_logits", logits)

    # ------------------------------------------------------------------ distributions
    def private_prior(self) -> dist.TorchDistribution:
        """``p(w_m)``: Laplace (or Normal) with location 0 and scale 1."""
        zeros = self.prior_loc.new_zeros(self.private_dim)
        return self.family(zeros, torch.ones_like(zeros)).to_event(1)

    def private_posterior(self, batch: MultimodalBatch, name: str) -> dist.TorchDistribution:
        """``q(w_m | x_m)`` of each row, batch shape ``(B,)``, in the model's family."""
        loc, scale = self.apply_encoder(self.private_encoders[name], name, batch)
        return self.family(loc, scale).to_event(1)

    def auxiliary_prior(self) -> dist.TorchDistribution:
        """``r_m(w_m)`` of every modality, batch shape ``(M,)``: location 0, scale
        ``D_w softmax(a_m)``."""
        scale = self.private_dim * torch.softmax(self.auxiliary_logits, -1)
        return self.family(torch.zeros_like(scale), scale).to_event(1)

    # ------------------------------------------------------------------ model / guide
    def _stratum_private(self, w: Tensor) -> dict[str, Tensor]:
        """Decoder's private input per modality: the stratum's own ``w`` where the stratum is
        the modality's expert, a draw of ``r_n`` elsewhere (``w``: ``(..., M, B, D_w)``)."""
        M = len(self.names)
        scale = self.private_dim * torch.softmax(self.auxiliary_logits, -1)  # (M, D_w)
        out = {}
        for n, name in enumerate(self.names):
            draw = self.family(torch.zeros_like(scale[n]), scale[n]).rsample(w.shape[:-1])
            own = (torch.arange(M, device=w.device) == n).view(M, 1, 1)
            out[name] = torch.where(own, w, draw)
        return out

    def model(self, batch: MultimodalBatch) -> None:
        """Per stratum ``m``: ``u ~ p(u)``, ``w ~ p(w)`` (the stratum's own private latent),
        ``x_m ~ p(x_m | u, w)`` and ``x_n ~ p(x_n | u, w~_n)``, ``w~_n ~ r_n``, for the other
        observed ``n``."""
        self._check_batch(batch)
        self._announce_params()
        strata = self._strata(batch)
        M, B = strata.shape
        with pyro.plate("experts", M, dim=-2), pyro.plate("batch", B, dim=-1), poutine.mask(mask=strata):
            z = pyro.sample("z", self.prior())
            w = pyro.sample("w", self.private_prior())
            self.observe(batch, z, self._stratum_private(w), scored=strata)

    def guide(self, batch: MultimodalBatch) -> None:
        """Per observed expert ``m``: ``u ~ q(u | x_m)`` scored by the mixture ``q(u | X)``,
        ``w ~ q(w_m | x_m)``."""
        def own_private() -> None:
            own = [self.private_posterior(batch, m).base_dist for m in self.names]
            pyro.sample("w", self.family(torch.stack([q.loc for q in own]),
                                         torch.stack([q.scale for q in own])).to_event(1))

        self.stratified_guide(batch, own_private)

    # ------------------------------------------------------------------ the reported bound
    def joint_model(self, batch: MultimodalBatch) -> None:
        """The generative model ``p(u) prod_m p(w_m) p(x_m | u, w_m)``, one copy per stratum."""
        self.stratified_model(batch, self._strata(batch))

    def joint_guide(self, batch: MultimodalBatch) -> None:
        """``u`` from each observed expert (scored by the mixture), ``w_m ~ q(w_m | x_m)`` for
        every observed modality."""
        self.stratified_guide(batch, lambda: self.sample_private(batch, guide=True))

    def evaluation_loss(self) -> pyro.infer.ELBO:
        """The stratified ELBO of the generative model (``beta = 1``, no auxiliary priors), a
        bound on ``log p(X_O)``."""
        return StratifiedELBO(max_plate_nesting=2)

    def evaluation_model(self):
        return self.joint_model

    def evaluation_guide(self):
        return self.joint_guide
