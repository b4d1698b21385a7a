"""Image grids: samples, input-vs-reconstruction pairs (PNG, and for TensorBoard)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor


def grid(images: Tensor, nrow: int | None = None, shape: tuple[int, ...] = (28, 28)) -> Tensor:
    """``(N, C·H·W)`` values in [0, 1], ``shape`` (H, W) or (C, H, W) -> one
    ``(rows·(H+1)−1, cols·(W+1)−1)`` grey image with a one-pixel white border between
    tiles (several channels are pictured by their mean)."""
    n = images.shape[0]
    h, w = shape[-2:]
    if len(shape) == 3 and shape[0] > 1:
        images = images.reshape(n, shape[0], h * w).mean(1)
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    out = torch.ones(rows * (h + 1) - 1, nrow * (w + 1) - 1)
    tiles = images.detach().float().clamp(0, 1).reshape(n, h, w).cpu()
    for i in range(n):
        r, c = divmod(i, nrow)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tiles[i]
    return out


def save_grid(image: Tensor, path: Path, title: str | None = None) -> None:
    """Write a grid (from :func:`grid`) as a PNG."""
    fig, ax = plt.subplots(
        figsize=(image.shape[1] / 40, image.shape[0] / 40 + (0.4 if title else 0))
    )
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pairs(x: Tensor, x_hat: Tensor, n: int = 32, shape: tuple[int, ...] = (28, 28)) -> Tensor:
    """Inputs (odd columns) next to reconstructions (even columns), 8 pairs a row."""
    n = min(n, x.shape[0])
    inter = torch.stack([x[:n], x_hat[:n]], dim=1).reshape(2 * n, -1)
    return grid(inter, nrow=16, shape=shape)
