"""The sampler interface: registry, fitting through a model's guide (partial rows included),
save/load round trips, generate() and labels, data augmentation end to end, errors."""

import dataclasses
import json

import pytest
import torch
from sklearn.mixture import GaussianMixture

from pyromv import metrics
from pyromv.data import Modality, MultimodalDataset, mcar
from pyromv.models import MVAE, MVAEConfig, get_model_class, registered_models
from pyromv.samplers import (
    GaussianMixtureSampler,
    IAFSampler,
    LatentSampler,
    MAFSampler,
    NotFittedError,
    PriorSampler,
    build_sampler,
    compare_samplers,
    decode_latents,
    encode_latents,
    fid_metric,
    get_sampler_class,
    held_out_log_density,
    joint_coherence_metric,
    label_generations,
    load_sampler,
    plot_generations,
    registered_samplers,
)
from pyromv.training import Trainer, TrainerConfig

N, D = 40, 2
MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality("img", (1, 4, 4), "continuous_bernoulli", encoder=MLP, decoder=MLP),
    Modality("vec", (3,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
    Modality("cat", (2,), "categorical", {"num_categories": 3}, encoder=MLP, decoder=MLP),
]
FLOW = {"num_layers": 2, "hidden_dims": [8], "max_epochs": 3, "progress": False}
OPTIONS = {"prior": {}, "gmm": {"n_components": 2}, "maf": FLOW, "iaf": FLOW}


def _dataset(n=N, seed=0, partial=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    data = {
        "img": torch.sigmoid(z @ torch.randn(2, 16, generator=g)).reshape(n, 1, 4, 4),
        "vec": z @ torch.randn(2, 3, generator=g) + 0.1 * torch.randn(n, 3, generator=g),
        "cat": (z[:, :1] > 0).long().expand(n, 2) + (z[:, 1:] > 1).long(),
    }
    ds = MultimodalDataset(MODS, data, labels=(z[:, 0] > 0).long())
    return mcar(ds, 0.3, seed=seed) if partial else ds


def _model(seed=0):
    torch.manual_seed(seed)
    return MVAE(MODS, MVAEConfig(latent_dim=D))


def _fitted(name, model=None, data=None):
    model = model if model is not None else _model()
    return build_sampler(name, **OPTIONS[name]).fit(model, data if data is not None else _dataset())


# ---------------------------------------------------------------------- registry and errors
def test_registry_builds_by_name():
    assert registered_samplers() == ["gmm", "iaf", "maf", "prior"]
    for name, cls in [("prior", PriorSampler), ("gmm", GaussianMixtureSampler),
                      ("maf", MAFSampler), ("iaf", IAFSampler)]:
        assert get_sampler_class(name) is cls
        assert isinstance(build_sampler(name, **OPTIONS[name]), cls)
    with pytest.raises(ValueError, match="unknown sampler 'vae'.*gmm"):
        build_sampler("vae")
    with pytest.raises(TypeError, match="sampler 'gmm' rejected"):
        build_sampler("gmm", num_layers=3)


@pytest.mark.parametrize("name", ["prior", "gmm", "maf", "iaf"])
def test_using_an_unfitted_sampler_is_a_clear_error(name, tmp_path):
    sampler = build_sampler(name, **OPTIONS[name])
    for call in (lambda: sampler.sample(3), lambda: sampler.log_density(torch.zeros(2, D)),
                 lambda: sampler.generate(3), lambda: sampler.save(tmp_path)):
        with pytest.raises(NotFittedError, match="not fitted: call fit"):
            call()


def test_bad_input_is_refused():
    gmm = GaussianMixtureSampler(n_components=2)
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixtureSampler(n_components=0)
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianMixtureSampler(covariance_type="banded")
    with pytest.raises(ValueError, match="shape \\(N, D\\)"):
        gmm.fit_codes(torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        gmm.fit_codes(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="exceeds the 3 codes"):
        GaussianMixtureSampler(n_components=4).fit_codes(torch.randn(3, 2))
    gmm.fit_codes(torch.randn(30, D))
    with pytest.raises(ValueError, match="dimension 3; the sampler models 2"):
        gmm.log_density(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="positive int"):
        gmm.sample(0)
    with pytest.raises(ValueError, match="no model to decode with"):
        gmm.generate(2)
    with pytest.raises(ValueError, match="latent_dim is 3"):
        gmm.attach(MVAE(MODS, MVAEConfig(latent_dim=3)))
    with pytest.raises(ValueError, match="needs the dataset"):
        gmm.fit(_model())
    with pytest.raises(TypeError, match="MultimodalVAE"):
        gmm.fit("model", _dataset())
    with pytest.raises(ValueError, match="codes must be one of"):
        gmm.fit(_model(), _dataset(), codes="mode")
    with pytest.raises(TypeError, match="fit\\(model\\)"):
        PriorSampler().fit_codes(torch.randn(10, D))


def test_refitting_replaces_the_previous_fit():
    sampler = GaussianMixtureSampler(n_components=2).fit_codes(torch.randn(30, 2))
    sampler.fit_codes(torch.randn(30, 3))
    assert sampler.latent_dim == 3 and sampler.sample(4).shape == (4, 3)


# ---------------------------------------------------------------------- fitting through the guide
@torch.no_grad()
def test_codes_are_the_fused_posterior_means_of_every_row():
    model, data = _model(), _dataset()
    assert data.observed_fraction()["img"] < 1  # rows with missing modalities are included
    codes = encode_latents(model, data, batch_size=7)
    model.eval()
    assert torch.allclose(codes, model.encode(data.batch()).mean, atol=1e-6)
    # a posterior draw per row: mean + scale * eps under the same seed
    torch.manual_seed(3)
    drawn = encode_latents(model, data, codes="sample", batch_size=N)
    torch.manual_seed(3)
    assert torch.allclose(drawn, model.encode(data.batch()).sample())
    sampler = GaussianMixtureSampler(n_components=2).fit(model, data)
    assert sampler.fit_info["rows"] == N and sampler.fit_info["codes"] == "mean"
    direct = GaussianMixtureSampler(n_components=2).fit_codes(codes)
    assert torch.allclose(sampler.log_density(codes), direct.log_density(codes), atol=1e-5)


def test_encoding_restores_the_model_mode():
    model = _model()
    model.train()
    encode_latents(model, _dataset())
    assert model.training


def test_prior_sampler_is_the_model_prior():
    model = MVAE(MODS, MVAEConfig(latent_dim=D, prior_scale=2.0))
    sampler = PriorSampler().fit(model)
    z = torch.randn(6, D)
    expected = torch.distributions.Normal(0.0, 2.0).log_prob(z).sum(-1)
    assert torch.allclose(sampler.log_density(z), expected)
    torch.manual_seed(0)
    draws = sampler.sample(20000)
    # statistical check: SE of a sample sd is 2 / sqrt(2 x 20000) = 0.01, so 0.05 is 5 SE: false-alarm rate
    # 5.7e-7 per coordinate (normal approx.)
    assert torch.allclose(draws.std(0), torch.full((D,), 2.0), atol=0.05)


def test_prior_sampler_keeps_a_laplace_prior(tmp_path):
    """MMVAE's prior is Laplace: the sampler draws and scores that family, and reloads it."""
    from pyromv.models import MMVAE, MMVAEConfig

    model = MMVAE(MODS, MMVAEConfig(latent_dim=D, prior_scale=0.5))
    sampler = PriorSampler().fit(model)
    assert sampler.family == "laplace"
    z = torch.randn(6, D)
    expected = torch.distributions.Laplace(0.0, 0.5).log_prob(z).sum(-1)
    assert torch.allclose(sampler.log_density(z), expected)
    loaded = load_sampler(sampler.save(tmp_path / "prior"), model)
    assert loaded.family == "laplace" and torch.allclose(loaded.log_density(z), expected)
    torch.manual_seed(0)
    draws = sampler.sample(20000)
    # statistical check: |z| is exponential (mean = sd = 0.5), SE 0.5 / sqrt(20000) = 0.0035, so 0.02 is 5.7 SE:
    # false-alarm rate 1.5e-8 per coordinate (normal approx.)
    assert torch.allclose(draws.abs().mean(0), torch.full((D,), 0.5), atol=0.02)  # E|z| = b
    with pytest.raises(ValueError, match="family"):
        PriorSampler(family="cauchy")


def test_prior_sampler_keeps_a_mixture_prior(tmp_path):
    """CMVAE's prior is a mixture of Laplace clusters (one pruned): the sampler scores it as
    torch's own mixture does, draws from the active clusters only, and reloads it."""
    from pyromv.models import CMVAE, CMVAEConfig

    torch.manual_seed(0)
    model = CMVAE(MODS, CMVAEConfig(latent_dim=D, private_latent_dim=2, n_clusters=3))
    with torch.no_grad():
        model.cluster_means.copy_(torch.tensor([[5.0, 5.0], [-5.0, 0.0], [0.0, -40.0]]))
        model.cluster_logits.copy_(torch.tensor([0.0, 1.0, 0.0]))
        model.active_clusters[2] = False
    sampler = PriorSampler().fit(model)
    assert sampler.family == "laplace"
    z = 3 * torch.randn(6, D)
    weights = torch.tensor([1.0, torch.e, 0.0])
    expected = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights / weights.sum()),
        torch.distributions.Independent(torch.distributions.Laplace(model.cluster_means.detach(), 1.0), 1),
    ).log_prob(z)
    assert torch.allclose(sampler.log_density(z), expected)
    loaded = load_sampler(sampler.save(tmp_path / "prior"), model)
    assert torch.allclose(loaded.log_density(z), expected)
    torch.manual_seed(0)
    draws = sampler.sample(4000)
    near_first = (draws - torch.tensor([5.0, 5.0])).norm(dim=-1) < 4
    assert abs(near_first.float().mean() - 1 / (1 + torch.e)) < 0.03  # 4 s.d. of the share
    assert not ((draws - torch.tensor([0.0, -40.0])).norm(dim=-1) < 20).any()  # the pruned cluster


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gmm_log_density_matches_scikit_learn(covariance_type):
    g = torch.Generator().manual_seed(0)
    codes = torch.cat([torch.randn(60, 3, generator=g) * torch.tensor([1.0, 0.3, 2.0]),
                       torch.randn(40, 3, generator=g) + 4])
    sampler = GaussianMixtureSampler(n_components=3, covariance_type=covariance_type).fit_codes(codes)
    reference = GaussianMixture(3, covariance_type=covariance_type, reg_covar=1e-6, max_iter=200,
                                tol=1e-3, random_state=0).fit(codes.double().numpy())
    x = torch.randn(25, 3, generator=g, dtype=torch.float64) * 3
    expected = torch.from_numpy(reference.score_samples(x.numpy()))
    assert torch.allclose(sampler.log_density(x), expected, atol=1e-8)


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name", ["prior", "gmm", "maf", "iaf"])
def test_save_load_round_trip_is_exact(name, tmp_path):
    model = _model()
    sampler = _fitted(name, model)
    sampler.save(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sampler.json", "sampler.safetensors"]
    saved = json.loads((tmp_path / "s" / "sampler.json").read_text())
    assert saved["sampler"] == name and saved["latent_dim"] == D
    loaded = load_sampler(tmp_path / "s", model=model)
    assert type(loaded) is type(sampler)
    assert loaded.options() == sampler.options() and loaded.fit_info == sampler.fit_info
    z = torch.randn(7, D)
    assert torch.equal(loaded.log_density(z), sampler.log_density(z))
    torch.manual_seed(5)
    a = sampler.sample(6)
    torch.manual_seed(5)
    b = loaded.sample(6)
    assert torch.equal(a, b)
    torch.manual_seed(5)
    ga = sampler.generate(4)
    torch.manual_seed(5)
    gb = loaded.generate(4)
    assert all(torch.equal(ga.data[m], gb.data[m]) for m in ga.names)
    # the subclass's load refuses another kind
    other = MAFSampler if name != "maf" else IAFSampler
    with pytest.raises(ValueError, match="not a"):
        other.load(tmp_path / "s")
    assert type(type(sampler).load(tmp_path / "s")) is type(sampler)


def test_load_needs_both_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="sampler.json"):
        load_sampler(tmp_path)


# ---------------------------------------------------------------------- generate
@pytest.mark.parametrize("name", ["prior", "gmm", "maf", "iaf"])
def test_generate_decodes_sampled_codes_into_a_complete_dataset(name):
    model = _model()
    sampler = _fitted(name, model)
    torch.manual_seed(2)
    z = sampler.sample(9)
    torch.manual_seed(2)
    ds = sampler.generate(9, batch_size=4)
    assert isinstance(ds, MultimodalDataset) and len(ds) == 9 and ds.names == model.names
    assert ds.observed_fraction() == {m: 1.0 for m in model.names}
    assert ds.labels is None
    with torch.no_grad():
        model.eval()
        for m in model.modalities:
            expected = model.likelihoods[m.name].mean(model.decoders[m.name](z))
            assert ds.data[m.name].shape == (9, *m.shape)
            assert torch.allclose(ds.data[m.name].to(expected.dtype), expected, atol=1e-6)
    assert ds.data["cat"].dtype == torch.long


def test_generate_can_sample_the_likelihood():
    model = _model()
    sampler = _fitted("gmm", model)
    torch.manual_seed(1)
    means = sampler.generate(200)
    torch.manual_seed(1)
    draws = sampler.generate(200, sample_likelihood=True)
    # same codes; the normal head adds noise of scale 0.5 around the means
    noise = draws.data["vec"] - means.data["vec"]
    # statistical check: 600 noise entries, SE of their sd 0.5 / sqrt(1200) = 0.014, so rel=0.1 is 3.5 SE:
    # false-alarm rate 5e-4 (normal approx.)
    assert noise.std() == pytest.approx(0.5, rel=0.1)


def test_generate_labels_rows_with_classifiers():
    model = _model()
    sampler = _fitted("gmm", model)
    ds = sampler.generate(10, classifier=lambda data: torch.stack(
        [data["vec"][:, 0], -data["vec"][:, 0]], 1))
    assert torch.equal(ds.labels, (ds.data["vec"][:, 0] < 0).long())
    per_modality = {"vec": lambda x: (x[:, 0] > 0).long(), "cat": lambda x: x[:, 0]}
    ds = sampler.generate(10, classifier=per_modality)
    # two voters either agree or tie, and a tie goes to the first listed (vec)
    assert torch.equal(ds.labels, (ds.data["vec"][:, 0] > 0).long())


def test_label_votes_take_the_majority_then_the_first_listed():
    data = {m: torch.zeros(4, 1) for m in ("a", "b", "c")}
    preds = {"a": torch.tensor([0, 2, 5, 1]), "b": torch.tensor([1, 0, 4, 1]),
             "c": torch.tensor([1, 0, 3, 2])}
    votes = {m: (lambda _x, p=p: p) for m, p in preds.items()}
    # row 0: 1 wins 2-1; row 1: 0 wins 2-1; row 2: all differ -> a's; row 3: 1 wins
    assert label_generations(data, votes).tolist() == [1, 0, 5, 1]
    two = {"c": votes["c"], "a": votes["a"]}  # tie 1-1 -> the first listed (c)
    assert label_generations(data, two).tolist() == [1, 0, 3, 2]
    with pytest.raises(ValueError, match="unknown modality 'z'"):
        label_generations(data, {"z": votes["a"]})
    with pytest.raises(ValueError, match="labels of shape \\(4,\\)"):
        label_generations(data, lambda d: torch.zeros(3))
    with pytest.raises(TypeError, match="classifier must be"):
        label_generations(data, 3)


def test_private_latents_decode_through_the_model_hook():
    class WithPrivate(MVAE):
        def generate_from_shared(self, z, targets=None, sample=False):
            return {m.name: torch.full((z.shape[0], *m.shape), 2, dtype=torch.long)
                    if m.likelihood == "categorical" else torch.full((z.shape[0], *m.shape), 0.25)
                    for m in self.modalities if targets is None or m.name in targets}

    torch.manual_seed(0)
    model = WithPrivate(MODS, MVAEConfig(latent_dim=D))
    sampler = _fitted("gmm", model)
    assert "private_sites" not in sampler.fit_info  # MVAE's trace has no w_ sites
    ds = sampler.generate(3)
    assert torch.all(ds.data["vec"] == 0.25) and torch.all(ds.data["img"] == 0.25)
    out = decode_latents(model, torch.zeros(2, D), targets=["vec"])
    assert list(out) == ["vec"]


@pytest.mark.parametrize("model_name", registered_models())
def test_every_registered_model_is_fitted_and_decoded(model_name):
    cls = get_model_class(model_name)
    variants = [{}]
    if "private_latent_dim" in {f.name for f in dataclasses.fields(cls.config_class)}:
        variants.append({"private_latent_dim": 2})
    for options in variants:
        torch.manual_seed(0)
        model = cls(MODS, cls.config_class(latent_dim=D, **options))
        sampler = GaussianMixtureSampler(n_components=2).fit(model, _dataset())
        ds = sampler.generate(6)
        # every modality the model generates (a conditional model: its outputs only)
        assert len(ds) == 6 and ds.observed_fraction() == {m: 1.0 for m in model.generated_modalities}
        # the shared code fixes a row, up to the private latents drawn from their prior
        z = torch.zeros(4, D)
        t = "vec" if "vec" in model.generated_modalities else model.generated_modalities[0]
        again = torch.equal(decode_latents(model, z)[t], decode_latents(model, z)[t])
        assert again == (model.private_dim == 0)
        if model.private_dim:
            assert sampler.fit_info["private_sites"] == [f"w_{m.name}" for m in MODS]


@pytest.mark.slow
def test_generated_data_trains_a_model():
    # data augmentation end to end: train, fit a sampler on partial rows, generate, train anew
    data = _dataset(120)
    model = _model()
    Trainer(model, config=TrainerConfig(epochs=3, batch_size=20, val_fraction=0, progress=False)).fit(data)
    synthetic = GaussianMixtureSampler(n_components=3).fit(model, data).generate(200)
    fresh = _model(seed=1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    history = Trainer(fresh, config=TrainerConfig(epochs=6, batch_size=20, val_fraction=0,
                                                  lr=3e-3, progress=False)).fit(synthetic)
    losses = [r["train_loss"] for r in history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert any(not torch.equal(before[k], v) for k, v in fresh.state_dict().items())


# ---------------------------------------------------------------------- evaluation and pictures
def test_compare_samplers_scores_codes_and_runs_metrics():
    model = _model()
    samplers = {"prior": _fitted("prior", model), "gmm": _fitted("gmm", model)}
    held_out = _dataset(30, seed=1, partial=False)
    metrics = {"rows": len, "vec_mean": lambda ds: float(ds.data["vec"].mean())}
    torch.manual_seed(0)
    state = torch.get_rng_state()
    report = compare_samplers(samplers, held_out=held_out, metrics=metrics, n=50)
    assert torch.equal(torch.get_rng_state(), state)
    assert set(report) == {"prior", "gmm"}
    codes = encode_latents(model, held_out)
    for name, sampler in samplers.items():
        assert report[name]["rows"] == 50
        assert report[name]["log_density"] == pytest.approx(
            held_out_log_density(sampler, codes)["log_density"])
    again = compare_samplers(samplers, metrics=metrics, n=50)
    assert again["gmm"]["vec_mean"] == report["gmm"]["vec_mean"]  # same seed, same generations
    with pytest.raises(TypeError, match="not a LatentSampler"):
        compare_samplers({"x": object()})


CLASSIFIERS = {
    "img": lambda x: torch.stack([x.flatten(1).mean(1) - 0.5, 0.5 - x.flatten(1).mean(1)], 1),
    "vec": lambda x: torch.stack([x[:, 0], -x[:, 0]], 1),
    "cat": lambda x: torch.stack([(x[:, 0] == 0).float(), (x[:, 0] != 0).float()], 1),
}


def test_joint_coherence_of_the_prior_sampler_is_the_metrics_joint_coherence():
    model = _model()
    report = compare_samplers({"prior": _fitted("prior", model)}, n=100, seed=4,
                              metrics={"coherence": joint_coherence_metric(CLASSIFIERS)})
    # pyromv.metrics decodes prior draws under the same seed: the same rows, the same score
    expected = metrics.joint_coherence(model, CLASSIFIERS, n=100, seed=4)
    assert report["prior"]["coherence"] == expected
    # and by hand on a generated set: all three classifiers agree
    ds = _fitted("gmm", model).generate(50)
    preds = torch.stack([CLASSIFIERS[m](ds.data[m]).argmax(-1) for m in ds.names], 1)
    by_hand = float((preds == preds[:, :1]).all(1).double().mean())
    assert joint_coherence_metric(CLASSIFIERS)(ds) == by_hand
    with pytest.raises(ValueError, match="no classifier for modality \\['cat'\\]"):
        joint_coherence_metric({"img": CLASSIFIERS["img"], "vec": CLASSIFIERS["vec"]})(ds)


def test_fid_metric_compares_generations_with_the_observed_real_rows():
    model, real = _model(), _dataset()
    ds = _fitted("gmm", model).generate(60)
    observed = real.data["vec"][real.batch().row_mask("vec")]
    value = fid_metric(real, "vec", lambda x: x)(ds)
    assert value == pytest.approx(metrics.fid_from_features(observed, ds.data["vec"]))
    # FID of a set with itself is zero, with a shifted copy the squared shift
    assert fid_metric(ds, "vec", lambda x: x)(ds) == pytest.approx(0.0, abs=1e-6)
    shifted = MultimodalDataset(MODS, {**ds.data, "vec": ds.data["vec"] + 2.0})
    assert fid_metric(ds, "vec", lambda x: x)(shifted) == pytest.approx(3 * 4.0, rel=1e-4)


def test_plot_generations_writes_a_png(tmp_path):
    model = _model()
    gens = {"prior": _fitted("prior", model).generate(3), "gmm": _fitted("gmm", model).generate(3)}
    plot_generations(gens, n=4, path=tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="not an image"):
        plot_generations(gens, modalities=["vec"])


def test_base_class_loads_any_kind(tmp_path):
    _fitted("gmm").save(tmp_path)
    assert isinstance(LatentSampler.load(tmp_path), GaussianMixtureSampler)
