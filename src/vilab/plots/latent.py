"""Pictures of a 2-D latent space: the posterior means coloured by digit label, the
decoded manifold on a grid of prior quantiles (seed 003), and an animation of the latent
space over training (seed 004)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.animation import FuncAnimation, PillowWriter
from torch import Tensor

from vilab.plots.images import grid


def latent_scatter(means: Tensor, labels: Tensor | None, path: Path) -> None:
    """Scatter of ``(N, 2)`` posterior means, coloured by label when there are labels."""
    fig, ax = plt.subplots(figsize=(5, 5))
    c = None if labels is None else labels.numpy()
    sc = ax.scatter(means[:, 0], means[:, 1], c=c, cmap="tab10", s=3)
    if labels is not None:
        fig.colorbar(sc, ax=ax, ticks=range(10))
    ax.set_title("test posterior means")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def manifold(vae: torch.nn.Module, path: Path, n: int = 20) -> None:
    """Decoded means on an n × n grid of N(0, 1) quantiles (5%…95%)."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    zz = torch.stack(torch.meshgrid(q, -q, indexing="xy"), -1).reshape(-1, 2)
    ref = next(vae.parameters())
    images = vae.mean(zz.to(ref.device, ref.dtype))  # type: ignore[operator]
    img = grid(images, nrow=n, shape=getattr(vae, "image_shape", (1, 28, 28)))
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(img.numpy(), cmap="gray")
    ax.axis("off")
    ax.set_title("decoded manifold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def latent_animation(frames: list[tuple[int, Tensor]], labels: Tensor | None, path: Path) -> None:
    """A GIF of the posterior means at each evaluation step."""
    fig, ax = plt.subplots(figsize=(5, 5))
    allz = torch.cat([z for _, z in frames])
    lo, hi = allz.quantile(0.005, 0).tolist(), allz.quantile(0.995, 0).tolist()
    c = None if labels is None else labels.numpy()
    sc = ax.scatter(frames[0][1][:, 0], frames[0][1][:, 1], c=c, cmap="tab10", s=3)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])

    def draw(i: int) -> tuple:
        step, z = frames[i]
        sc.set_offsets(z.numpy())
        ax.set_title(f"latent space, step {step}")
        return (sc,)

    anim = FuncAnimation(fig, draw, frames=len(frames), blit=False)
    anim.save(path, writer=PillowWriter(fps=4))
    plt.close(fig)
