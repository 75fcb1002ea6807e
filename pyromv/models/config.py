"""Options shared by every model; each model extends this dataclass with its paper's options."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Common options (also a Hydra structured config).

    Attributes
    ----------
    latent_dim : int
        Size of the shared latent ``z``.
    beta : float
        Weight of the KL term (1 is the ELBO).
    num_particles : int
        Particles of the default objective (``K`` for IWAE).
    prior_scale : float
        Standard deviation of the ``N(0, prior_scale^2 I)`` prior.
    likelihood_rescaling : str
        ``"none"`` or ``"dims"``: weight each modality's log-likelihood by
        ``max_j dim_j / dim_m`` so small modalities are not drowned by large ones (Shi et al.
        2019, App. B; multiplies each modality's own ``rescale``).
    """

    latent_dim: int = 16
    beta: float = 1.0
    num_particles: int = 1
    prior_scale: float = 1.0
    likelihood_rescaling: str = "none"

    def validate(self) -> None:
        """Check the options; raise ValueError/TypeError naming the first bad one."""
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles}")
        if self.likelihood_rescaling not in ("none", "dims"):
            raise ValueError(f"likelihood_rescaling must be 'none' or 'dims', got {self.likelihood_rescaling!r}")
        if not self.prior_scale > 0:
            raise ValueError(f"prior_scale must be positive, got {self.prior_scale}")
