"""Benchmark: Frey Faces VAEs against the published rows, in bits per dimension.

Trains the Frey Faces presets on a CPU budget each and prints the test bits per dimension
they reach, importance-sampled (K = ``--samples``, default 5,000, as the papers) on the
weights of best validation bound, beside the paper's row:

- ``vampprior_vae`` (``configs/vae_freyfaces_vampprior_vae.yaml``): Tomczak & Welling
  (2018), the VAE with a standard prior (MLP 300-300, z = 40, discretized logistic);
- ``vampprior_iaf``, ``vampprior_planar``: the same networks with q(z | x) a mean-field
  Gaussian and 2 IAF steps, or 8 planar flows;
- ``sylvester_<row>`` for row in vae, planar, iaf, orthogonal, householder, triangular
  (``configs/vae_freyfaces_sylvester_<row>.yaml``): van den Berg et al. (2018), gated
  convolutions, z = 64, a 256-way categorical decoder.

The papers' values are the ones REFERENCE.md §5 recalls (marked ≈ there): they could not be
checked against the papers from the machine this was written on, so they are printed as
"recalled". Two standard errors are printed for each test figure: the Monte Carlo error of
the importance-sampled estimate, and the spread over the 200 test images (what a different
draw of test faces would move). A flow row is compared with the VAE row trained beside it
on the same images by the paired difference of per-image log p(x) and its standard error.

Goals (issue 19): the VampPrior VAE row within its value + 0.05 bpd in ≤ 60 minutes of
training on 2 cores, and the flow row better than it by more than 2 (paired) s.e.

Run::

    .venv/bin/python benchmarks/freyfaces.py                          # the two VampPrior rows
    .venv/bin/python benchmarks/freyfaces.py --rows sylvester_vae sylvester_orthogonal \\
        --minutes 20
    .venv/bin/python benchmarks/freyfaces.py --quick                  # smoke run

A row trains until its preset's steps or ``--minutes`` of training (``max_seconds``),
whichever comes first, into ``--runs-dir``/<row> (an existing finished run there is
evaluated, not retrained: delete it to train again; an interrupted one is resumed). A row's
test score is kept in its run directory and read back by later runs with the same K and
seed. Data: ``--data-dir``, else ``$VILAB_DATA_DIR``, else ``../shared/data``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import common
import torch

from vilab.commands.train import train_vae
from vilab.config import load_train_config
from vilab.evaluation.loglik import evaluate
from vilab.train.runs import load_trained_vae, read_json
from vilab.train.vae import vae_data_for

CONFIGS = common.REPO / "configs"
SYLVESTER = ("vae", "planar", "iaf", "orthogonal", "householder", "triangular")
# Recalled published test NLL in bits/dim (REFERENCE.md §5, unchecked): row -> value.
PAPER: dict[str, float | None] = {
    "vampprior_vae": 4.63,
    "vampprior_iaf": None,
    "vampprior_planar": None,
    "sylvester_vae": 4.40,
    "sylvester_planar": 4.31,
    "sylvester_iaf": 4.38,
    "sylvester_orthogonal": 4.39,
    "sylvester_householder": 4.35,
    "sylvester_triangular": 4.35,
}
# The row each flow row is compared with (same networks, likelihood and budget).
BASELINE = {"vampprior_iaf": "vampprior_vae", "vampprior_planar": "vampprior_vae"} | {
    f"sylvester_{r}": "sylvester_vae" for r in SYLVESTER if r != "vae"
}


def preset(row: str) -> Path:
    return CONFIGS / f"vae_freyfaces_{row}.yaml"


def train_row(row: str, args: Any) -> dict[str, Any]:
    """Trains ``row`` (unless its run directory holds a finished run) and evaluates it."""
    run_dir = args.runs_dir / row
    extra = [*common.data_override(args.data_dir), f"max_seconds={args.minutes * 60}"]
    # The test figure is this script's own evaluation below (per image, for the paired
    # differences): the run's final evaluation at the preset's K = 5,000 would score the
    # same weights a second time (> 55 min for the gated-convolution rows on 2 cores).
    extra += [f"threads={args.threads}", f"seed={args.seed}", "final_eval=false"]
    if args.quick:
        extra += ["steps=20", "eval_every=10", "eval.samples=100", "eval.valid_images=20"]
    done = run_dir / "metrics.json"
    if done.is_file() and not read_json(done).get("interrupted"):
        print(f"  {row}: evaluating the finished run in {run_dir}", file=sys.stderr)
        metrics = read_json(done)
        wall = metrics.get("seconds", math.nan)
    else:
        config = load_train_config(preset(row), extra)
        resume = (run_dir / "checkpoint.pt").is_file()  # an interrupted run: go on with it
        print(f"  training {row} into {run_dir} …", file=sys.stderr, flush=True)
        with common.training_clock(args.clock):
            (metrics,), wall = common.time_block(
                lambda: train_vae(config, run_dir, progress=sys.stderr.isatty(), resume=resume)
            )
        if metrics.get("interrupted"):  # a signal: the run saved a checkpoint and stopped
            sys.exit(f"{row}: interrupted at step {metrics.get('steps')}; run again to resume")
    samples = 100 if args.quick else args.samples
    est, dim = scored(run_dir, samples, args)
    per = torch.tensor(est["log_px_per_image"], dtype=torch.float64)
    spread = float(per.std()) / math.sqrt(per.numel())
    return {
        "row": row,
        "steps": metrics.get("steps"),
        "train_seconds": metrics.get("seconds", wall),
        "bpd": est["bpd"],
        "bpd_elbo": est["bpd_elbo"],
        "mc_se_bpd": est["log_px_stderr"] / (dim * math.log(2)),
        "images_se_bpd": spread / (dim * math.log(2)),
        "per_image": per,
        "dim": dim,
    }


def scored(run_dir: Path, samples: int, args: Any) -> tuple[dict[str, Any], int]:
    """The test evaluation of ``run_dir``'s best weights at K = ``samples``, per image, and
    the data dimension; kept in ``run_dir`` (``bench_eval_K<samples>_seed<seed>.json``),
    so a finished row is scored once (a gated-convolution row takes 5–15 minutes)."""
    cache = run_dir / f"bench_eval_K{samples}_seed{args.seed}{'_quick' if args.quick else ''}.json"
    if cache.is_file():
        kept = read_json(cache)
        return kept["estimate"], kept["dim"]
    config, vae, _ = load_trained_vae(run_dir, "cpu", args.data_dir)
    test = vae_data_for(config, None).test
    if args.quick:
        test = test[:20]
    est = evaluate(vae, test, samples, None, None, seed=args.seed, per_image=True)
    dim = int(test[0].numel())
    cache.write_text(json.dumps({"estimate": est, "dim": dim}))
    return est, dim


def paired(flow: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
    """The flow's bpd minus the baseline's and the s.e. of that difference, over the same
    test images (paired: per-image differences of log p(x))."""
    d = -(flow["per_image"] - base["per_image"]) / (flow["dim"] * math.log(2))
    return float(d.mean()), float(d.std()) / math.sqrt(d.numel())


def main() -> None:
    p = common.base_parser(__doc__, ("all",), "all")
    p.add_argument("--rows", nargs="+", choices=tuple(PAPER), default=None)
    p.add_argument("--minutes", type=float, default=60.0, help="training budget per row [60]")
    p.add_argument(
        "--clock",
        choices=tuple(common.CLOCKS),
        default="wall",
        help="what --minutes counts: wall time, or the process's CPU time (fair on a "
        "machine others share) [wall]",
    )
    p.add_argument("--samples", type=int, default=5000, help="importance samples [5000]")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/bench_freyfaces"))
    args = p.parse_args()
    args.rows = args.rows or ["vampprior_vae", "vampprior_iaf"]
    args.data_dir = common.default_data_dir(args.data_dir)
    common.require(p, args, ["minutes", "samples"], 0, strict=True)
    out = common.start("vilab Frey Faces benchmark", args)
    rows = {r: train_row(r, args) for r in args.rows}
    print(
        f"Test NLL in bits/dim, K = {args.samples if not args.quick else 100} importance "
        f"samples on the weights of best validation bound; training ≤ {args.minutes:g} min "
        f"per row ({common.threads()}).\n"
    )
    print(
        "| row | steps | training | test bpd | MC s.e. | s.e. over images | −ELBO bpd | paper (recalled) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows.values():
        paper = PAPER[r["row"]]
        print(
            f"| {r['row']} | {r['steps']} | {r['train_seconds'] / 60:.1f} min | "
            f"{r['bpd']:.3f} | {r['mc_se_bpd']:.4f} | {r['images_se_bpd']:.3f} | "
            f"{r['bpd_elbo']:.3f} | {'—' if paper is None else f'≈ {paper:.2f}'} |"
        )
    goals = []
    if "vampprior_vae" in rows:
        r = rows["vampprior_vae"]
        ok = r["bpd"] <= PAPER["vampprior_vae"] + 0.05 and r["train_seconds"] <= 3600
        goals.append(
            common.goal_line(
                "VampPrior VAE row ≤ 4.63 + 0.05 bpd in ≤ 60 min",
                f"{r['bpd']:.3f} bpd in {r['train_seconds'] / 60:.1f} min",
                ok,
            )
        )
    for flow, base in BASELINE.items():
        if flow in rows and base in rows:
            diff, se = paired(rows[flow], rows[base])
            goals.append(
                common.goal_line(
                    f"{flow} better than {base} by > 2 paired s.e.",
                    f"{diff:+.4f} ± {se:.4f} bpd",
                    diff < -2 * se,
                )
            )
    out["rows"] = {k: {n: v for n, v in r.items() if n != "per_image"} for k, r in rows.items()}
    common.report_goals(out, goals, args.json)


if __name__ == "__main__":
    main()
