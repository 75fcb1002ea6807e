"""MHVAE (Dorent et al. 2023): the Pyro objective equals a hand-written torch loss (values and
gradients, complete and partial batches, every subset or drawn subsets); one level is MoPoE's
stratified ELBO with the prior expert on the same networks; drawn subsets stay inside what each
row observes and are uniform there; masking a modality equals removing it; on the linear-Gaussian
oracle the evaluation bound stays below the closed-form ``log p(X_O)``; bad configs are refused."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from pyromv.data import make_batch
from pyromv.infer import importance_log_weights
from pyromv.models import MHVAE, MHVAEConfig, MoPoE, MoPoEConfig
from pyromv.models.mhvae import sample_subsets
from pyromv.testing import assert_matches_reference
from pyromv.testing.reference.mhvae import mhvae_reference_loss
from tests.models import three_modalities as shared
from tests.models.three_modalities import MODS
from tests.oracles.linear_gaussian import LinearGaussian, modalities, set_decoders

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 16, seed: int = 3) -> dict[str, torch.Tensor]:
    return shared.data(n, seed)


def _batch(missing: float, n: int = 16):
    return shared.batch(missing, n)


def _model(mods=MODS, seed: int = 0, **cfg) -> MHVAE:
    torch.manual_seed(seed)
    return MHVAE(mods, MHVAEConfig(latent_dim=3, hidden_dim=12, feature_dim=5, **cfg))


# ---------------------------------------------------------------------- reference equality
CONFIGS = {
    "default": {},  # 3 levels, all 7 subsets, closed-form KL
    "capped-k2": {"max_subsets": 4, "num_particles": 2, "level_dims": [4, 2]},
    "per-modality-mc-kl": {"num_levels": 2, "shared_posterior_blocks": False, "analytic_kl": False,
                           "beta": 0.5, "num_particles": 3},
    "capped-one-level": {"num_levels": 1, "max_subsets": 2},
}


@pytest.mark.parametrize("missing", [0.0, 0.4], ids=["complete", "partial"])
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_loss_and_gradients_equal_the_torch_reference(cfg, missing):
    model = _model(**cfg)
    batch = _batch(missing)
    if missing:
        assert not all(bool(batch.row_mask(m).all()) for m in model.names)
    assert_matches_reference(model, mhvae_reference_loss, batch)


def test_the_reference_check_catches_a_different_subset_draw():
    """Positive control: a reference whose subsets come from other draws is caught."""
    model = _model(max_subsets=3)
    batch = _batch(0.0)

    def shifted(m, b):
        torch.rand(1)  # one extra draw before the subsets
        return mhvae_reference_loss(m, b)

    with pytest.raises(AssertionError):
        assert_matches_reference(model, shifted, batch)


# ---------------------------------------------------------------------- one level = MoPoE's PoE subsets
class _TopExpert(nn.Module):
    """MHVAE's top expert ``q_m(z_L | x_m)`` of one modality as a registered-style encoder."""

    def __init__(self, model: MHVAE, name: str) -> None:
        super().__init__()
        self.encoder, self.head = model.encoders[name], model.top_experts[name]

    def forward(self, x):
        loc, scale = self.encoder(x)
        return self.head(torch.cat([loc, scale.log()], -1))


