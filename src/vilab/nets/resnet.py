"""Residual convolutional encoder/decoder, after the ResNet VAE of Kingma et al. 2016.

Each residual block is pre-activation (He et al. 2016),

    y = shortcut(x) + conv₂(ELU(norm₂(conv₁(ELU(norm₁(x)))))),

with 3 × 3 kernels, ELU (Clevert et al. 2016) and ``norm`` either the identity (default)
or batch normalization. A down-sampling block has a stride-2 ``conv₁`` and an average-pool
shortcut; an up-sampling block has a stride-2 transposed ``conv₁`` and a nearest-neighbour
shortcut, so the skip path carries no parameters. The encoder has two stages of
``blocks_per_stage`` blocks (3 by default: 6 blocks, 2 of them down-sampling, as in the
IAF_ENCODER of the seed-002 ResNet VAE), the decoder the mirror image.

Batch normalization, when enabled, normalizes with the statistics of the current batch in
training mode: the output for one image then depends on every other image *and every
other importance sample* in the call, so the S log-weights of an image are no longer
independent draws, which biases IWAE bounds and importance-sampled log p(x). It is off by
default. With it on, put the module in ``.eval()`` mode (running statistics, no mixing)
for every evaluation, and keep in mind that the training-mode objective is then not
exactly the bound being reported.

The networks return features and logits only; what those mean as distributions is for
the caller. Images enter as ``(..., C, H, W)`` or flattened ``(..., C·H·W)``.

References:
    Kingma et al. 2016, "Improving Variational Inference with Inverse Autoregressive
    Flow", arXiv:1606.04934. He et al. 2016, "Identity Mappings in Deep Residual
    Networks", arXiv:1603.05027. Clevert et al. 2016, "Fast and Accurate Deep Network
    Learning by Exponential Linear Units", arXiv:1511.07289.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from vilab.nets.gated import as_image_batch, image_hw

Resample = Literal["none", "down", "up"]


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class ResidualBlock(nn.Module):
    """Pre-activation residual block with 3 × 3 convolutions and ELU.

    ``y = shortcut(x) + conv₂(ELU(norm₂(conv₁(ELU(norm₁(x))))))`` where, by ``resample``:

    - ``"none"``: ``conv₁`` is a 3 × 3 convolution, the shortcut the identity;
    - ``"down"``: ``conv₁`` has stride 2, the shortcut is a 2 × 2 average pool;
    - ``"up"``: ``conv₁`` is a stride-2 transposed convolution (output padding 1), the
      shortcut a ×2 nearest-neighbour upsampling.

    Args:
        channels: feature maps in and out.
        resample: ``"none"``, ``"down"`` (halve H and W) or ``"up"`` (double them).
        batch_norm: ``norm`` is ``nn.BatchNorm2d`` instead of the identity (see the module
            docstring on batch statistics).

    Shapes:
        ``(N, channels, H, W) -> (N, channels, H', W')``, ``H' = H``, ``H / 2`` (H even) or
        ``2·H``.

    Reference:
        He et al. 2016, arXiv:1603.05027; Kingma et al. 2016, arXiv:1606.04934.
    """

    def __init__(
        self, channels: int, resample: Resample = "none", batch_norm: bool = False
    ) -> None:
        super().__init__()
        if resample == "none":
            conv1: nn.Module = nn.Conv2d(channels, channels, 3, padding=1)
            shortcut: nn.Module = nn.Identity()
        elif resample == "down":
            conv1 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
            shortcut = nn.AvgPool2d(2)
        elif resample == "up":
            conv1 = nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1)
            shortcut = nn.Upsample(scale_factor=2, mode="nearest")
        else:
            raise ValueError(f"resample must be 'none', 'down' or 'up', got {resample!r}")
        self.shortcut = shortcut
        self.residual = nn.Sequential(
            _norm(channels, batch_norm),
            nn.ELU(),
            conv1,
            _norm(channels, batch_norm),
            nn.ELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(N, C, H, W)`` to ``(N, C, H', W')``."""
        return self.shortcut(x) + self.residual(x)


def _check_sizes(channels: int, blocks_per_stage: int, **positive: int) -> None:
    for name, value in {"channels": channels, **positive}.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if int(blocks_per_stage) < 1:
        raise ValueError(f"blocks_per_stage must be ≥ 1, got {blocks_per_stage}")


