"""Plain networks that know nothing of probability."""

from vilab.nets.gated import (
    GatedConv2d,
    GatedConvDecoder,
    GatedConvEncoder,
    GatedConvTranspose2d,
)
from vilab.nets.mlp import MLP
from vilab.nets.resnet import ResidualBlock, ResNetDecoder, ResNetEncoder

__all__ = [
    "MLP",
    "GatedConv2d",
    "GatedConvTranspose2d",
    "GatedConvEncoder",
    "GatedConvDecoder",
    "ResidualBlock",
    "ResNetEncoder",
    "ResNetDecoder",
]
