"""Convolutional networks (src/vilab/nets/gated.py, resnet.py): shapes with flat and image
inputs and any leading dimensions, gradients to every parameter, the gated layer against
h·σ(g) by hand, layer-by-layer sizes of the Sylvester-paper pair, parameter counts (in the
test ids), and per-sample independence: perturbing one latent (or image) changes that
sample's output only, which is what batch statistics in training mode would break."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vilab.nets import (
    MLP,
    GatedConv2d,
    GatedConvDecoder,
    GatedConvEncoder,
    GatedConvTranspose2d,
    ResidualBlock,
    ResNetDecoder,
    ResNetEncoder,
)

S, B, D = 2, 3, 8


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions run faster on one thread, and far faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ENCODERS = {
    "gated": lambda: GatedConvEncoder(),
    "resnet": lambda: ResNetEncoder(channels=16, out_features=32),
    "resnet_bn": lambda: ResNetEncoder(channels=16, out_features=32, batch_norm=True),
}
DECODERS = {
    "gated": lambda k: GatedConvDecoder(D, out_channels=k),
    "resnet": lambda k: ResNetDecoder(D, out_channels=k, channels=16),
    "resnet_bn": lambda k: ResNetDecoder(D, out_channels=k, channels=16, batch_norm=True),
}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Default-size networks, for reference: the count is in the test id.
PARAM_COUNTS = [
    ("GatedConvEncoder()", GatedConvEncoder, 2_171_456),
    ("GatedConvDecoder(64)", lambda: GatedConvDecoder(64), 862_753),
    ("GatedConvDecoder(64,out_channels=2)", lambda: GatedConvDecoder(64, 2), 862_786),
    ("ResNetEncoder()", ResNetEncoder, 1_246_848),
    ("ResNetDecoder(64)", lambda: ResNetDecoder(64), 647_553),
    ("ResNetDecoder(64,out_channels=2)", lambda: ResNetDecoder(64, 2), 648_130),
]


@pytest.mark.parametrize(
    "make, expected", [pytest.param(m, n, id=f"{name}={n:,}") for name, m, n in PARAM_COUNTS]
)
def test_parameter_count(make, expected: int) -> None:
    assert n_params(make()) == expected


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_shapes_flat_and_image_inputs(name: str) -> None:
    enc = ENCODERS[name]().eval()
    images = torch.rand(B, 1, 28, 28)
    out = enc(images)
    assert out.shape == (B, enc.out_features)
    torch.testing.assert_close(enc(images.reshape(B, 784)), out)
    # Any leading dimensions, flat or not.
    stacked = torch.rand(S, B, 784)
    out_sb = enc(stacked)
    assert out_sb.shape == (S, B, enc.out_features)
    torch.testing.assert_close(enc(stacked.reshape(S, B, 1, 28, 28)), out_sb)
    torch.testing.assert_close(out_sb[1], enc(stacked[1]))


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", DECODERS)
def test_decoder_shapes_and_channel_layout(name: str, k: int) -> None:
    dec = DECODERS[name](k).eval()
    z = torch.randn(S, B, D)
    out = dec(z)
    assert out.shape == (S, B, k * 784) and dec.out_features == k * 784
    torch.testing.assert_close(dec(z.reshape(S * B, D)), out.reshape(S * B, k * 784))
    # Channel-major flattening: chunk(k, -1)[c] is output channel c of the last conv.
    conv_out = dec.net(z.reshape(S * B, D, 1, 1) if name == "gated" else z.reshape(S * B, D))
    assert conv_out.shape == (S * B, k, 28, 28)
    for c, part in enumerate(out.chunk(k, dim=-1)):
        torch.testing.assert_close(part.reshape(S * B, 28, 28), conv_out[:, c])


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="784"):
        GatedConvEncoder()(torch.rand(B, 783))
    with pytest.raises(ValueError, match="28, 28"):
        ResNetEncoder(channels=4)(torch.rand(B, 1, 27, 27))
    with pytest.raises(ValueError, match=f"{D}"):
        GatedConvDecoder(D)(torch.randn(S, B, D + 1))
    with pytest.raises(ValueError, match="multiple of 4"):
        ResNetDecoder(D, image_size=30)
    with pytest.raises(ValueError, match="resample"):
        ResidualBlock(4, "sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kind, name", [("enc", n) for n in ENCODERS] + [("dec", n) for n in DECODERS]
)
def test_gradient_reaches_every_parameter(kind: str, name: str) -> None:
    net = ENCODERS[name]() if kind == "enc" else DECODERS[name](2)
    x = torch.rand(S, B, 784) if kind == "enc" else torch.randn(S, B, D)
    (net(x) ** 2).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("activation", [None, "elu"])
def test_gated_conv_equals_h_times_sigmoid_g(activation: str | None) -> None:
    layer = GatedConv2d(3, 4, 3, stride=2, padding=1, activation=activation).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    w, b = layer.conv.weight, layer.conv.bias
    h = F.conv2d(x, w[:4], b[:4], stride=2, padding=1)
    g = F.conv2d(x, w[4:], b[4:], stride=2, padding=1)
    h = h if activation is None else F.elu(h)
    torch.testing.assert_close(layer(x), h * torch.sigmoid(g), rtol=0, atol=1e-12)
    assert layer(x).shape == (2, 4, 5, 5)


def test_gated_conv_transpose_equals_h_times_sigmoid_g() -> None:
    layer = GatedConvTranspose2d(3, 4, 5, stride=2, padding=2, output_padding=1).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    w, b = layer.conv.weight, layer.conv.bias  # (in, 2·out, k, k)
    kw = dict(stride=2, padding=2, output_padding=1)
    h = F.conv_transpose2d(x, w[:, :4], b[:4], **kw)
    g = F.conv_transpose2d(x, w[:, 4:], b[4:], **kw)
    out = layer(x)
    assert out.shape == (2, 4, 14, 14)
    torch.testing.assert_close(out, h * torch.sigmoid(g), rtol=0, atol=1e-12)


def test_sylvester_pair_spatial_sizes() -> None:
    """28 → 28 → 14 → 14 → 7 → 7 → 1 down, 1 → 7 → 7 → 14 → 14 → 28 → 28 → 28 up."""
    x = torch.rand(1, 1, 28, 28)
    sizes = []
    for layer in GatedConvEncoder().net:
        x = layer(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 7, 7), (64, 7, 7), (256, 1, 1)]
    z = torch.randn(1, D, 1, 1)
    sizes = []
    for layer in GatedConvDecoder(D).net:
        z = layer(z)
        sizes.append(tuple(z.shape[1:]))
    assert sizes == [
        (64, 7, 7),
        (64, 7, 7),
        (32, 14, 14),
        (32, 14, 14),
        (32, 28, 28),
        (32, 28, 28),
        (1, 28, 28),
    ]


@pytest.mark.parametrize("image_size", [16, 32])
def test_other_image_sizes(image_size: int) -> None:
    n = image_size * image_size
    for enc in (
        GatedConvEncoder(image_size=image_size),
        ResNetEncoder(image_size=image_size, channels=4),
    ):
        assert enc(torch.rand(2, n)).shape == (2, enc.out_features)
    for dec in (
        GatedConvDecoder(D, image_size=image_size),
        ResNetDecoder(D, image_size=image_size, channels=4),
    ):
        assert dec(torch.randn(S, 2, D)).shape == (S, 2, n)


def _changed_rows(net: nn.Module, x: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    """Perturb x[index] only; return a bool per sample: did that sample's output change?"""
    base = net(x)
    x2 = x.clone()
    x2[index] += 0.5
    out = net(x2)
    return ((out - base).abs() > 1e-12).flatten(len(index)).any(-1)


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_output_depends_only_on_its_own_latent(name: str) -> None:
    dec = DECODERS[name](2).double()
    dec.eval()  # batch norm (if any) on running statistics: no mixing
    with torch.no_grad():
        changed = _changed_rows(dec, torch.randn(S, B, D, dtype=torch.float64), (1, 2))
    expected = torch.zeros(S, B, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_output_depends_only_on_its_own_image(name: str) -> None:
    enc = ENCODERS[name]().double().eval()
    with torch.no_grad():
        changed = _changed_rows(enc, torch.rand(S, B, 784, dtype=torch.float64), (0, 1))
    expected = torch.zeros(S, B, dtype=torch.bool)
    expected[0, 1] = True
    assert torch.equal(changed, expected)


def test_independence_check_catches_batch_norm_in_train_mode() -> None:
    """The guard above is not vacuous: training-mode batch statistics mix the samples."""
    dec = DECODERS["resnet_bn"](1).double().train()
    with torch.no_grad():
        changed = _changed_rows(dec, torch.randn(S, B, D, dtype=torch.float64), (1, 2))
    assert changed.all()


def test_gated_mlp_layer_is_linear_times_sigmoid_gate() -> None:
    """activation="gated": each hidden layer is (W x + b) ⊙ σ(V x + c) (GatedDense); the
    output layer stays linear."""
    torch.manual_seed(0)
    net = MLP([5, 3, 2], "gated").double()
    x = torch.randn(4, 5, dtype=torch.float64)
    lin, out = net[0], net[2]
    w, v = lin.weight[:3], lin.weight[3:]
    b, c = lin.bias[:3], lin.bias[3:]
    h = (x @ w.T + b) * torch.sigmoid(x @ v.T + c)
    torch.testing.assert_close(net(x), out(h))
    feats = MLP([5, 3], "gated", final_activation=True)
    assert feats(torch.randn(2, 5)).shape == (2, 3)
    with pytest.raises(ValueError, match="gated"):
        MLP([5, 3], "swish")
