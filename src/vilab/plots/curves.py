"""Training curves of a VAE run: the train bound and the validation estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def plot_vae_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Train ELBO (per logged step), validation ELBO and log p(x) (per evaluation)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in [
        ("bound", "train bound"),
        ("valid_elbo", "valid ELBO"),
        ("valid_log_px", "valid log p(x) (IS)"),
    ]:
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
        if pts:
            steps, values = zip(*pts)
            ax.plot(steps, values, label=label, lw=1, marker="o" if key != "bound" else None, ms=3)
    ys = [r[k] for r in records for k in ("valid_log_px",) if isinstance(r.get(k), float)]
    if ys:  # zoom on the interesting range rather than the first steps
        top = max(ys)
        ax.set_ylim(top - 4 * max(1.0, top - min(ys[len(ys) // 2 :])) - 10, top + 5)
    ax.set_xlabel("step")
    ax.set_ylabel("nats per image")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