@pytest.mark.parametrize("missing", [0.0, 0.4], ids=["complete", "partial"])
def test_one_level_is_mopoes_stratified_elbo_with_the_prior_expert(missing):
    """With ``L = 1`` the objective is ``mean_{s in S_O} [E_{q_s} log p(X_O|z) - KL(q_s || p)]``,
    ``q_s`` the PoE of the prior and the subset's experts: MoPoE's ``stratified_elbo`` with
    ``prior_expert=True``, run on MHVAE's own networks (same subsets in the same order)."""
    model = _model(num_levels=1, beta=0.7)
    mopoe = MoPoE(MODS, MoPoEConfig(latent_dim=3, objective="stratified_elbo", prior_expert=True, beta=0.7))
    for m in model.names:
        mopoe.encoders[m] = _TopExpert(model, m)
        mopoe.decoders[m] = model.decoders[m]
    batch = _batch(missing)
    params = [p for p in model.parameters()]
    results = []
    for vae in (model, mopoe):
        torch.manual_seed(4)
        loss = vae.default_loss().differentiable_loss(vae.model, vae.guide, batch)
        results.append((loss, torch.autograd.grad(loss, params)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_level_matches_a_hand_computed_subset_average():
    """L = 1, one row observing ``vec`` only: the only subset is ``{vec}``; the loss with
    ``beta = 1`` is ``-(log p(x | z) - KL(q || p))`` for ``q = PoE(prior, q_vec)``, by hand."""
    model = _model(num_levels=1)
    batch = make_batch(MODS, _data(1), {"img": torch.tensor([False]), "vec": torch.tensor([True]),
                                        "tag": torch.tensor([False])})
    torch.manual_seed(2)
    loss = model.default_loss().differentiable_loss(model.model, model.guide, batch)
    loc, scale = _TopExpert(model, "vec")(batch.data["vec"])
    precision = 1 + scale**-2
    mu, sigma = loc * scale**-2 / precision, precision.rsqrt()
    torch.manual_seed(2)
    eps = torch.randn(7, 1, 3)[1]  # the 7 subsets draw together; {vec} is the second
    z = mu + sigma * eps
    x_mean = model.decoders["vec"](z)
    log_lik = torch.distributions.Normal(x_mean, 0.7).log_prob(batch.data["vec"]).sum()
    kl = 0.5 * (sigma**2 + mu**2 - 1 - (sigma**2).log()).sum()
    torch.testing.assert_close(loss, -(log_lik - kl), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- subsets
def test_drawn_subsets_stay_inside_the_observed_set_and_are_uniform():
    g = torch.Generator().manual_seed(0)
    observed = torch.rand(200, 6, generator=g) < 0.5
    observed[0] = False
    observed[1, :] = torch.tensor([True, False, True, False, False, True])
    torch.manual_seed(0)
    member = sample_subsets(observed, 3000)  # (3000, 200, 6)
    assert not (member & ~observed).any()  # never an unobserved modality
    has = observed.any(-1)
    assert member[:, has].any(-1).all()  # never empty where something is observed
    assert not member[:, 0].any()  # a row observing nothing gets nothing
    # row 1 observes {0, 2, 5}: its 7 non-empty subsets each with probability 1/7
    codes = (member[:, 1][:, [0, 2, 5]].long() * torch.tensor([1, 2, 4])).sum(-1)
    counts = torch.bincount(codes, minlength=8).double()
    assert counts[0] == 0
    p = 1 / 7
    se = math.sqrt(3000 * p * (1 - p))
    # statistical check: 5 SE two-sided: false-alarm rate 5.7e-7 per entry, summed over entries (normal approx.)
    assert ((counts[1:] - 3000 * p).abs() < 5 * se).all(), counts


def test_capped_guide_scores_only_observed_modalities():
    """The capped guide's subsets lie inside each row's observed set: changing the data of the
    entries a row misses changes nothing (same seed, same subsets, same loss)."""
    model = _model(max_subsets=3)
    batch = _batch(0.4)
    other = _data(16, seed=9)
    changed = {m: torch.where(batch.row_mask(m).view(-1, *[1] * (other[m].dim() - 1)), batch.data[m], other[m])
               for m in model.names}
    changed_batch = make_batch(MODS, changed, {m: batch.row_mask(m) for m in model.names})
    losses = []
    for b in (batch, changed_batch):
        torch.manual_seed(1)
        losses.append(model.default_loss().differentiable_loss(model.model, model.guide, b))
    assert torch.equal(losses[0], losses[1])


def test_enumerated_subsets_are_every_non_empty_subset_inside_the_row():
    model = _model()
    observed = torch.tensor([[True, True, True], [False, True, True], [False, False, True]])
    member, active = model.subset_slots(observed)
    subsets = [set(s) for r in range(1, 4) for s in itertools.combinations(range(3), r)]
    assert [set(torch.nonzero(row).flatten().tolist()) for row in member[:, 0]] == subsets
    for b in range(3):
        inside = [s <= set(torch.nonzero(observed[b]).flatten().tolist()) for s in subsets]
        assert active[:, b].tolist() == inside


# ---------------------------------------------------------------------- masking = removing
def test_masking_a_modality_equals_removing_it():
    """The likelihood pair (``iw_model``/``iw_guide``) of a model with ``img`` masked in every
    row gives the same log-weights per row as the model built without ``img`` (same networks)."""
    full = _model()
    small = MHVAE(MODS[1:], full.config)
    state = full.state_dict()
    small.load_state_dict({k: v for k, v in state.items() if k in small.state_dict()})
    data = _data(8)
    masks = {"img": torch.zeros(8, dtype=torch.bool), "vec": torch.ones(8, dtype=torch.bool),
             "tag": torch.tensor([True, False] * 4)}
    lws = []
    for vae, mods in ((full, MODS), (small, MODS[1:])):
        batch = make_batch(mods, {m.name: data[m.name] for m in mods}, {m.name: masks[m.name] for m in mods})
        torch.manual_seed(3)
        lws.append(importance_log_weights(vae.iw_model, vae.iw_guide, batch, num_particles=4,
                                          max_plate_nesting=1))
    torch.testing.assert_close(lws[0], lws[1], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- linear-Gaussian oracle
def test_evaluation_bound_is_the_closed_form_subset_average_below_log_p():
    """One level, the true linear decoders: the model's marginal is the oracle's. After training
    the encoders, the evaluation objective of every row agrees (4 standard errors) with the
    closed-form ``mean_{s in S_O} [E_{q_s} log p(X_O | z) - KL(q_s || p)]`` of the model's own
    products of experts, and that stays below ``log p(X_O)``, within 2 nats on average."""
    lg = LinearGaussian.random({"a": 3, "b": 4}, 2, {"a": 0.5, "b": 0.8}, seed=0)
    torch.manual_seed(0)
    model = MHVAE(modalities(lg), MHVAEConfig(latent_dim=2, num_levels=1, hidden_dim=8, feature_dim=4))
    set_decoders(model, lg)
    data = lg.sample(64, seed=1)
    masks = {"a": torch.ones(64, dtype=torch.bool), "b": torch.arange(64) % 3 != 0}
    train = make_batch(model.modalities, data, masks)
    for p in model.decoders.parameters():
        p.requires_grad_(False)  # keep the true decoders
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model.default_loss()
    for _ in range(300):
        opt.zero_grad()
        loss.differentiable_loss(model.model, model.guide, train).backward()
        opt.step()
    with torch.no_grad():
        feats, loc, scale, observed = model.level_features(train)
        member, active = model.subset_slots(observed)
        q = model.top_posterior(loc, scale, member)  # (S, B)
        per_subset = torch.stack([lg.elbo(data, q.loc[s].double(), q.scale[s].double(), masks)
                                  for s in range(member.shape[0])])
        exact = (per_subset * active / active.sum(0)).sum(0)
        reps = 200
        batch = make_batch(model.modalities, {m: v.repeat(reps, 1) for m, v in data.items()},
                           {m: v.repeat(reps) for m, v in masks.items()})
        bound = model.evaluation_loss().per_datum(model.model, model.guide, batch).reshape(reps, -1).double()
    se = bound.std(0) / math.sqrt(reps)
    # statistical check: 4 SE two-sided: false-alarm rate 6.3e-5 per entry, summed over entries (normal approx.)
    assert ((bound.mean(0) - exact).abs() < 4 * se).all()
    gap = exact - lg.log_marginal(data, masks)
    assert (gap < 0).all()
    assert gap.mean() > -2.0


# ---------------------------------------------------------------------- surface
def test_encode_is_the_top_level_and_generation_goes_top_down():
    model = _model(level_dims=[4, 2])
    batch = _batch(0.4)
    q = model.encode(batch)
    assert q.batch_shape == (16,) and q.event_shape == (3,)
    assert model.decoders["vec"].net[0].in_features == 2  # decoders read z_1
    torch.manual_seed(0)
    z1 = model._descend(torch.zeros(5, 3), sample=True)
    assert z1.shape == (5, 2)
    out = model.generate(5)
    assert out["vec"].shape == (5, 5)


@pytest.mark.parametrize("cfg, match", [
    ({"num_levels": 0}, "num_levels"),
    ({"num_levels": 3, "level_dims": [4]}, "level_dims"),
    ({"num_levels": 2, "level_dims": [0]}, "level_dims"),
    ({"max_subsets": 0}, "max_subsets"),
    ({"hidden_dim": 0}, "hidden_dim"),
])
def test_bad_configs_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        MHVAE(MODS, MHVAEConfig(**cfg))


def test_bad_batches_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="modalities"):
        model.encode(make_batch(MODS[1:], {m.name: _data(4)[m.name] for m in MODS[1:]}))
