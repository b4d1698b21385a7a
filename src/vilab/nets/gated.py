"""Gated convolutions and the gated-convolution encoder/decoder of the Sylvester-flow VAE.

A gated convolution multiplies a linear feature map by a learned sigmoid gate,

    y = h ⊙ σ(g),   h = W_h ∗ x + b_h,   g = W_g ∗ x + b_g,

(Dauphin et al. 2017, "Language Modeling with Gated Convolutional Networks",
arXiv:1612.08083; used for VAEs by Tomczak & Welling 2018, "VAE with a VampPrior",
arXiv:1705.07120). The encoder/decoder pair is the one of van den Berg et al. 2018,
"Sylvester Normalizing Flows for Variational Inference", arXiv:1803.05649, for 28 × 28
images (any H × W divisible by 4): six gated convolutions down to a 256-d feature vector, and the mirror image with
transposed convolutions. The networks return features and logits only; what those mean as
distributions is for the caller.

Images enter as ``(..., C, H, W)`` or flattened ``(..., C·H·W)``; the leading dimensions are
flattened into one batch and restored on the way out (see ``as_image_batch``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vilab.nets.mlp import ACTIVATIONS


def as_image_batch(x: Tensor, image_shape: tuple[int, int, int]) -> tuple[Tensor, torch.Size]:
    """View images with any leading dimensions as one batch of ``(N, C, H, W)``.

    Args:
        x: ``(..., C, H, W)`` or flattened ``(..., C·H·W)``.
        image_shape: ``(C, H, W)``.

    Returns:
        ``(images, leading)``: images ``(N, C, H, W)`` with ``N = prod(leading)`` and the
        leading shape ``(...)``, for ``out.reshape(*leading, ...)`` afterwards.

    Raises:
        ValueError: when ``x`` ends in neither ``(C, H, W)`` nor ``C·H·W``.
    """
    c, h, w = image_shape
    if x.dim() >= 3 and tuple(x.shape[-3:]) == (c, h, w):
        leading = x.shape[:-3]
    elif x.dim() >= 1 and x.shape[-1] == c * h * w:
        leading = x.shape[:-1]
    else:
        raise ValueError(
            f"expected images of shape (..., {c}, {h}, {w}) or (..., {c * h * w}), "
            f"got {tuple(x.shape)}"
        )
    return x.reshape(math.prod(leading), c, h, w), leading


def image_hw(image_size: int | tuple[int, int], net: str = "this network") -> tuple[int, int]:
    """``(H, W)`` from a side or a pair, checked for a stack that down-samples twice by 2.

    Raises:
        ValueError: H or W is not a positive multiple of 4, with the reason (two stride-2
            stages take 28 -> 14 -> 7, so each side must be divisible by 4).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(int(h), int(w)) < 4 or h % 4 or w % 4:
        raise ValueError(
            f"{net} down-samples twice by 2 (e.g. 28 -> 14 -> 7), so H and W must each be a positive "
            f"multiple of 4; got H={h}, W={w} (pad or crop the images, or use an mlp)"
        )
    return int(h), int(w)


def _activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ValueError(
            f"activation must be None or one of {', '.join(ACTIVATIONS)}, got {name!r}"
        )
    return ACTIVATIONS[name]()


