"""TELBO: a joint encoder fitted first, unimodal encoders fitted after it (Vedantam et al. 2018)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from ..data.batch import MultimodalBatch
from ..infer import ELBO
from .base import MultimodalVAE
from .config import ModelConfig
from .joint import JointEncoderMixin
from .registry import register_model


@dataclass
class TELBOConfig(ModelConfig):
    """Options of :class:`TELBO`.

    Attributes
    ----------
    joint_epochs : float
        Length of stage 1 (the joint ELBO), i.e. the epoch of the switch to stage 2: a whole
        number of epochs (``10`` or ``10.0``) or a fraction in ``(0, 1)`` of the trainer's
        epochs. Default ``0.5``: half of the run, MultiVae's recommendation (the paper trains
        each stage to convergence and gives no epoch count).
    lambda_weights : dict of str to float
        The paper's ``lambda_m``: weight of ``log p(x_m | z)`` in the stage-1 joint ELBO, by
        modality name (absent names: 1). The paper up-weights the small attribute modality
        (``lambda_y`` 10 to 50 on MNIST-A in the official scripts); default 1 for every
        modality, i.e. the plain joint ELBO (pyromv's ``likelihood_rescaling`` and each
        ``Modality.rescale`` multiply these weights, in every stage).
    gamma_weights : dict of str to float
        The paper's ``gamma_m`` (``lambda_m^m`` there): weight of ``log p(x_m | z)`` in
        modality ``m``'s unimodal ELBO of stage 2 (absent names: 1, the unimodal ELBO itself).
    joint_hidden_dims : list of int
        Hidden layers of the joint encoder, an MLP on all modalities concatenated.
    analytic_kl : bool
        Closed-form KL to the prior in both stages (Monte Carlo when False).
    """

    joint_epochs: float = 0.5
    lambda_weights: dict[str, float] = field(default_factory=dict)
    gamma_weights: dict[str, float] = field(default_factory=dict)
    joint_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    analytic_kl: bool = True

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        super().validate()
        e = self.joint_epochs
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not (
            0 < e < 1 or (e >= 1 and float(e).is_integer())
        ):
            raise ValueError(f"TELBO joint_epochs must be a whole number of epochs >= 1 or a fraction in (0, 1), "
                             f"got {e!r}")
        for label in ("lambda_weights", "gamma_weights"):
            weights = getattr(self, label)
            if not isinstance(weights, dict):
                raise TypeError(f"TELBO {label} must be a dict of modality name to weight, "
                                f"got {type(weights).__name__}")
            for name, w in weights.items():
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
                    raise ValueError(f"TELBO {label}[{name!r}] must be a finite number >= 0, got {w!r}")


class ObservationWeights(Messenger):
    """Multiply the log-density of each observation site ``x_{m}`` by ``weights[m]``
    (modalities not named keep their scale)."""

    def __init__(self, weights: dict[str, float]) -> None:
        super().__init__()
        self.sites = {f"x_{m}": float(w) for m, w in weights.items() if w != 1.0}

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] in self.sites:
            msg["scale"] = self.sites[msg["name"]] * msg["scale"]


def _weighted(weights: dict[str, float]):
    return ObservationWeights(weights) if any(w != 1.0 for w in weights.values()) else nullcontext()


@register_model("telbo")
class TELBO(JointEncoderMixin, MultimodalVAE):
    r"""Triple-ELBO VAE, TELBO (Vedantam, Fischer, Huang & Murphy, "Generative Models of Visually
    Grounded Imagination", ICLR 2018), trained in two stages (:meth:`stages`).

    Stage 1, the joint ELBO of the joint encoder ``q(z | X)`` and the decoders:

    .. math:: \mathcal L_1(X) = \mathbb E_{q(z|X)} \textstyle\sum_m \lambda_m \log p(x_m|z)
              - \beta\,\mathrm{KL}(q(z|X) \| p(z))

    Stage 2, joint encoder and decoders frozen, the unimodal encoders ``q_m(z | x_m)`` on the
    sum of their own ELBOs (each with ``q_m``'s own mean *and* variance):

    .. math:: \mathcal L_2(X) = \textstyle\sum_m \big[\gamma_m\, \mathbb E_{q_m(z|x_m)} \log p(x_m|z)
              - \beta\,\mathrm{KL}(q_m(z|x_m) \| p(z))\big]

    With ``gamma_m = 1`` and exact decoders the optimum of stage 2 is ``q_m = p(z | x_m)``.
    :meth:`model`/:meth:`guide`/:meth:`default_loss` are stage 1's (for plain SVI users);
    :meth:`unimodal_model`/:meth:`unimodal_guide`/:meth:`unimodal_loss` are stage 2's (one ``z``
    per modality under ``pyro.plate("experts", M, dim=-2)``, copy ``m`` decoding modality ``m``
    only). Both gradients are the reparameterised ones, unbiased for their stage's objective.

    Inference (:meth:`posterior`): a complete row uses the joint encoder; a row that misses
    modalities the product of its observed unimodal experts without a prior expert (exactly
    ``q_m`` when it observes one modality, the paper's cross-modal inference; for two or more
    observed modalities of an incomplete row the product is pyromv's extension), the prior for a
    row observing nothing. The stage-1 ELBO uses that same guide, so a row missing modalities
    contributes the ELBO of what it observes under the product of its unimodal experts (as in
    JMVAE here): every row's term is a bound on ``log p(X_O)``, the decoders learn from
    incomplete rows too, and stage 2 then fits each observed modality's encoder on its rows.
    """

    config_class = TELBOConfig

    def __init__(self, modalities, config: TELBOConfig | None = None) -> None:
        super().__init__(modalities, config)
        c = self.config
        for label in ("lambda_weights", "gamma_weights"):
            unknown = sorted(set(getattr(c, label)) - set(self.names))
            if unknown:
                raise ValueError(f"TELBO {label} names modalities {unknown} the model does not have "
                                 f"(it has {self.names})")
        #: ``lambda_m`` of the stage-1 joint ELBO, by modality
        self.lambda_weights = {m: float(c.lambda_weights.get(m, 1.0)) for m in self.names}
        #: ``gamma_m`` of the stage-2 unimodal ELBOs, by modality
        self.gamma_weights = {m: float(c.gamma_weights.get(m, 1.0)) for m in self.names}
        self._build_joint_encoder(c.joint_hidden_dims)

    # ------------------------------------------------------------------ inference
    def posterior(self, batch: MultimodalBatch) -> dist.TorchDistribution:
        """``q(z | X)`` (joint encoder) on complete rows, the product of the observed unimodal
        experts on the others, the prior on rows observing nothing."""
        if all(bool(batch.row_mask(m).all()) for m in self.names):
            return dist.Normal(*self.joint_params(batch)).to_event(1)
        loc, scale, _ = self.joint_or_product(batch)
        return dist.Normal(loc, scale).to_event(1)

    # ------------------------------------------------------------------ stage 1
    def model(self, batch: MultimodalBatch) -> None:
        """Stage 1's model: ``z ~ p(z)``, ``x_m ~ p(x_m | z)`` with log-densities weighted by ``lambda_m``."""
        with _weighted(self.lambda_weights):
            super().model(batch)

    def evaluation_model(self):
        """The unweighted model (``lambda_m = 1``): with :meth:`guide` its ELBO bounds ``log p(X_O)``."""
        return lambda batch: MultimodalVAE.model(self, batch)

    def default_loss(self) -> pyro.infer.ELBO:
        """Stage 1's objective: the (weighted) joint ELBO."""
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta, analytic_kl=c.analytic_kl, max_plate_nesting=1)

    # ------------------------------------------------------------------ stage 2
    def _strata(self, batch: MultimodalBatch) -> torch.Tensor:
        return torch.stack([batch.row_mask(m) for m in self.names], 0)  # (M, B)

    def unimodal_model(self, batch: MultimodalBatch) -> None:
        """Stage 2's model: one ``z`` per modality and row (``pyro.plate("experts", M)``); copy
        ``m`` scores only ``x_m`` (weighted by ``gamma_m``), only where the row observes ``m``."""
        self._check_batch(batch)
        self._announce_params()
        strata = self._strata(batch)
        own = torch.eye(len(self.names), dtype=torch.bool, device=strata.device)
        terms = {m: own[:, i:i + 1] for i, m in enumerate(self.names)}  # (M, 1): copy i scores modality i
        with pyro.plate("experts", len(self.names), dim=-2), pyro.plate("batch", batch.batch_size, dim=-1), \
                poutine.mask(mask=strata), _weighted(self.gamma_weights):
            z = pyro.sample("z", self.prior())
            self.observe(batch, z, term_masks=terms, scored=strata)

    def unimodal_guide(self, batch: MultimodalBatch) -> None:
        """Stage 2's guide: ``z_m ~ q_m(z | x_m)`` (its own mean and scale) where the row observes ``m``."""
        self._check_batch(batch)
        self._announce_params()
        loc, scale, mask = self.experts(batch)
        q = dist.Normal(loc.transpose(0, 1), scale.transpose(0, 1)).to_event(1)  # batch (M, B)
        with pyro.plate("experts", len(self.names), dim=-2), pyro.plate("batch", batch.batch_size, dim=-1), \
                poutine.mask(mask=mask.transpose(0, 1)):
            pyro.sample("z", q)

    def unimodal_loss(self, beta: float | None = None) -> pyro.infer.ELBO:
        """Stage 2's objective (``beta`` default: the config's), the negative sum of the unimodal
        ELBOs over modalities and rows."""
        c = self.config
        return ELBO(num_particles=c.num_particles, beta=c.beta if beta is None else beta,
                    analytic_kl=c.analytic_kl, max_plate_nesting=2)

    def stages(self) -> list:
        """Stage ``"joint"`` (every parameter on the joint ELBO, ``joint_epochs`` long), then
        stage ``"unimodal"`` (only the unimodal encoders ``encoders.*``, on the unimodal ELBOs,
        validated on them with ``beta = 1``) for the remaining epochs. The trainer gives each
        stage a fresh optimiser, so the optimiser is reset exactly at the switch."""
        from ..training.stages import Stage

        e = self.config.joint_epochs
        epochs = int(e) if float(e).is_integer() else float(e)
        return [
            Stage("joint", self.default_loss(), self.model, self.guide, epochs=epochs),
            Stage("unimodal", self.unimodal_loss(), self.unimodal_model, self.unimodal_guide,
                  trainable=("encoders.",),
                  validation=(self.unimodal_loss(beta=1.0), self.unimodal_model, self.unimodal_guide)),
        ]
