"""Figures of a 2-D fit: the true density, the learned density, samples after each flow
layer coloured by their starting radius (seed 001), and the bound / KL over training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from vilab.families.base import AtContext, Family
from vilab.flows.flow import FlowFamily
from vilab.targets.base import Box, Target
from vilab.targets.grid import grid_points, log_density_grid


def _box(target: Target, samples: torch.Tensor | None = None) -> Box:
    if target.plot_box is not None:
        return target.plot_box
    if samples is not None:
        lo = samples.quantile(0.005, dim=0).tolist()
        hi = samples.quantile(0.995, dim=0).tolist()
        return (lo[0], hi[0], lo[1], hi[1])
    return (-4.0, 4.0, -4.0, 4.0)


def plot_true_density(ax: Axes, target: Target, box: Box, n: int = 300) -> None:
    """exp(log p̃) on the box (normalized to its maximum)."""
    lp = log_density_grid(target, box, n, n)
    ax.imshow(
        torch.exp(lp - lp.max()).numpy(), origin="lower", extent=box, aspect="auto", cmap="viridis"
    )
    ax.set_title(f"true density {target.name}")


@torch.no_grad()
def plot_learned_density(ax: Axes, family: Family, box: Box, n: int = 200) -> None:
    """q on the box: exact where the family can score any z, else a histogram of 10⁶
    samples."""
    dtype = next(iter(family.parameters()), torch.zeros(())).dtype
    if family.has_log_prob:
        pts = grid_points(box, n, n, dtype=dtype)
        img = family.log_prob(pts.reshape(-1, 2)).reshape(n, n).exp()
        ax.imshow(img.numpy(), origin="lower", extent=box, aspect="auto", cmap="viridis")
        ax.set_title("learned density q (exact)")
        return
    z, _ = family.rsample_and_log_prob(1_000_000)
    x0, x1, y0, y1 = box
    hist, _, _ = np.histogram2d(
        z[:, 1].double().numpy(), z[:, 0].double().numpy(), bins=n, range=[[y0, y1], [x0, x1]]
    )
    ax.imshow(hist, origin="lower", extent=box, aspect="auto", cmap="viridis")
    ax.set_title("learned density q (10⁶ samples)")


@torch.no_grad()
def plot_layers(fig_axes: list[Axes], family: Family, box: Box, n: int = 3000) -> None:
    """Samples after selected flow layers, coloured by distance from the base mean."""
    trace: list[torch.Tensor] = []
    inner = family.inner if isinstance(family, AtContext) else family
    if isinstance(inner, FlowFamily):
        family.rsample_and_log_prob(n, trace=trace)  # type: ignore[call-arg]
    else:
        trace = [family.rsample_and_log_prob(n)[0]]
    z0 = trace[0]
    colour = (z0 - z0.mean(0)).norm(dim=-1).numpy()
    if len(fig_axes) == 1:
        picks = np.array([len(trace) - 1])
    else:
        picks = np.unique(np.linspace(0, len(trace) - 1, len(fig_axes)).round().astype(int))
    for ax, k in zip(fig_axes, picks):
        z = trace[k].numpy()
        ax.scatter(z[:, 0], z[:, 1], c=colour, s=1, cmap="plasma")
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_title("base" if k == 0 else f"after layer {k}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in fig_axes[len(picks) :]:
        ax.axis("off")


def plot_curves(ax: Axes, records: list[dict[str, Any]]) -> None:
    """The bound (and the KL when log Z is known) against the step."""
    steps = [r["step"] for r in records]
    bound = [r["bound"] for r in records]
    ax.plot(steps, bound, label="ELBO", lw=1)
    if records and "kl" in records[0]:
        ax2 = ax.twinx()
        kl = [max(r["kl"], 1e-4) if isinstance(r["kl"], float) else math.nan for r in records]
        ax2.semilogy(steps, kl, color="C1", lw=1, label="KL = log Z − ELBO")
        ax2.set_ylabel("KL (nats)", color="C1")
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO (nats)")
    ax.set_title("training")


def plot_run(fitter: Any, records: list[dict[str, Any]], run_dir: Path) -> None:
    """Writes ``true_density.png``, ``learned_density.png``, ``layers.png``,
    ``training.png`` and ``summary.png`` (the four side by side) into ``run_dir``."""
    target, family = fitter.target, fitter.family
    if target.context_dim is not None:
        from vilab.train.fit import default_eval_contexts

        row = (fitter.config.eval_contexts or default_eval_contexts(target))[0]
        c = torch.tensor([row if isinstance(row, list) else [row]], dtype=fitter.dtype)
        target, family = target.at(c[0]), AtContext(family, c)
    if target.dim != 2:
        fig, ax = plt.subplots(figsize=(5, 4))
        plot_curves(ax, records)
        fig.tight_layout()
        fig.savefig(run_dir / "training.png", dpi=100)
        plt.close(fig)
        return
    box = _box(target)
    singles = {
        "true_density.png": lambda ax: plot_true_density(ax, target, box),
        "learned_density.png": lambda ax: plot_learned_density(ax, family, box),
        "training.png": lambda ax: plot_curves(ax, records),
    }
    for name, draw in singles.items():
        fig, ax = plt.subplots(figsize=(5, 4.5))
        draw(ax)
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=100)
        plt.close(fig)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6))
    plot_layers(list(axes.flat), family, box)
    fig.suptitle("samples after each layer, coloured by starting radius")
    fig.tight_layout()
    fig.savefig(run_dir / "layers.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    plot_true_density(axes[0], target, box)
    plot_learned_density(axes[1], family, box)
    plot_layers([axes[2]], family, box)
    axes[2].set_title("final samples")
    plot_curves(axes[3], records)
    fig.tight_layout()
    fig.savefig(run_dir / "summary.png", dpi=100)
    plt.close(fig)
