import pytest
import torch

from pyromv.nn import (
    build_decoder,
    build_encoder,
    registered_decoders,
    registered_encoders,
)

LATENT = 3
# a shape each network accepts; image networks need (C, H, W), the rest take anything
SHAPES = {"conv": [(1, 8, 8), (3, 5, 7), (1, 28, 28)]}
DEFAULT_SHAPES = [(1, 8, 8), (5,), (2, 3)]
SMALL_KWARGS = {
    "mlp": {"hidden_dims": [8, 8]},
    "conv": {"channels": [4, 8], "hidden_dim": 8},
}


def _cases(names):
    return [(n, s) for n in names for s in SHAPES.get(n, DEFAULT_SHAPES)]


@pytest.mark.parametrize("name, shape", _cases(registered_encoders()))
def test_encoder_shapes_and_positive_scale(name, shape):
    enc = build_encoder(name, SMALL_KWARGS.get(name, {}), shape, LATENT)
    x = torch.rand(4, *shape)
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (4, LATENT)
    assert torch.isfinite(loc).all()
    assert (scale > 0).all()
    # very negative inputs still give a positive standard deviation
    _, scale = enc(-100 * torch.ones(2, *shape))
    assert (scale > 0).all()
    # gradients reach every parameter
    (loc.sum() + scale.sum()).backward()
    assert all(p.grad is not None for p in enc.parameters())


@pytest.mark.parametrize("name, shape", _cases(registered_encoders()))
def test_encoder_single_row_batch(name, shape):
    enc = build_encoder(name, SMALL_KWARGS.get(name, {}), shape, LATENT)
    loc, scale = enc(torch.rand(1, *shape))
    assert loc.shape == scale.shape == (1, LATENT)


@pytest.mark.parametrize("name, shape", _cases(registered_decoders()))
def test_decoder_shapes_with_leading_dims(name, shape):
    dec = build_decoder(name, SMALL_KWARGS.get(name, {}), LATENT, shape)
    assert dec(torch.randn(4, LATENT)).shape == (4, *shape)
    z = torch.randn(2, 4, LATENT)  # (K, B, latent): particles of a batch
    out = dec(z)
    assert out.shape == (2, 4, *shape)
    # the leading dims are batch dims: decoding them together equals decoding each one
    torch.testing.assert_close(out[1], dec(z[1]), rtol=1e-5, atol=1e-6)
    assert dec(torch.randn(2, 3, 4, LATENT)).shape == (2, 3, 4, *shape)


@pytest.mark.parametrize("name", registered_encoders())
def test_encoder_rows_are_independent(name):
    shape = SHAPES.get(name, DEFAULT_SHAPES)[0]
    enc = build_encoder(name, SMALL_KWARGS.get(name, {}), shape, LATENT)
    x = torch.rand(5, *shape)
    loc, scale = enc(x)
    loc2, scale2 = enc(x[2:3])
    torch.testing.assert_close(loc[2:3], loc2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scale[2:3], scale2, rtol=1e-5, atol=1e-6)


def test_registry_has_the_basic_networks():
    for name in ("mlp", "linear", "conv"):
        assert name in registered_encoders()
        assert name in registered_decoders()


def test_unknown_name_lists_registered():
    listed = ", ".join(repr(n) for n in registered_encoders())
    match = rf"unknown encoder network 'nope'; registered: \[{listed}\]"
    with pytest.raises(ValueError, match=match):
        build_encoder("nope", {}, (3,), LATENT)
    listed = ", ".join(repr(n) for n in registered_decoders())
    match = rf"unknown decoder network 'nope'; registered: \[{listed}\]"
    with pytest.raises(ValueError, match=match):
        build_decoder("nope", {}, LATENT, (3,))


@pytest.mark.parametrize("name", ["mlp", "linear", "conv"])
def test_bad_kwargs_raise_type_error_naming_the_network(name):
    shape = (1, 8, 8)
    with pytest.raises(TypeError, match=f"encoder network '{name}' rejected its kwargs"):
        build_encoder(name, {"bogus": 1}, shape, LATENT)
    with pytest.raises(TypeError, match=f"decoder network '{name}' rejected its kwargs"):
        build_decoder(name, {"bogus": 1}, LATENT, shape)


def test_shape_kwargs_are_set_by_the_model():
    with pytest.raises(ValueError, match=r"encoder 'mlp': \['latent_dim'\]"):
        build_encoder("mlp", {"latent_dim": 4}, (3,), LATENT)
    with pytest.raises(ValueError, match=r"decoder 'mlp': \['output_shape'\]"):
        build_decoder("mlp", {"output_shape": (3,)}, LATENT, (3,))


@pytest.mark.parametrize("shape", [(64,), (8, 8), (1, 1, 8, 8)])
def test_conv_on_non_image_shape(shape):
    need = r"needs image modalities of shape \(C, H, W\)"
    with pytest.raises(ValueError, match="encoder 'conv' " + need):
        build_encoder("conv", {}, shape, LATENT)
    with pytest.raises(ValueError, match="decoder 'conv' " + need):
        build_decoder("conv", {}, LATENT, shape)


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'gelu2'"):
        build_encoder("mlp", {"activation": "gelu2"}, (3,), LATENT)


def test_kwargs_not_mutated():
    kwargs = {"hidden_dims": [8, 8]}
    build_encoder("mlp", kwargs, (3,), LATENT)
    build_decoder("mlp", kwargs, LATENT, (3,))
    assert kwargs == {"hidden_dims": [8, 8]}
