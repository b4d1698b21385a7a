"""What the final evaluation of ``vilab fit`` costs: HEAD's fixed counts against the sizing
by standard error, on the same fitted q.

For each target, a default fit (``--quick``: 200 fixed steps, a smaller family) is trained
once; then, in one process and interleaved ``--repeats`` times, its evaluation is run with
the old fixed counts (exact KL from 100,000 draws, report card from 20,000) and with the
sized defaults (``kl.*``, ``report.*``: s.e. ≤ max(0.001 nats, 1% of the KL)). Printed per
target: both KLs ± s.e. with their draws, their difference in combined standard errors
(independent draws: |Δ| / √(se₁² + se₂²), which should be below ~2), the card's draws, the
median wall seconds of each evaluation, and the figures' seconds beside the prediction of
their cost line. Timings are wall-clock: compare the two columns of one row, on one
machine, with the load printed above.

    python benchmarks/eval_sizing.py                  # U1–U4 and banana, default fits
    python benchmarks/eval_sizing.py --quick          # smoke run (seconds)
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from vilab.commands.fit import figures_cost_line, run_fit  # noqa: E402
from vilab.config import load_fit_config  # noqa: E402
from vilab.evaluation.fit import evaluate_fit  # noqa: E402
from vilab.plots.density2d import plot_run  # noqa: E402
from vilab.train.logging import read_metrics  # noqa: E402

TARGETS = ("U1", "U2", "U3", "U4", "banana")
QUICK = ["steps=200", "family.stack=[{kind: iaf, layers: 2, hidden: [16, 16]}]"]


def evaluate_both(fit: Any, repeats: int, seed: int) -> dict[str, Any]:
    """The fixed and the sized evaluation of one fitted q, interleaved ``repeats`` times."""
    runs: dict[str, list[dict[str, Any]]] = {"fixed": [], "sized": []}
    evaluate_fit(fit.family, fit.target, 200, 200)  # imports paid before the clock
    for r in range(repeats):
        for name, counts in (("fixed", (100_000, 20_000)), ("sized", (None, None))):
            torch.manual_seed(seed + r)
            t0 = time.perf_counter()
            m = evaluate_fit(fit.family, fit.target, *counts)
            m["wall"] = time.perf_counter() - t0
            runs[name].append(m)
    return runs


def figures_seconds(fit: Any) -> float:
    on_cpu = copy.deepcopy(fit.family).cpu()
    records = read_metrics(fit.run_dir / "metrics.jsonl")
    t0 = time.perf_counter()
    figures_cost_line(on_cpu, fit.target)  # the cost line on stderr: compare
    plot_run(on_cpu, fit.target, records, Path(tempfile.mkdtemp()))
    return time.perf_counter() - t0


def row(target: str, runs: dict[str, list[dict[str, Any]]], figures: float) -> dict[str, Any]:
    a, b = runs["fixed"][0], runs["sized"][0]
    z = abs(a["kl"] - b["kl"]) / (a["kl_stderr"] ** 2 + b["kl_stderr"] ** 2) ** 0.5
    return {
        "target": target,
        "kl_fixed": (a["kl"], a["kl_stderr"], a["kl_samples"]),
        "kl_sized": (b["kl"], b["kl_stderr"], b["kl_samples"], b["kl_stderr_target"]),
        "z": z,
        "card_draws": (a["report"]["samples"], b["report"]["samples"]),
        "seconds": tuple(statistics.median(m["wall"] for m in runs[k]) for k in runs),
        "figures_seconds": figures,
    }


def main() -> None:
    p = common.base_parser(__doc__, ["all"], "all", data_dir=False)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), help="[U1 … banana]")
    p.add_argument("--repeats", type=int, default=None, help="[quick: 1, else 3]")
    args = p.parse_args()
    common.fill_defaults(args, {"repeats": (1, 3)})
    raw = common.start("vilab evaluation: fixed counts against sizing by s.e.", args)
    print("| target | KL, 100,000 draws | KL, sized (draws) | Δ/se | card draws "
          "fixed → sized | eval s fixed → sized | figures s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    rows = []
    for target in args.targets:
        overrides = [f"target.name={target}", f"threads={args.threads}", f"seed={args.seed}"]
        overrides.append("figures=false")  # timed below, apart from the fit
        cfg = load_fit_config(overrides=overrides + (QUICK if args.quick else []))
        with tempfile.TemporaryDirectory() as tmp:
            fit = run_fit(cfg, Path(tmp) / target, progress=False, tensorboard=False)
            r = row(target, evaluate_both(fit, args.repeats, args.seed), figures_seconds(fit))
        rows.append(r)
        (k1, s1, _), (k2, s2, n2, _) = r["kl_fixed"], r["kl_sized"]
        print(
            f"| {target} | {k1:.5f} ± {s1:.5f} | {k2:.5f} ± {s2:.5f} ({n2:,}) | {r['z']:.1f} "
            f"| {r['card_draws'][0]:,} → {r['card_draws'][1]:,} | {r['seconds'][0]:.2f} → "
            f"{r['seconds'][1]:.2f} | {r['figures_seconds']:.1f} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({**raw, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