class GatedConv2d(nn.Module):
    """Gated 2-D convolution ``y = a(h) ⊙ σ(g)``, ``(h, g)`` from one convolution.

    One ``nn.Conv2d`` with ``2·out_channels`` output channels computes both maps: the first
    ``out_channels`` are ``h``, the last ``out_channels`` are the gate pre-activation ``g``.
    This is the same function and parameter count as two separate convolutions, in one
    kernel launch. ``a`` is the identity by default, as in van den Berg et al. 2018.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.
        padding: zero padding on each side.
        dilation: kernel dilation.
        activation: ``None`` (identity) or a name from ``vilab.nets.mlp.ACTIVATIONS``,
            applied to ``h`` before gating.

    Shapes:
        ``(N, in_channels, H, W) -> (N, out_channels, H', W')`` with the usual
        ``nn.Conv2d`` output size.

    Reference:
        Dauphin et al. 2017, arXiv:1612.08083; van den Berg et al. 2018, arXiv:1803.05649.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.out_channels = int(out_channels)
        self.conv = nn.Conv2d(
            in_channels, 2 * out_channels, kernel_size, stride, padding, dilation=dilation
        )
        self.activation = _activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """Gate ``x`` of shape ``(N, C_in, H, W)`` into ``(N, C_out, H', W')``."""
        h, g = self.conv(x).chunk(2, dim=1)
        return self.activation(h) * torch.sigmoid(g)


class GatedConvTranspose2d(nn.Module):
    """Gated 2-D transposed convolution ``y = a(h) ⊙ σ(g)``, ``(h, g)`` from one layer.

    As ``GatedConv2d`` with an ``nn.ConvTranspose2d`` of ``2·out_channels`` outputs: the
    first ``out_channels`` are ``h``, the last ``out_channels`` the gate pre-activation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: transposed-convolution stride (the upsampling factor).
        padding: implicit zero padding removed from each side of the output.
        output_padding: extra size added to one side of the output.
        dilation: kernel dilation.
        activation: ``None`` (identity) or a name from ``vilab.nets.mlp.ACTIVATIONS``.

    Shapes:
        ``(N, in_channels, H, W) -> (N, out_channels, H', W')`` with
        ``H' = (H − 1)·stride − 2·padding + dilation·(kernel_size − 1) + output_padding + 1``.

    Reference:
        van den Berg et al. 2018, arXiv:1803.05649.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        dilation: int = 1,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.out_channels = int(out_channels)
        self.conv = nn.ConvTranspose2d(
            in_channels,
            2 * out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            dilation=dilation,
        )
        self.activation = _activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """Gate ``x`` of shape ``(N, C_in, H, W)`` into ``(N, C_out, H', W')``."""
        h, g = self.conv(x).chunk(2, dim=1)
        return self.activation(h) * torch.sigmoid(g)


class GatedConvEncoder(nn.Module):
    """Six gated convolutions from an image to a feature vector (Sylvester-flow encoder).

    For 28 × 28 images (``k = image_size / 4 = 7``)::

        GatedConv2d(C, 32, 5, padding=2)             28 -> 28
        GatedConv2d(32, 32, 5, stride=2, padding=2)  28 -> 14
        GatedConv2d(32, 64, 5, padding=2)            14 -> 14
        GatedConv2d(64, 64, 5, stride=2, padding=2)  14 -> 7
        GatedConv2d(64, 64, 5, padding=2)             7 -> 7
        GatedConv2d(64, F, k, padding=0)              7 -> 1

    Any ``(C, H, W)`` with H and W multiples of 4 (the last kernel is then
    ``(H/4, W/4)``, e.g. 7 × 5 for Frey Faces' 28 × 20); other sizes are refused. The
    ``(F, 1, 1)`` map is flattened to ``F = out_features`` (256 in the paper).
    With the defaults: 2,171,456 parameters (1,606,144 in the last layer).

    Args:
        in_channels: image channels ``C``.
        image_size: image side, or ``(H, W)``; each a multiple of 4.
        out_features: size ``F`` of the feature vector.

    Shapes:
        ``(..., C, H, W)`` or ``(..., C·H·W)`` -> ``(..., F)``.

    Reference:
        van den Berg et al. 2018, "Sylvester Normalizing Flows for Variational Inference",
        arXiv:1803.05649 (their ``VAE.q_z_nn`` for MNIST).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | tuple[int, int] = 28,
        out_features: int = 256,
    ) -> None:
        super().__init__()
        h, w = image_hw(image_size, "the gated-conv encoder")
        self.image_shape = (int(in_channels), h, w)
        self.in_features = math.prod(self.image_shape)
        self.out_features = int(out_features)
        self.net = nn.Sequential(
            GatedConv2d(in_channels, 32, 5, 1, 2),
            GatedConv2d(32, 32, 5, 2, 2),
            GatedConv2d(32, 64, 5, 1, 2),
            GatedConv2d(64, 64, 5, 2, 2),
            GatedConv2d(64, 64, 5, 1, 2),
            GatedConv2d(64, out_features, (h // 4, w // 4), 1, 0),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Encode images ``(..., C, H, W)`` or ``(..., C·H·W)`` into features ``(..., F)``."""
        images, leading = as_image_batch(x, self.image_shape)
        return self.net(images).reshape(*leading, self.out_features)


