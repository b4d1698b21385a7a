"""``vilab demo``: fit U1–U4 and the banana with the default family, side by side.

The defaults of :class:`vilab.config.FitConfig` are vilab's strong 2-D recipe: a stack of
16 orthogonal Sylvester layers, 3 autoregressive spline layers and 2 IAF steps
(:func:`vilab.config.default_stack`), 1000 samples per step, Adam 2e-3, β-annealed over
800 steps, until the bound has converged (:mod:`vilab.train.stopping`; at most 8000 steps).

Each target is one ordinary ``fit`` run (its own run directory); the runs share the two
CPU cores as separate processes. The demo then writes ``demo.png`` (one row per target:
true density, learned density, final samples, training curves), and ``kl_table.md`` and
``compare.png`` through :func:`vilab.commands.compare.compare` (exact KL, ELBO, log Z, k̂, ESS).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from vilab.commands.compare import compare
from vilab.commands.fit import run_fit
from vilab.config import load_fit_config
from vilab.core.io import atomic_write_text

DEMO_TARGETS = ("U1", "U2", "U3", "U4", "banana")


def _run_one(args: tuple[str, list[str], str]) -> dict[str, Any]:
    target, overrides, out = args
    cfg = load_fit_config(overrides=[f"target.name={target}", "threads=1", *overrides])
    return run_fit(cfg, Path(out) / target, progress=False).metrics


def run_demo(
    out: str | Path, overrides: list[str] | None = None, workers: int | None = None
) -> list[dict[str, Any]]:
    """Fits every demo target and writes the comparison figure and table under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = overrides or []
    load_fit_config(overrides=overrides)  # fail fast on bad overrides
    workers = workers or min(len(DEMO_TARGETS), os.cpu_count() or 1)
    jobs = [(t, overrides, str(out)) for t in DEMO_TARGETS]
    print(f"fitting {', '.join(DEMO_TARGETS)} ({workers} at a time) into {out}", file=sys.stderr)
    if workers == 1:
        results = [_report(_run_one(j)) for j in jobs]
    else:
        # a process that has touched CUDA cannot fork a child that uses it: spawn there
        spawn = multiprocessing.get_context("spawn") if torch.cuda.is_available() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            futures = [pool.submit(_run_one, j) for j in jobs]
            for f in as_completed(futures):
                _report(f.result())
            results = [f.result() for f in futures]
    table, _ = compare([out / t for t in DEMO_TARGETS], out / "compare.png")
    atomic_write_text(out / "kl_table.md", table)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    _figure(out, [out / t / "summary.png" for t in DEMO_TARGETS])
    return results


def _report(r: dict[str, Any]) -> dict[str, Any]:
    print(
        f"  {r['target']}: KL {r['kl']:.4f} ± {r['kl_stderr']:.4f} nats "
        f"({r['steps']} steps, {r['seconds']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return r


def _figure(out: Path, pngs: list[Path]) -> None:
    import matplotlib.pyplot as plt

    images = [plt.imread(p) for p in pngs if p.exists()]
    if not images:
        return
    h, w = images[0].shape[:2]
    fig, axes = plt.subplots(len(images), 1, figsize=(w / 100, h * len(images) / 100))
    for ax, img in zip(axes if len(images) > 1 else [axes], images):
        ax.imshow(img)
        ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1, 0, 0)
    fig.savefig(out / "demo.png", dpi=100)
    plt.close(fig)
