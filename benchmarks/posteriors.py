"""Posteriors with known answers: how close each vilab family gets within a CPU budget.

For every target of ``vilab.targets.suite.SUITE`` (Neal's funnel in 2 and 10 dimensions,
ill-conditioned Gaussians in 10 and 100, a well-separated 2-D mixture, the banana and
Bayesian logistic regression on the breast-cancer data, D = 31) and every family
(mean-field, full-rank, vilab's default stack, a neural spline flow), one
``vilab fit`` trains for ``--seconds`` of wall-clock time on one thread (two fits at a
time on two cores) and writes its report card (:mod:`vilab.report`). The table gives, as
Inference Gym defines them (Sountsov, Radul & Vasudevan 2020), the error of the means and
of the standard deviations in units of the reference standard deviation (max over
coordinates), for q's own moments and PSIS-corrected ones; the Pareto k̂ of the
importance weights; the ESS as a fraction of the draws; the z-score of the
importance-sampled log Z where log Z is known; and the seconds of training plus
evaluation.

Goal (issue 12): on every target some family reaches k̂ < 0.7 and PSIS-corrected mean
errors below 0.1 reference standard deviations within 2 minutes in all. Where none does,
the table says so.

    python benchmarks/posteriors.py                 # ≈ 20 min on two cores
    python benchmarks/posteriors.py --quick         # smoke run of every code path
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from common import (
    CardFit,
    base_parser,
    budget_overrides,
    fill_defaults,
    goal_line,
    report_goals,
    require,
    run_parallel,
    start,
)

from vilab.config import load_fit_config
from vilab.targets import resolve_target
from vilab.targets.suite import SUITE

FAMILIES = {
    "mean_field": ["family.kind=mean_field"],
    "full_rank": ["family.kind=full_rank"],
    "default": [],  # the default stack: 16 orthogonal Sylvester + 3 spline AR + 2 IAF
    # a neural spline flow: 6 rational-quadratic coupling layers, MLP 64-64, 8 bins on [−5, 5]
    "spline": ["family.kind=spline_coupling", "family.layers=6", "family.hidden=[64,64]"],
}
GOAL_KHAT, GOAL_MEAN_ERROR, GOAL_SECONDS = 0.7, 0.1, 120.0


@dataclasses.dataclass(kw_only=True)
class PosteriorFit(CardFit):
    """One family (``method``) on one suite target."""

    def summary(self) -> str:
        return f"k̂ {self.card['khat']:.2f}, mean err {self.mean_error():.3f} sd"

    def mean_error(self, kind: str = "psis") -> float:
        ref = self.card.get("reference") or {}
        return ref.get(f"mean_error_{kind}", math.nan)

    def sd_error(self, kind: str = "psis") -> float:
        ref = self.card.get("reference") or {}
        return ref.get(f"sd_error_{kind}", math.nan)

    def meets_goal(self) -> bool:
        return (
            bool(self.card)
            and self.card["khat"] < GOAL_KHAT
            and self.mean_error() < GOAL_MEAN_ERROR
            and self.wall <= GOAL_SECONDS
        )


def fit_one(target: str, family: str, seconds: float, samples: int, seed: int) -> PosteriorFit:
    """Fit ``family`` to ``target`` for ``seconds`` of training and read its card."""
    overrides = [*budget_overrides(target, seconds, samples, seed), *FAMILIES[family]]
    r = PosteriorFit(target=target, method=family)
    t0 = time.perf_counter()
    metrics = r.run(load_fit_config(overrides=overrides))
    r.wall = time.perf_counter() - t0
    r.card = metrics.get("report", {})
    return r


def table(fits: list[PosteriorFit]) -> str:
    lines = [
        "| target | D | family | steps | seconds | k̂ | ESS | mean err q / PSIS | "
        "sd err q / PSIS | log Z z-score |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in fits:
        c = f.card
        if not c:
            lines.append(f"| {f.target} | | {f.method} | | | failed ({f.error}) | | | | |")
            continue
        z = c.get("log_z_is_zscore")
        lines.append(
            f"| {f.target} | {c['dim']} | {f.method} | {f.steps} | {f.wall:.0f} | "
            f"{c['khat']:.2f} | {c['ess_fraction']:.1%} | "
            f"{f.mean_error('q'):.3f} / {f.mean_error():.3f} | "
            f"{f.sd_error('q'):.3f} / {f.sd_error():.3f} | "
            + ("—" if z is None else f"{z:+.1f}")
            + " |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__, ["all"], "all", data_dir=False)
    p.add_argument("--seconds", type=float, default=None, help="training seconds per fit [90]")
    p.add_argument("--samples", type=int, default=None, help="draws of q per card [20000]")
    p.add_argument("--jobs", type=int, default=2, help="fits at a time [2]")
    p.add_argument("--targets", nargs="+", choices=SUITE, default=list(SUITE))
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    args = p.parse_args(argv)
    fill_defaults(args, {"seconds": (2.0, 90.0), "samples": (500, 20_000)})
    require(p, args, ["threads", "jobs"])
    require(p, args, ["samples"], 100)
    require(p, args, ["seconds"], 0, strict=True)
    for name in args.targets:  # fail now, not after the other fits: e.g. no scikit-learn
        try:
            resolve_target(name)
        except ValueError as err:
            p.error(f"target {name!r} cannot be built: {err}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = start(
        "vilab posteriors benchmark",
        args,
        extra=[
            f"- budget: {args.seconds:g} s of training per fit, {args.jobs} fits at a time, "
            f"one thread each; cards from {args.samples:,} draws of q",
        ],
    )
    calls = [
        (t, f, args.seconds, args.samples, args.seed) for t in args.targets for f in args.families
    ]
    print(f"{len(calls)} fits …", file=sys.stderr, flush=True)
    fits = run_parallel(fit_one, calls, args.jobs)
    print(table(fits) + "\n")
    print(
        "k̂ < 0.5 good, < 0.7 ok, ≥ 0.7 unreliable. Errors: max over coordinates of "
        "|estimate − reference| / reference sd, for q's own moments and PSIS-corrected "
        "ones. Seconds: training plus evaluation, wall clock.\n"
    )
    out["fits"] = [dataclasses.asdict(f) for f in fits]
    goals = []
    for t in args.targets:
        mine = [f for f in fits if f.target == t and f.card]
        best = [f.method for f in mine if f.meets_goal()]
        if best:
            figure = ", ".join(best)
        elif mine:
            closest = min(mine, key=lambda f: (f.card["khat"] >= GOAL_KHAT, f.mean_error()))
            figure = (
                f"none; closest {closest.method}: k̂ {closest.card['khat']:.2f}, "
                f"mean err {closest.mean_error():.3f} sd in {closest.wall:.0f} s"
            )
        else:
            figure = "every fit failed"
        goals.append(
            goal_line(
                f"{t}: a family with k̂ < 0.7 and mean error < 0.1 sd within 2 min",
                figure,
                bool(best) if not args.quick else None,
                "--quick: budget too small to judge" if args.quick else "",
            )
        )
    report_goals(out, goals, args.json)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