class GatedConvDecoder(nn.Module):
    """Mirror of ``GatedConvEncoder``: a latent vector to per-pixel outputs (logits).

    For 28 × 28 images (``k = image_size / 4 = 7``)::

        GatedConvTranspose2d(D, 64, k)                                  1 -> 7
        GatedConvTranspose2d(64, 64, 5, padding=2)                      7 -> 7
        GatedConvTranspose2d(64, 32, 5, stride=2, padding=2, out_pad=1) 7 -> 14
        GatedConvTranspose2d(32, 32, 5, padding=2)                     14 -> 14
        GatedConvTranspose2d(32, 32, 5, stride=2, padding=2, out_pad=1) 14 -> 28
        GatedConvTranspose2d(32, 32, 5, padding=2)                     28 -> 28
        Conv2d(32, K·C, 1)                                             28 -> 28

    The paper puts a sigmoid after the last convolution; here the raw values are returned
    (Bernoulli logits for ``K = 1``; e.g. a Gaussian mean and log-scale for ``K = 2``).
    The output is flattened parameter-major: the first ``C·H·W`` entries are parameter 0,
    so ``out.chunk(K, -1)`` separates the parameters, each ``(..., C·H·W)``. With the
    defaults and ``latent_dim = 64``: 862,753 parameters.

    Args:
        latent_dim: latent size ``D``.
        out_channels: outputs per pixel ``K`` (1 for Bernoulli logits, 2 for mean and
            log-scale).
        image_channels: image channels ``C``.
        image_size: image side, or ``(H, W)``; each a multiple of 4 (any other size is
            refused with the reason).

    Shapes:
        ``(..., D) -> (..., K·C·H·W)``; any leading dimensions, e.g. ``(S, B, D)``.

    Reference:
        van den Berg et al. 2018, "Sylvester Normalizing Flows for Variational Inference",
        arXiv:1803.05649 (their ``VAE.p_x_nn`` and ``p_x_mean`` for MNIST).
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int = 1,
        image_channels: int = 1,
        image_size: int | tuple[int, int] = 28,
    ) -> None:
        super().__init__()
        h, w = image_hw(image_size, "the gated-conv decoder")
        if int(latent_dim) < 1 or int(out_channels) < 1:
            raise ValueError(
                f"latent_dim and out_channels must be positive, got {latent_dim}, {out_channels}"
            )
        self.latent_dim = int(latent_dim)
        self.out_channels = int(out_channels)
        self.image_shape = (int(image_channels), h, w)
        self.out_features = self.out_channels * math.prod(self.image_shape)
        self.net = nn.Sequential(
            GatedConvTranspose2d(latent_dim, 64, (h // 4, w // 4), 1, 0),
            GatedConvTranspose2d(64, 64, 5, 1, 2),
            GatedConvTranspose2d(64, 32, 5, 2, 2, 1),
            GatedConvTranspose2d(32, 32, 5, 1, 2),
            GatedConvTranspose2d(32, 32, 5, 2, 2, 1),
            GatedConvTranspose2d(32, 32, 5, 1, 2),
            nn.Conv2d(32, out_channels * image_channels, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Decode latents ``(..., D)`` into per-pixel outputs ``(..., K·C·H·W)``."""
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"expected latents of shape (..., {self.latent_dim}), got {tuple(z.shape)}"
            )
        leading = z.shape[:-1]
        out = self.net(z.reshape(math.prod(leading), self.latent_dim, 1, 1))
        return out.reshape(*leading, self.out_features)
