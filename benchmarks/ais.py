"""Benchmark: annealed importance sampling of a trained VAE, the fast path against the
settings before it, on the same model and images in one process.

Issue 20 item 4: the old estimate — 4 chains × 1000 distributions, 5 leapfrog steps, 100
images at a time, each chain steering its own step size, the transition that evaluates
log p₀ and log γ again for the weight and f_t's value and gradient again before
:func:`vilab.samplers.hmc.hmc_step` — took 284 s per 1000 test images of seed 004's IAF
model. The fast path (:data:`vilab.evaluation.ais.FAST`, ``vilab eval --method ais``'s
default) moves every image × chain at once with the fused transition (one gradient per
leapfrog step), in the start's standardized coordinates, 700 distributions of one leapfrog
step with partial momentum refreshment, a pilot chain per image steering the step size;
the goal is an estimate within 0.3 nats of the old one in ≤ 60 s on 2 cores.

Printed: each estimator's log p(x) (mean over images), its Monte Carlo standard error,
the mean acceptance rate, wall-clock and CPU seconds and the machine's load average
around it; then new − old with the standard error of the paired per-image difference.

Run (a run directory of ``vilab train``, e.g. ``--config configs/vae_seed004_iaf.yaml``)::

    python benchmarks/ais.py RUN_DIR [--images 1000] [--threads 2] [--part both|new|old]
    python benchmarks/ais.py RUN_DIR --quick       # smoke run, seconds

Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch

from vilab.core.seeding import Stream, derive_seed
from vilab.evaluation.ais import CLASSIC, FAST, evaluate_ais
from vilab.train.runs import load_trained_vae
from vilab.train.vae import vae_data_for

#: The issue's goal: within this many nats of the old estimate …
GOAL_NATS = 0.3
#: … in at most this many seconds per 1000 images on 2 cores.
GOAL_SECONDS = 60.0


def settings(args: Any) -> dict[str, dict[str, Any]]:
    """The two estimators: ``old`` (the settings before, the issue's 4 × 1000, the
    unfused transition) and ``new`` (:data:`FAST`, with the command line's changes)."""
    old = {**CLASSIC, "chains": args.old_chains, "num_dists": args.old_dists, "fused": False}
    new = dict(FAST)
    for name in ("chains", "num_dists", "num_leapfrog"):
        if getattr(args, f"new_{name}") is not None:
            new[name] = getattr(args, f"new_{name}")
    return {"old": old, "new": new}


def run_one(vae: Any, x: torch.Tensor, seed: int, kw: dict[str, Any]) -> dict[str, Any]:
    """One estimate with its per-image values, seconds, CPU seconds and the load around it."""
    per: list[torch.Tensor] = []
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    res = evaluate_ais(vae, x, seed=seed, per_image=per, **kw)
    res["seconds"] = time.perf_counter() - t0
    res["cpu_seconds"] = time.process_time() - c0
    res["load"] = (load0, os.getloadavg()[0])
    res["per_image_log_px"] = torch.cat(per).tolist()
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__, ("both", "new", "old"), "both")
    p.add_argument("run_dir", type=Path, help="a `vilab train` run directory")
    p.add_argument("--images", type=int, default=None, help="test images [1000; quick: 20]")
    p.add_argument("--old-chains", type=int, default=4, help="[4]")
    p.add_argument("--old-dists", type=int, default=None, help="[1000; quick: 20]")
    p.add_argument("--new-chains", type=int, default=None, help="[FAST]")
    p.add_argument("--new-num-dists", type=int, default=None, help="[FAST; quick: 20]")
    p.add_argument("--new-num-leapfrog", type=int, default=None, help="[FAST]")
    args = p.parse_args(argv)
    common.fill_defaults(
        args, {"images": (20, 1000), "old_dists": (20, 1000), "new_num_dists": (20, None)}
    )
    common.require(p, args, ["images", "old_chains", "old_dists"])
    common.require(p, args, ["new_chains", "new_num_dists", "new_num_leapfrog"])
    out = common.start("vilab AIS: the fast path against the settings before", args)
    config, vae, weights = load_trained_vae(
        args.run_dir, "cpu", common.default_data_dir(args.data_dir)
    )
    x = vae_data_for(config, None).test[: args.images]
    seed = derive_seed(config.seed, Stream.TEST)  # as `vilab eval`
    print(f"- model: {args.run_dir} ({weights.name}), {x.shape[0]} test images\n", flush=True)
    parts = ("new", "old") if args.part == "both" else (args.part,)
    rows = "| estimator | settings | log p(x) | MC s.e. | accept | seconds | CPU s | load |"
    print(rows + "\n|---|---|---:|---:|---:|---:|---:|---|")
    results: dict[str, Any] = {}
    for name in parts:
        kw = settings(args)[name]
        r = run_one(vae, x, seed, kw)
        results[name] = {"settings": kw, **r}
        what = (
            f"{kw['chains']} chains × {kw['num_dists']} dists × {kw['num_leapfrog']} leapfrog, "
            f"batch {kw['batch'] or 'all'}, "
            + (
                f"momentum {kw['momentum']}, pilot-steered ε, standardized, fused"
                if name == "new"
                else "per-chain ε, unfused"
            )
        )
        print(
            f"| {name} | {what} | {r['log_px']:.3f} | {r['log_px_stderr']:.3f} | "
            f"{r['accept_rate']:.2f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |",
            flush=True,
        )
    if len(parts) == 2:
        d = torch.tensor(results["new"]["per_image_log_px"]) - torch.tensor(
            results["old"]["per_image_log_px"]
        )
        diff, se = float(d.mean()), float(d.std() / math.sqrt(len(d))) if len(d) > 1 else math.nan
        per_1000 = results["new"]["seconds"] * 1000 / x.shape[0]
        speed = results["old"]["seconds"] / results["new"]["seconds"]
        met = abs(diff) <= GOAL_NATS and per_1000 <= GOAL_SECONDS
        print(
            f"\n**new − old = {diff:+.3f} ± {se:.3f} nats** per image (paired over the same "
            f"images); new {per_1000:.1f} s per 1000 images, {speed:.1f}× faster than old. "
            f"Goal (within {GOAL_NATS} nats, ≤ {GOAL_SECONDS:.0f} s per 1000 images on 2 "
            f"cores): {'met' if met else 'not met'} on this run"
            + (f" ({common.QUICK_NOTE})" if args.quick else "")
            + ".",
            flush=True,
        )
        results["difference"] = {"mean": diff, "stderr": se, "goal_met": met}
    out["results"] = results
    if args.json:
        import json

        args.json.write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
