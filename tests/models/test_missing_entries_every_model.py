"""Missing entries on every registered model: what hides in a hole never reaches a number.

A data set whose ``vec`` modality misses single entries switches that modality's encoder to
mask-aware; for every registered model (default options) the training loss, its gradients and
the encoding must then not depend on the values a batch holds at missing entries — the
likelihood masks them and the encoders see zeros there plus the mask. (A data set zero-fills its
holes; a batch built by hand need not, so the batch is filled here with other numbers, huge
ones, and everything recomputed under the same seed must agree bit for bit.)
"""

from __future__ import annotations

import pyro
import pytest
import torch

from pyromv.data import MultimodalBatch, MultimodalDataset
from pyromv.models import get_model_class, registered_models
from tests.models.test_common_surface import MODS, PARTIAL, _data

pytestmark = pytest.mark.usefixtures("one_thread")


def _dataset() -> MultimodalDataset:
    masks = {k: torch.tensor(v, dtype=torch.bool) for k, v in PARTIAL.items()}
    vec = masks["vec"][:, None].expand(-1, 5).clone()
    vec[0, :2] = False  # row 0 misses two entries of vec, row 3 one
    vec[3, 4] = False
    masks["vec"] = vec
    return MultimodalDataset(MODS, _data(), masks)


def _loss(name: str, fill: float) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    ds = _dataset()
    assert ds.modality("vec").mask_aware == "on" and ds.modality("img").mask_aware != "on"
    torch.manual_seed(0)
    cls = get_model_class(name)
    model = cls(ds.modalities, cls.config_class(latent_dim=3))
    zero_filled = ds.batch()
    vec = torch.where(zero_filled.obs_mask["vec"], zero_filled.data["vec"], torch.tensor(fill))
    batch = MultimodalBatch({**zero_filled.data, "vec": vec}, zero_filled.obs_mask, zero_filled.labels)
    pyro.set_rng_seed(1)
    loss = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    with torch.no_grad():
        code = model.encode(batch).mean
    return loss.detach(), [g for g in grads if g is not None], code


@pytest.mark.parametrize("name", registered_models())
def test_values_at_missing_entries_do_not_matter(name):
    loss, grads, code = _loss(name, 0.0)
    loss_far, grads_far, code_far = _loss(name, 1e6)
    assert torch.isfinite(loss)
    assert torch.equal(loss, loss_far)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_far))
    assert torch.equal(code, code_far)
