"""Pictures of a VAE run: samples and reconstructions (files and TensorBoard), the training
curves, and for a 2-D latent the posterior means over training (seed 004's animation), the
latent scatter coloured by label and the decoded manifold (seed 003)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vilab.vae import VAE


def sample_images(
    vae: VAE, test: Tensor, run_dir: Path, step: int, writer: Any | None = None
) -> None:
    """``samples.png`` (64 draws of p(x | z), z ~ p(z)) and ``reconstructions.png`` (32
    test images beside their reconstructions), also to TensorBoard's ``writer`` if given.
    Drawn from a fixed seed per step, so the pictures do not depend on the training RNG
    (whose state the caller keeps)."""
    from vilab.plots.images import grid, pairs, save_grid

    torch.manual_seed(1234 + step)
    shape = getattr(vae, "image_shape", (1, 28, 28))
    samples = grid(vae.sample(64), nrow=8, shape=shape)
    x = test[:32]
    recon = pairs(x, vae.reconstruct(x), shape=shape)
    save_grid(samples, run_dir / "samples.png", "samples")
    save_grid(recon, run_dir / "reconstructions.png", "input | reconstruction")
    if writer is not None:
        writer.add_image("samples", samples.unsqueeze(0), step)
        writer.add_image("reconstructions", recon.unsqueeze(0), step)


def final_figures(
    vae: VAE,
    test: Tensor,
    records: list[dict[str, Any]],
    run_dir: Path,
    step: int,
    latent: LatentTracker | None = None,
) -> None:
    """The end-of-run pictures: ``training.png`` from the metrics records, samples and
    reconstructions, and the latent pictures of a 2-D latent."""
    from vilab.plots.curves import plot_vae_curves

    plot_vae_curves(records, run_dir / "training.png")
    sample_images(vae, test, run_dir, step)
    if latent is not None:
        latent.save(run_dir)


class LatentTracker:
    """For a 2-D latent: the test posterior means over training (seed 004's animation),
    the final latent scatter coloured by label and the decoded manifold (seed 003).

    Args:
        model: returns the model to picture now (the moving average, with ``optim.ema``).
        test: test images ``(N, 784)``; the first ``n`` are pictured.
        labels: their labels ``(N,)``, if the data set has them.
    """

    def __init__(
        self, model: Callable[[], VAE], test: Tensor, labels: Tensor | None, n: int = 2000
    ) -> None:
        self.model, self.x = model, test[:n]
        self.labels = None if labels is None else labels[:n]
        self.frames: list[tuple[int, Tensor]] = []

    @torch.no_grad()
    def means(self) -> Tensor:
        z, _ = self.model().posterior.rsample_and_log_prob(16, self.x)
        return z.mean(0).cpu()

    def snapshot(self, step: int) -> None:
        self.frames.append((step, self.means()))

    def save(self, run_dir: Path) -> None:
        from vilab.plots.latent import latent_animation, latent_scatter, manifold

        latent_scatter(self.means(), self.labels, run_dir / "latent.png")
        manifold(self.model(), run_dir / "manifold.png")
        if self.frames:
            latent_animation(self.frames, self.labels, run_dir / "latent.gif")
