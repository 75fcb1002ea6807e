"""A Gaussian mixture fitted to the latent codes (fitted by scikit-learn, evaluated in torch)."""

from __future__ import annotations

import warnings

import numpy as np
import pyro.distributions as dist
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import Tensor

from .base import LatentSampler, register_sampler

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@register_sampler("gmm")
class GaussianMixtureSampler(LatentSampler):
    r"""``r(z) = \sum_k \pi_k N(z; \mu_k, \Sigma_k)`` fitted to the codes by EM.

    The ex-post density of Ghosh et al. (ICLR 2020), as MultiVae (Senellart et al. 2023) uses it
    for multimodal VAEs. EM runs in scikit-learn's :class:`~sklearn.mixture.GaussianMixture`;
    the fitted weights, means and Cholesky factors ``L_k`` (``\Sigma_k = L_k L_k^T``) are kept as
    float64 tensors, and :meth:`sample` / :meth:`log_density` use torch
    (``MixtureSameFamily(Categorical(pi), MultivariateNormal(mu, scale_tril=L))``). Saving stores
    these tensors and the options, no pickled estimator.

    Parameters
    ----------
    n_components : int
        Number of components ``K``.
    covariance_type : str
        ``"full"``, ``"tied"`` (one shared ``Sigma``), ``"diag"`` or ``"spherical"``.
    reg_covar : float
        Added to the covariances' diagonals (keeps collapsed latent dimensions invertible).
    max_iter, n_init, tol : EM options of scikit-learn.
    seed : int
        ``random_state`` of the k-means initialisation.
    """

    def __init__(
        self,
        n_components: int = 10,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        max_iter: int = 200,
        n_init: int = 1,
        tol: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(n_components, bool) or int(n_components) != n_components or n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
            )
        if not reg_covar >= 0:
            raise ValueError(f"reg_covar must be >= 0, got {reg_covar}")
        if int(max_iter) < 1 or int(n_init) < 1:
            raise ValueError(f"max_iter and n_init must be >= 1, got {max_iter}, {n_init}")
        self.n_components = int(n_components)
        self.covariance_type = covariance_type
        self.reg_covar = float(reg_covar)
        self.max_iter = int(max_iter)
        self.n_init = int(n_init)
        self.tol = float(tol)
        self.seed = int(seed)
        self.weights: Tensor | None = None
        self.means: Tensor | None = None
        self.scale_tril: Tensor | None = None

    def options(self) -> dict:
        return {
            "n_components": self.n_components,
            "covariance_type": self.covariance_type,
            "reg_covar": self.reg_covar,
            "max_iter": self.max_iter,
            "n_init": self.n_init,
            "tol": self.tol,
            "seed": self.seed,
        }

    def _fit_codes(self, codes: Tensor) -> None:
        n, d = codes.shape
        if self.n_components > n:
            raise ValueError(f"n_components={self.n_components} exceeds the {n} codes to fit")
        gm = GaussianMixture(
            n_components=self.n_components, covariance_type=self.covariance_type,
            reg_covar=self.reg_covar, max_iter=self.max_iter, n_init=self.n_init, tol=self.tol,
            random_state=self.seed,
        )
        x = codes.detach().cpu().double().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(x)
        if not gm.converged_:
            warnings.warn(
                f"GaussianMixtureSampler: EM did not converge in {self.max_iter} iterations "
                "(raise max_iter or tol)", UserWarning, stacklevel=3,
            )
        k = self.n_components
        cov = torch.as_tensor(np.asarray(gm.covariances_), dtype=torch.float64)
        if self.covariance_type == "tied":
            cov = cov.expand(k, d, d)
        elif self.covariance_type == "diag":
            cov = torch.diag_embed(cov)
        elif self.covariance_type == "spherical":
            cov = cov[:, None, None] * torch.eye(d, dtype=torch.float64)
        self.weights = torch.as_tensor(gm.weights_, dtype=torch.float64)
        self.means = torch.as_tensor(gm.means_, dtype=torch.float64)
        self.scale_tril = torch.linalg.cholesky(cov).contiguous()
        self.fit_info = {
            "converged": bool(gm.converged_),
            "n_iter": int(gm.n_iter_),
            "train_log_density": float(gm.score(x)),
        }

    def mixture(self) -> dist.MixtureSameFamily:
        """The fitted mixture as a torch distribution (float64, event shape ``(D,)``)."""
        self._check_fitted("mixture")
        return dist.MixtureSameFamily(
            dist.Categorical(probs=self.weights),
            dist.MultivariateNormal(self.means, scale_tril=self.scale_tril),
        )

    def _sample(self, n: int) -> Tensor:
        return self.mixture().sample((n,)).to(torch.get_default_dtype())

    def _log_density(self, codes: Tensor) -> Tensor:
        return self.mixture().log_prob(codes.to(self.means)).to(codes.dtype)

    def _tensors(self) -> dict[str, Tensor]:
        return {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril}

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        self.weights = tensors["weights"]
        self.means = tensors["means"]
        self.scale_tril = tensors["scale_tril"]
        if tuple(self.means.shape) != (self.n_components, self.latent_dim):
            raise ValueError(
                f"saved means have shape {tuple(self.means.shape)}; expected "
                f"({self.n_components}, {self.latent_dim})"
            )
