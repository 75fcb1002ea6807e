"""MAF and IAF: directions, change of variables against a hand computation, the validation
split, early stopping, reproducibility and transform caches."""

import math

import pytest
import torch

from pyromv.samplers import IAFSampler, MAFSampler, split_codes

D = 3
SMALL = {"num_layers": 3, "hidden_dims": [8], "max_epochs": 3, "progress": False}


def _codes(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, D, generator=g)
    return torch.stack([z[:, 0], z[:, 1] + 0.5 * z[:, 0] ** 2, 0.3 * z[:, 2] - z[:, 1]], 1) * 2 + 1


def _layers_forward(flow, h):
    """``l_{K-1} o P_{K-2} o ... o P_0 o l_0`` by hand from the MADE outputs, with its log|det|."""
    logdet = torch.zeros(h.shape[:-1])
    for k, layer in enumerate(flow.layers):
        mean, log_scale = layer.arn(h)
        log_scale = log_scale.clamp(layer.log_scale_min_clip, layer.log_scale_max_clip)
        h = h * log_scale.exp() + mean
        logdet = logdet + log_scale.sum(-1)
        if k < len(flow.layers) - 1:
            h = h[..., flow.permutation(k)]
    return h, logdet


def _std_normal_log_prob(u):
    return -0.5 * (u**2).sum(-1) - 0.5 * u.shape[-1] * math.log(2 * math.pi)


def _fitted(cls, **kw):
    return cls(**{**SMALL, **kw}).fit_codes(_codes())


def _count_made_calls(flow):
    calls = []
    handles = [layer.arn.register_forward_hook(lambda *_: calls.append(1)) for layer in flow.layers]
    return calls, handles


@pytest.mark.parametrize("cls", [MAFSampler, IAFSampler])
def test_fast_direction_is_one_made_pass_per_layer(cls):
    sampler = _fitted(cls)
    flow, k = sampler.flow, SMALL["num_layers"]
    calls, handles = _count_made_calls(flow)
    sampler.log_density(_codes(10, seed=5))
    density_calls = len(calls)
    calls.clear()
    sampler.sample(10)
    sample_calls = len(calls)
    for h in handles:
        h.remove()
    if cls is MAFSampler:  # density fast, sampling sequential
        assert (density_calls, sample_calls) == (k, k * D)
    else:  # sampling fast, density of external points sequential
        assert (density_calls, sample_calls) == (k * D, k)


@torch.no_grad()
def test_maf_log_density_is_the_change_of_variables():
    sampler = _fitted(MAFSampler)
    flow = sampler.flow
    x = _codes(50, seed=3)
    # data -> base: undo the standardisation, then the layers forward
    u, logdet = _layers_forward(flow, (x - flow.shift) / flow.spread)
    expected = _std_normal_log_prob(u) + logdet - flow.spread.log().sum()
    assert torch.allclose(sampler.log_density(x), expected, atol=1e-5)


@torch.no_grad()
def test_iaf_log_density_of_external_points_is_the_change_of_variables():
    sampler = _fitted(IAFSampler)
    flow = sampler.flow
    u = torch.randn(50, D)
    h, logdet = _layers_forward(flow, u)  # base -> data
    x = (flow.shift + flow.spread * h).clone()  # a fresh tensor: nothing cached about it
    expected = _std_normal_log_prob(u) - logdet - flow.spread.log().sum()
    assert torch.allclose(sampler.log_density(x), expected, atol=1e-4)


@pytest.mark.parametrize("cls", [MAFSampler, IAFSampler])
@torch.no_grad()
def test_samples_are_base_noise_pushed_through_the_flow(cls):
    sampler = _fitted(cls)
    flow, n = sampler.flow, 40
    torch.manual_seed(11)
    eps = torch.normal(torch.zeros(n, D), torch.ones(n, D))
    torch.manual_seed(11)
    x = sampler.sample(n)
    if cls is IAFSampler:  # x = A(f(eps))
        h, _ = _layers_forward(flow, eps)
        assert torch.allclose(x, flow.shift + flow.spread * h, atol=1e-5)
    else:  # f(A^{-1}(x)) = eps
        u, _ = _layers_forward(flow, (x - flow.shift) / flow.spread)
        assert torch.allclose(u, eps, atol=1e-4)


