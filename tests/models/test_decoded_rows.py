"""Objectives decode only what they score: a decoder never runs on a latent whose likelihood term
is masked (a term without the modality, a row that misses it, a stratum the row does not use).

Counted with forward hooks on the decoders, on a partial batch whose patterns are known, against
the number of scored (particle, term or stratum, row) entries worked out by hand.
"""

import math

import pytest
import torch

from pyromv.data import Modality, make_batch
from pyromv.models import MMVAE, MVAE, MMVAEConfig, MoPoE, MoPoEConfig, MVAEConfig

MODS = [Modality(n, (4,), "normal", encoder={"name": "mlp", "kwargs": {"hidden_dims": [8]}},
                 decoder={"name": "mlp", "kwargs": {"hidden_dims": [8]}}) for n in ("a", "b", "c")]
OBSERVED = {  # rows: abc, a, b, ab, c, bc, ac
    "a": [1, 1, 0, 1, 0, 0, 1],
    "b": [1, 0, 1, 1, 0, 1, 0],
    "c": [1, 0, 0, 0, 1, 1, 1],
}


def _batch():
    g = torch.Generator().manual_seed(0)
    masks = {m: torch.tensor(v, dtype=torch.bool) for m, v in OBSERVED.items()}
    return make_batch(MODS, {m.name: torch.randn(7, 4, generator=g) for m in MODS}, masks)


def _decoded(model, batch) -> dict[str, int]:
    counts = dict.fromkeys(model.names, 0)
    hooks = [model.decoders[m].register_forward_hook(
        lambda mod, inp, out, m=m: counts.__setitem__(m, counts[m] + inp[0].shape[:-1].numel()))
        for m in model.names]
    model.default_loss().differentiable_loss(model.model, model.guide, batch)
    for h in hooks:
        h.remove()
    return counts


def _rows(m):
    return [b for b in range(7) if OBSERVED[m][b]]


def _n_observed(b):
    return sum(OBSERVED[m][b] for m in OBSERVED)


def test_mvae_subsampled_terms():
    """Joint + unimodal terms: modality m is scored in the joint term and in its own term, except
    on rows observing m alone, whose one term is both."""
    model = MVAE(MODS, MVAEConfig(latent_dim=2, num_random_subsets=0))
    expected = {m: sum(2 if _n_observed(b) > 1 else 1 for b in _rows(m)) for m in OBSERVED}
    assert _decoded(model, _batch()) == expected


@pytest.mark.parametrize("K", [1, 3])
def test_mmvae_strata(K):
    """Each observed expert of a row (K particles each) reconstructs every observed modality."""
    model = MMVAE(MODS, MMVAEConfig(latent_dim=2, num_particles=K))
    expected = {m: K * sum(_n_observed(b) for b in _rows(m)) for m in OBSERVED}
    assert _decoded(model, _batch()) == expected


def test_mopoe_subsets():
    """Stratified: every subset inside a row's observed modalities decodes each observed one;
    the paper's estimator: one latent per row."""
    model = MoPoE(MODS, MoPoEConfig(latent_dim=2, objective="stratified_elbo"))
    expected = {m: sum(2 ** _n_observed(b) - 1 for b in _rows(m)) for m in OBSERVED}
    assert _decoded(model, _batch()) == expected
    model = MoPoE(MODS, MoPoEConfig(latent_dim=2))
    assert _decoded(model, _batch()) == {m: len(_rows(m)) for m in OBSERVED}
    assert math.comb(3, 1) + math.comb(3, 2) + 1 == len(model.subsets)


def test_complete_rows_decode_everything_once_per_entry():
    model = MVAE(MODS, MVAEConfig(latent_dim=2, objective="elbo"))
    batch = make_batch(MODS, {m.name: torch.randn(5, 4) for m in MODS})
    assert _decoded(model, batch) == dict.fromkeys(OBSERVED, 5)
