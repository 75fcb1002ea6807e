import torch

from pyromv.data import Modality, MultimodalDataset, mcar
from pyromv.infer.importance import strata_weights, trace_pair
from pyromv.models import MoPoE, MoPoEConfig

MODS = [Modality("a", (3,)), Modality("b", (2,)), Modality("c", (4,))]


def test_strata_weights_average_over_the_subsets_inside_each_row_with_private_latents():
    g = torch.Generator().manual_seed(0)
    data = {m.name: torch.randn(40, *m.shape, generator=g) for m in MODS}
    batch = mcar(MultimodalDataset(MODS, data), 0.5, seed=2).batch()
    model = MoPoE(MODS, MoPoEConfig(latent_dim=2, private_latent_dim=2, objective="stratified_elbo"))
    _, guide_trace = trace_pair(model.model, model.guide, (batch,), {}, 3, 2)
    weights = strata_weights(guide_trace, -3, "experts", "batch", torch.Size([7, 40]))
    observed = torch.stack([batch.row_mask(m.name) for m in MODS], -1)  # (B, M)
    inside = torch.tensor([[all(observed[b, j] for j, m in enumerate(MODS) if m.name in s)
                            for b in range(40)] for s in model.subsets])
    expected = inside / inside.sum(0, keepdim=True)
    assert (observed.sum(-1) < 3).any()  # some rows miss modalities, so private masks differ
    torch.testing.assert_close(weights, expected.float())