def test_split_codes_is_a_reproducible_partition():
    train, val = split_codes(100, 0.2, seed=4)
    assert len(val) == 20 and len(train) == 80
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again = split_codes(100, 0.2, seed=4)
    assert torch.equal(again[1], val)
    assert not torch.equal(split_codes(100, 0.2, seed=5)[1], val)
    assert len(split_codes(10, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        split_codes(10, 1.0, seed=0)


def test_standardisation_uses_the_training_part_only():
    codes = _codes()
    sampler = MAFSampler(**SMALL, val_fraction=0.25, seed=2).fit_codes(codes)
    train_idx, _ = split_codes(len(codes), 0.25, seed=2)
    assert torch.allclose(sampler.flow.shift, codes[train_idx].mean(0))
    assert torch.allclose(sampler.flow.spread, codes[train_idx].std(0))
    assert sampler.fit_info["train_rows"] == len(train_idx)
    plain = MAFSampler(**SMALL, standardize=False).fit_codes(codes)
    assert torch.equal(plain.flow.shift, torch.zeros(D))
    assert torch.equal(plain.flow.spread, torch.ones(D))


def test_early_stopping_restores_the_best_validation_state():
    codes = _codes(60)
    # a large learning rate on few codes overfits quickly: validation stops improving
    sampler = MAFSampler(num_layers=2, hidden_dims=[32], lr=0.05, max_epochs=300, patience=3,
                         val_fraction=0.3, progress=False).fit_codes(codes)
    info, history = sampler.fit_info, sampler.history
    assert info["stopped_early"]
    assert info["epochs"] == len(history) == info["best_epoch"] + 3 < 300
    vals = [r["val_nll"] for r in history]
    assert info["best_val_nll"] == min(vals) == vals[info["best_epoch"] - 1]
    _, val_idx = split_codes(len(codes), 0.3, seed=0)
    nll = -sampler.log_density(codes[val_idx]).mean()
    assert float(nll) == pytest.approx(info["best_val_nll"], abs=1e-5)


def test_no_validation_trains_every_epoch():
    sampler = MAFSampler(**{**SMALL, "max_epochs": 4}, val_fraction=0.0).fit_codes(_codes())
    assert len(sampler.history) == 4
    assert all("val_nll" not in r for r in sampler.history)
    assert sampler.fit_info["best_val_nll"] is None and not sampler.fit_info["stopped_early"]
    never = MAFSampler(**{**SMALL, "max_epochs": 4}, patience=0).fit_codes(_codes())
    assert len(never.history) == 4


@pytest.mark.parametrize("cls", [MAFSampler, IAFSampler])
def test_fit_is_reproducible_and_leaves_the_global_rng_alone(cls):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = _fitted(cls)
    assert torch.equal(torch.get_rng_state(), state)
    b = _fitted(cls)
    x = _codes(20, seed=9)
    assert torch.equal(a.log_density(x), b.log_density(x))
    c = _fitted(cls, seed=1)
    assert not torch.equal(a.log_density(x), c.log_density(x))


@pytest.mark.parametrize("cls", [MAFSampler, IAFSampler])
def test_no_transform_cache_outlives_a_call(cls):
    sampler = _fitted(cls)
    sampler.log_density(_codes(5))
    sampler.sample(5)
    for layer in sampler.flow.layers:
        assert layer._cached_x_y == (None, None)
        assert layer._cached_log_scale is None
    # training steps change the parameters: a cached value would be stale
    x = _codes(8, seed=2)
    before = sampler.log_density(x)
    with torch.no_grad():
        for p in sampler.flow.parameters():
            p.add_(0.05)
    after = sampler.log_density(x)
    assert not torch.allclose(before, after)


def test_fitting_restores_the_thread_count():
    before = torch.get_num_threads()
    seen = []
    sampler = MAFSampler(**SMALL, num_threads=1)
    original = sampler._train
    sampler._train = lambda *a: (seen.append(torch.get_num_threads()), original(*a))
    sampler.fit_codes(_codes())
    assert seen == [1] and torch.get_num_threads() == before


def test_flow_options_are_checked():
    with pytest.raises(ValueError, match="num_layers"):
        MAFSampler(num_layers=0)
    with pytest.raises(ValueError, match="hidden_dims"):
        MAFSampler(hidden_dims=[])
    with pytest.raises(ValueError, match="val_fraction"):
        IAFSampler(val_fraction=1.0)
    with pytest.raises(ValueError, match="patience"):
        IAFSampler(patience=-1)
    with pytest.raises(ValueError, match="num_threads"):
        IAFSampler(num_threads=-1)
    with pytest.raises(ValueError, match="at least the latent size"):
        MAFSampler(hidden_dims=[2], progress=False).fit_codes(_codes())
    with pytest.raises(ValueError, match="dimension >= 2"):
        MAFSampler(progress=False).fit_codes(torch.randn(20, 1))
