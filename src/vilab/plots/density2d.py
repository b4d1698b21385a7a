"""Figures of a 2-D fit: the true density, the learned density, samples after each flow
layer coloured by their starting radius (seed 001), and the bound / KL over training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from vilab.families.base import AtContext, Family
from vilab.targets.base import Box, Target, default_eval_contexts
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
def learned_density(family: Family, box: Box, n: int = 200) -> tuple[torch.Tensor, str]:
    """q on an ``n × n`` grid of the box, ``(n, n)`` (row = y), and a title saying how.

    * A family that scores any z (Gaussians, invertible flows, at a context too): exact.
    * One with a density estimate (:meth:`~vilab.families.base.Family.log_prob_estimate`;
      a semi-implicit q: the mixture over its ``log_q_samples`` draws of ε, shared by the
      whole grid, an unbiased estimate of q(z) at every point): the estimate.
    * Otherwise (a user's flow without an inverse): a histogram of 10⁶ samples.
    """
    dtype = next(iter(family.parameters()), torch.zeros(())).dtype
    pts = grid_points(box, n, n, dtype=dtype).reshape(-1, 2)
    if family.has_log_prob:
        return family.log_prob(pts).reshape(n, n).exp(), "learned density q (exact)"
    try:
        log_q = family.log_prob_estimate(pts)
        return log_q.reshape(n, n).exp(), "learned density q (importance-sampled estimate)"
    except NotImplementedError:
        pass
    z = family.rsample(1_000_000)
    x0, x1, y0, y1 = box
    hist, _, _ = np.histogram2d(
        z[:, 1].double().numpy(), z[:, 0].double().numpy(), bins=n, range=[[y0, y1], [x0, x1]]
    )
    return torch.from_numpy(hist), "learned density q (10⁶ samples)"


def plot_learned_density(
    ax: Axes,
    family: Family,
    box: Box,
    n: int = 200,
    density: tuple[torch.Tensor, str] | None = None,
) -> None:
    """q on the box, as :func:`learned_density` computes it (or ``density``, its result
    if already computed)."""
    img, title = density if density is not None else learned_density(family, box, n)
    ax.imshow(img.numpy(), origin="lower", extent=box, aspect="auto", cmap="viridis")
    ax.set_title(title)


@torch.no_grad()
def plot_layers(fig_axes: list[Axes], family: Family, box: Box, n: int = 3000) -> None:
    """Samples after selected flow layers, coloured by distance from the base mean."""
    trace = family.rsample_trace(n)
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


def plot_run(
    family: Family,
    target: Target,
    records: list[dict[str, Any]],
    run_dir: Path,
    eval_contexts: Sequence[float | Sequence[float]] | None = None,
) -> None:
    """Writes ``true_density.png``, ``learned_density.png``, ``layers.png``,
    ``training.png`` and ``summary.png`` (the four side by side) into ``run_dir``.

    Args:
        family: the fitted q; amortized (q(z | c)) when ``target`` is a target family.
        target: p̃, the target that ``family`` was fitted to.
        records: the metrics log, one dict per logged step with ``step``, ``bound`` and,
            when log Z is known, ``kl``.
        run_dir: the directory the figures are written to.
        eval_contexts: for a target family, the contexts the run is evaluated at; the
            figures show q and p at the first one (default: the first of
            :func:`vilab.targets.base.default_eval_contexts`).
    """
    if target.context_dim is not None:
        row = (eval_contexts or default_eval_contexts(target))[0]
        dtype = next(iter(family.parameters()), torch.zeros(())).dtype
        c = torch.tensor([list(row) if isinstance(row, Sequence) else [row]], dtype=dtype)
        target, family = target.at(c[0]), AtContext(family, c)
    if target.dim != 2:
        fig, ax = plt.subplots(figsize=(5, 4))
        plot_curves(ax, records)
        fig.tight_layout()
        fig.savefig(run_dir / "training.png", dpi=100)
        plt.close(fig)
        return
    box = _box(target)
    learned = learned_density(family, box)  # computed once, drawn twice
    singles = {
        "true_density.png": lambda ax: plot_true_density(ax, target, box),
        "learned_density.png": lambda ax: plot_learned_density(ax, family, box, density=learned),
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
    plot_learned_density(axes[1], family, box, density=learned)
    plot_layers([axes[2]], family, box)
    axes[2].set_title("final samples")
    plot_curves(axes[3], records)
    fig.tight_layout()
    fig.savefig(run_dir / "summary.png", dpi=100)
    plt.close(fig)
