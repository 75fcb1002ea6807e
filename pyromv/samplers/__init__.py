"""Latent samplers and data augmentation: fit a density to the encoded training set, sample it,
decode the draws into a synthetic :class:`~pyromv.data.MultimodalDataset`.

Registered by name: ``"prior"`` (:class:`PriorSampler`), ``"gmm"``
(:class:`GaussianMixtureSampler`), ``"maf"`` (:class:`MAFSampler`) and ``"iaf"``
(:class:`IAFSampler`); :func:`build_sampler` builds one, :func:`load_sampler` reloads a saved one.
"""

from .base import (
    LatentSampler,
    NotFittedError,
    build_sampler,
    decode_latents,
    encode_latents,
    get_sampler_class,
    label_generations,
    load_sampler,
    register_sampler,
    registered_samplers,
)
from .evaluation import compare_samplers, fid_metric, held_out_log_density, joint_coherence_metric
from .flows import AutoregressiveFlow, IAFSampler, MAFSampler, split_codes
from .gmm import GaussianMixtureSampler
from .plots import plot_generations
from .prior import PriorSampler

__all__ = [
    "AutoregressiveFlow",
    "GaussianMixtureSampler",
    "IAFSampler",
    "LatentSampler",
    "MAFSampler",
    "NotFittedError",
    "PriorSampler",
    "build_sampler",
    "compare_samplers",
    "decode_latents",
    "encode_latents",
    "fid_metric",
    "get_sampler_class",
    "held_out_log_density",
    "joint_coherence_metric",
    "label_generations",
    "load_sampler",
    "plot_generations",
    "register_sampler",
    "registered_samplers",
    "split_codes",
]