class ResNetEncoder(nn.Module):
    """Residual convolutional encoder from an image to a feature vector.

    Layers, for 28 × 28 images and ``blocks_per_stage = 3`` (``M = channels``)::

        Conv2d(C, M, 3, padding=1)                   28 -> 28
        ResidualBlock(M, "down"), 2 × ResidualBlock(M)  28 -> 14
        ResidualBlock(M, "down"), 2 × ResidualBlock(M)  14 -> 7
        norm, ELU, flatten (M·7·7), Linear(M·7·7, F), ELU if final_activation

    With the defaults (``M = 64``, ``F = 256``, no batch norm): 1,246,848 parameters.

    Args:
        in_channels: image channels ``C``.
        image_size: image side, or ``(H, W)``; any ``(C, H, W)`` with H and W multiples
            of 4 (two stride-2 stages), other sizes refused with the reason.
        channels: feature maps ``M`` in every convolution (64 in seed 002).
        out_features: size ``F`` of the feature vector.
        blocks_per_stage: residual blocks per resolution, the first of each down-sampling.
        batch_norm: batch normalization in the blocks and before the flatten. Off by
            default: in training mode it mixes the images (and importance samples) of a
            batch; evaluate in ``.eval()`` mode.
        final_activation: apply ELU after the last linear layer (the output feeds
            parameter heads).

    Shapes:
        ``(..., C, H, W)`` or ``(..., C·H·W)`` -> ``(..., F)``.

    Reference:
        Kingma et al. 2016, "Improving Variational Inference with Inverse Autoregressive
        Flow", arXiv:1606.04934 (ResNet VAE); seed 002 (IAF_ENCODER).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | tuple[int, int] = 28,
        channels: int = 64,
        out_features: int = 256,
        blocks_per_stage: int = 3,
        batch_norm: bool = False,
        final_activation: bool = True,
    ) -> None:
        super().__init__()
        h, w = image_hw(image_size, "the ResNet encoder")
        _check_sizes(channels, blocks_per_stage, in_channels=in_channels, out_features=out_features)
        self.image_shape = (int(in_channels), h, w)
        self.in_features = math.prod(self.image_shape)
        self.out_features = int(out_features)
        bottom = (h // 4, w // 4)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        for _ in range(2):
            layers.append(ResidualBlock(channels, "down", batch_norm))
            layers += [
                ResidualBlock(channels, "none", batch_norm) for _ in range(blocks_per_stage - 1)
            ]
        layers += [
            _norm(channels, batch_norm),
            nn.ELU(),
            nn.Flatten(),
            nn.Linear(channels * bottom[0] * bottom[1], out_features),
        ]
        if final_activation:
            layers.append(nn.ELU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Encode images ``(..., C, H, W)`` or ``(..., C·H·W)`` into features ``(..., F)``."""
        images, leading = as_image_batch(x, self.image_shape)
        return self.net(images).reshape(*leading, self.out_features)


class ResNetDecoder(nn.Module):
    """Mirror of ``ResNetEncoder``: a latent vector to per-pixel outputs (logits).

    Layers, for 28 × 28 images and ``blocks_per_stage = 3`` (``M = channels``)::

        Linear(D, M·7·7), reshape (M, 7, 7)
        2 × ResidualBlock(M), ResidualBlock(M, "up")     7 -> 14
        2 × ResidualBlock(M), ResidualBlock(M, "up")    14 -> 28
        norm, ELU, Conv2d(M, K·C, 3, padding=1)         28 -> 28

    The output is flattened parameter-major: the first ``C·H·W`` entries are parameter 0,
    so ``out.chunk(K, -1)`` separates e.g. a Gaussian mean and log-scale. With the
    defaults and ``latent_dim = 64``: 647,553 parameters.

    Args:
        latent_dim: latent size ``D``.
        out_channels: outputs per pixel ``K`` (1 for Bernoulli logits, 2 for mean and
            log-scale).
        image_channels: image channels ``C``.
        image_size: image side, or ``(H, W)``; any ``(C, H, W)`` with H and W multiples
            of 4 (two stride-2 stages), other sizes refused with the reason.
        channels: feature maps ``M`` in every convolution.
        blocks_per_stage: residual blocks per resolution, the last of each up-sampling.
        batch_norm: batch normalization in the blocks and before the output convolution.
            Off by default: in training mode it mixes the latents of a call, so the
            output for ``z[s, b]`` depends on the other samples; evaluate in ``.eval()``.

    Shapes:
        ``(..., D) -> (..., K·C·H·W)``; any leading dimensions, e.g. ``(S, B, D)``.

    Reference:
        Kingma et al. 2016, "Improving Variational Inference with Inverse Autoregressive
        Flow", arXiv:1606.04934 (ResNet VAE); seed 002 (IAF_DECODER).
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int = 1,
        image_channels: int = 1,
        image_size: int | tuple[int, int] = 28,
        channels: int = 64,
        blocks_per_stage: int = 3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        h, w = image_hw(image_size, "the ResNet decoder")
        _check_sizes(
            channels,
            blocks_per_stage,
            latent_dim=latent_dim,
            out_channels=out_channels,
            image_channels=image_channels,
        )
        self.latent_dim = int(latent_dim)
        self.out_channels = int(out_channels)
        self.image_shape = (int(image_channels), h, w)
        self.out_features = self.out_channels * math.prod(self.image_shape)
        bottom = (h // 4, w // 4)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, channels * bottom[0] * bottom[1]),
            nn.Unflatten(1, (channels, *bottom)),
        ]
        for _ in range(2):
            layers += [
                ResidualBlock(channels, "none", batch_norm) for _ in range(blocks_per_stage - 1)
            ]
            layers.append(ResidualBlock(channels, "up", batch_norm))
        layers += [
            _norm(channels, batch_norm),
            nn.ELU(),
            nn.Conv2d(channels, out_channels * image_channels, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Decode latents ``(..., D)`` into per-pixel outputs ``(..., K·C·H·W)``."""
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"expected latents of shape (..., {self.latent_dim}), got {tuple(z.shape)}"
            )
        leading = z.shape[:-1]
        out = self.net(z.reshape(math.prod(leading), self.latent_dim))
        return out.reshape(*leading, self.out_features)
