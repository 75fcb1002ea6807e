r"""Variational dropout posteriors and the log-uniform prior (Molchanov et al. 2017).

A variational-dropout Gaussian ``q(z) = N(mu, alpha mu^2)`` scores its noise relative to its
mean, and with the improper log-uniform prior ``p(z) \propto 1 / |z|`` its KL divergence
depends on ``alpha`` alone:

.. math:: \mathrm{KL}(q \| p) = -\tfrac12 \log\alpha
          + \mathbb E_{\epsilon \sim N(1, \alpha)} \log|\epsilon| + C

(Kingma, Salimans & Welling 2015), defined up to the constant ``C`` of the improper
prior. Molchanov, Ashukha & Vetrov ("Variational Dropout Sparsifies Deep Neural Networks",
ICML 2017, eq. 14) fit

.. math:: -\mathrm{KL} \approx k_1\, \sigma(k_2 + k_3 \log\alpha)
          - \tfrac12 \log(1 + \alpha^{-1}) - k_1,
          \quad k_1 = 0.63576,\ k_2 = 1.87320,\ k_3 = 1.48695

which fixes ``C`` so that the KL vanishes as ``alpha -> inf`` (a dimension that is pure noise
costs nothing) and behaves as ``-1/2 log alpha + k_1`` as ``alpha -> 0``. The sparse MCVAE
(Antelmi et al. 2019) uses it with one ``alpha`` per latent dimension.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from pyro.distributions.util import broadcast_shape
from torch import Tensor
from torch.distributions import register_kl
from torch.distributions.utils import broadcast_all

K1, K2, K3 = 0.63576, 1.87320, 1.48695
#: ``log alpha`` is clipped to this range inside the KL (dropout rates 3e-4 to 0.9997), as in
#: Molchanov et al.'s and Antelmi et al.'s code: outside it the approximation's gradient is 0.
LOG_ALPHA_RANGE = (-8.0, 8.0)


def log_uniform_kl(log_alpha: Tensor) -> Tensor:
    r"""Molchanov et al.'s approximation of ``KL(N(mu, alpha mu^2) || p(z) \propto 1/|z|)``,
    element-wise in ``log alpha`` (no clipping):
    ``k1 - k1 sigmoid(k2 + k3 log alpha) + 1/2 log(1 + 1/alpha)``."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


class VariationalDropoutNormal(dist.Normal):
    r"""``N(loc, alpha loc^2)``: a Gaussian whose standard deviation is ``sqrt(alpha) |loc|``.

    Parameters
    ----------
    loc : Tensor
        The mean ``mu``.
    log_alpha : Tensor
        ``log alpha`` (broadcast against ``loc``); the dropout rate is
        ``alpha / (1 + alpha) = sigmoid(log alpha)``.
    eps : float
        Added to ``|loc|`` so that the scale stays positive where ``loc = 0`` (the official
        MCVAE code adds ``1e-8`` in the same place).
    """

    arg_constraints = {"loc": constraints.real, "log_alpha": constraints.real}

    def __init__(self, loc: Tensor, log_alpha: Tensor, eps: float = 1e-8, validate_args: bool | None = None) -> None:
        loc, log_alpha = broadcast_all(loc, log_alpha)
        self.log_alpha = log_alpha
        self.eps = eps
        super().__init__(loc, (0.5 * log_alpha).exp() * (loc.abs() + eps), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(VariationalDropoutNormal, _instance)
        new.log_alpha = self.log_alpha.expand(torch.Size(batch_shape))
        new.eps = self.eps
        return super().expand(batch_shape, _instance=new)


class ImproperLogUniform(TorchDistribution):
    r"""The improper log-uniform density ``p(z) \propto 1 / |z|`` on the reals (uniform in
    ``log |z|``), univariate with the given batch shape.

    ``log_prob`` is ``-log |z|`` (the normalising constant does not exist); it cannot be
    sampled. Its KL divergence from a :class:`VariationalDropoutNormal` is Molchanov et al.'s
    approximation (:func:`log_uniform_kl`, ``log alpha`` clipped to :data:`LOG_ALPHA_RANGE`).
    """

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, batch_shape: tuple[int, ...] | torch.Size = (), validate_args: bool | None = None) -> None:
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ImproperLogUniform, _instance)
        super(ImproperLogUniform, new).__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        lp = -value.abs().log()
        return lp.expand(broadcast_shape(lp.shape, self.batch_shape))

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError(
            "ImproperLogUniform is an improper density (p(z) proportional to 1/|z|) and cannot be sampled"
        )


@register_kl(VariationalDropoutNormal, ImproperLogUniform)
def _kl_dropout_log_uniform(p: VariationalDropoutNormal, q: ImproperLogUniform) -> Tensor:
    kl = log_uniform_kl(p.log_alpha.clamp(*LOG_ALPHA_RANGE))
    return kl.expand(broadcast_shape(kl.shape, p.batch_shape, q.batch_shape))
