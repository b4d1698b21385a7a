"""posteriordb: vilab's families against zuko and Pyro on 15 posteriors, at equal CPU time.

For each posterior (posteriordb, Magnusson et al. 2024; the Stan model through
``vilab.targets.stan``, the same log-density on the unconstrained space for everyone)
and each method — vilab's mean-field, full-rank, default and a neural spline flow
(``vilab fit``); zuko's MAF and NSF; Pyro's AutoNormal, AutoMultivariateNormal and
AutoIAFNormal (:mod:`vi_peers`) — one fit trains for ``--seconds`` of wall-clock time on
one thread (two fits at a time on two cores). Every q then gets vilab's report card from
the same number of draws (:func:`vilab.report.report_card`): the ELBO ± s.e., the Pareto
k̂ of the importance weights, and against posteriordb's reference draws on the
constrained scale the errors of the means and sds in reference sds (max over
quantities; q's own / PSIS-corrected) and Pathfinder's W1 of 100 draws of q over the
floor that 100 reference draws get (Zhang et al. 2022; :mod:`vilab.estimators.reference`).

Goals (issue 18): on ≥ 13 of the 15 posteriors vilab's default reaches k̂ < 0.7 and
PSIS-corrected mean and sd errors < 0.1 reference sd; W1 ≤ 1.1 × floor on all; vilab's
default at least as good as the best peer (its ELBO within 2 s.e. of the best peer's, or
above it). A posterior without reference draws is skipped with a note.

    python benchmarks/posteriordb.py            # 15 × 9 fits of 120 s: ≈ 2.5 h on two cores
    python benchmarks/posteriordb.py --quick    # 10 s fits on 2 posteriors: every code path
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

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

POSTERIORS = (
    "eight_schools-eight_schools_centered",
    "eight_schools-eight_schools_noncentered",
    "diamonds-diamonds",
    "arK-arK",
    "garch-garch11",
    "gp_pois_regr-gp_pois_regr",
    "hmm_example-hmm_example",
    "nes2000-nes",
    "mesquite-logmesquite_logvas",
    "earnings-logearn_interaction",
    "sblrc-blr",
    "hudson_lynx_hare-lotka_volterra",
    "low_dim_gauss_mix-low_dim_gauss_mix",
    "bball_drive_event_0-hmm_drive_0",
    "one_comp_mm_elim_abs-one_comp_mm_elim_abs",
)
QUICK_POSTERIORS = ("eight_schools-eight_schools_noncentered", "arK-arK")
VILAB = {
    "mean_field": ["family.kind=mean_field"],
    "full_rank": ["family.kind=full_rank"],
    "default": [],  # vilab's default stack
    "spline": ["family.kind=spline_coupling", "family.layers=6", "family.hidden=[64,64]"],
}
GOAL_KHAT, GOAL_ERROR, GOAL_W1, GOAL_COUNT = 0.7, 0.1, 1.1, 13


def peers() -> tuple[str, ...]:
    from vi_peers import PEERS

    return PEERS


@dataclasses.dataclass(kw_only=True)
class PosteriorFit(CardFit):
    """One method on one posterior (``target``: its posteriordb name)."""

    def summary(self) -> str:
        return f"ELBO {self.card['elbo']:.2f}, k̂ {self.card['khat']:.2f}"

    def ref(self, key: str) -> float:
        return (self.card.get("reference_draws") or {}).get(key, math.nan)

    def w1_ratio(self) -> float:
        return self.ref("w1") / self.ref("w1_floor")

    def meets_goal(self) -> bool:
        errors = (self.ref("mean_error_psis"), self.ref("sd_error_psis"))
        return bool(self.card) and self.card["khat"] < GOAL_KHAT and max(errors) < GOAL_ERROR


def _target(posterior: str) -> Any:
    from vilab.targets.posteriordb import posteriordb_target

    return posteriordb_target(posterior)


def fit_one(posterior: str, method: str, seconds: float, samples: int, seed: int) -> PosteriorFit:
    """Fit ``method`` to ``posterior`` for ``seconds`` of training and read its card."""
    r = PosteriorFit(target=posterior, method=method)
    t0 = time.perf_counter()
    if method in VILAB:
        from vilab.config import load_fit_config

        overrides = budget_overrides(f"posteriordb:{posterior}", seconds, samples, seed)
        overrides += VILAB[method]
        r.card = r.run(load_fit_config(overrides=overrides)).get("report", {})
    else:
        _fit_peer(r, seconds, samples, seed)
    r.wall = time.perf_counter() - t0
    return r


def _fit_peer(r: PosteriorFit, seconds: float, samples: int, seed: int) -> None:
    import torch
    from vi_peers import fit_peer

    from vilab.report import report_card

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    target = _target(r.target)
    try:
        q, r.steps, r.seconds = fit_peer(r.method, target, seconds, samples=1000)
        r.card = report_card(q, target, samples)
    except (FloatingPointError, RuntimeError, ValueError, NotImplementedError) as err:
        r.error = type(err).__name__
        print(f"  {r.where}: {err}", file=sys.stderr)


def table(posterior: str, fits: list[PosteriorFit]) -> str:
    """One Markdown table: a row per method."""
    lines = [
        f"### {posterior}\n",
        "| method | steps | seconds | ELBO ± s.e. | k̂ | mean err q / PSIS | "
        "sd err q / PSIS | W1 / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in fits:
        c = f.card
        if not c:
            lines.append(f"| {f.method} | {f.steps} | | failed ({f.error}) | | | | |")
            continue
        lines.append(
            f"| {f.method} | {f.steps} | {f.wall:.0f} | {c['elbo']:.2f} ± {c['elbo_stderr']:.2f} "
            f"| {c['khat']:.2f} | {f.ref('mean_error_q'):.3f} / {f.ref('mean_error_psis'):.3f} "
            f"| {f.ref('sd_error_q'):.3f} / {f.ref('sd_error_psis'):.3f} "
            f"| {f.w1_ratio():.2f} |"
        )
    return "\n".join(lines) + "\n"


def goals(by: dict[str, list[PosteriorFit]], skipped: list[str], quick: bool) -> list[str]:
    """The issue's three goals with PASS/MISS (n/a under ``--quick``)."""
    note = "--quick: budget too small to judge" if quick else ""
    default = {p: next(f for f in fits if f.method == "default") for p, fits in by.items()}
    ok = [p for p, f in default.items() if f.meets_goal()]
    need = GOAL_COUNT - len(skipped)  # a skipped posterior counts as a miss
    extra = f"; skipped (no reference): {', '.join(skipped)}" if skipped else ""
    w1 = {p: f.w1_ratio() for p, f in default.items()}
    bad_w1 = [p for p, v in w1.items() if not v <= GOAL_W1]
    worse = [p for p, fits in by.items() if not _as_good_as_best_peer(fits)]
    return [
        goal_line(
            f"vilab default: k̂ < {GOAL_KHAT} and mean, sd errors < {GOAL_ERROR} ref sd "
            f"on ≥ {GOAL_COUNT} of 15",
            f"{len(ok)} of {len(by)} measured{extra}",
            None if quick else len(ok) >= need,
            note,
        ),
        goal_line(
            f"vilab default: W1 ≤ {GOAL_W1} × floor on all",
            f"worst {max(w1.values(), default=math.nan):.2f} × floor"
            + (f"; above on {', '.join(bad_w1)}" if bad_w1 else ""),
            None if quick else not bad_w1 and not skipped,
            note,
        ),
        goal_line(
            "vilab default at least as good as the best peer (ELBO within 2 s.e.)",
            f"behind on {len(worse)} of {len(by)}" + (f": {', '.join(worse)}" if worse else ""),
            None if quick else not worse,
            note,
        ),
    ]


def _as_good_as_best_peer(fits: list[PosteriorFit]) -> bool:
    mine = next(f for f in fits if f.method == "default")
    theirs = [f for f in fits if f.method not in VILAB and f.card]
    if not theirs:
        return bool(mine.card)
    if not mine.card:
        return False
    best = max(theirs, key=lambda f: f.card["elbo"])
    se = math.hypot(mine.card["elbo_stderr"], best.card["elbo_stderr"])
    return mine.card["elbo"] >= best.card["elbo"] - 2 * se


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__, ["all"], "all", data_dir=False)
    p.add_argument("--seconds", type=float, default=None, help="training seconds per fit [120]")
    p.add_argument("--samples", type=int, default=None, help="draws of q per card [20000]")
    p.add_argument("--jobs", type=int, default=2, help="fits at a time [2]")
    p.add_argument("--posteriors", nargs="+", choices=POSTERIORS, default=None)
    methods = [*VILAB, *peers()]
    p.add_argument("--methods", nargs="+", choices=methods, default=methods)
    args = p.parse_args(argv)
    fill_defaults(args, {"seconds": (10.0, 120.0), "samples": (2000, 20_000)})
    fill_defaults(args, {"posteriors": (list(QUICK_POSTERIORS), list(POSTERIORS))})
    require(p, args, ["threads", "jobs"])
    require(p, args, ["samples"], 100)
    require(p, args, ["seconds"], 0, strict=True)
    if "default" not in args.methods:
        p.error("--methods must include default (the goals are about it)")
    return args


def _with_reference(names: list[str]) -> tuple[list[str], list[str]]:
    """Split ``names`` into those with reference draws and those without; builds (and
    caches) each Stan model now, before the workers start."""
    from vilab.targets.posteriordb import load_posterior

    kept, skipped = [], []
    for name in names:
        info = load_posterior(name)
        if info.reference is None:
            print(f"skipping {name}: {info.note or 'no reference draws'}", file=sys.stderr)
            skipped.append(name)
            continue
        _target(name)  # compile once here, not in two workers at the same time
        kept.append(name)
    return kept, skipped


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import pyro
    import zuko

    out = start(
        "vilab posteriordb benchmark",
        args,
        peers=f"zuko {zuko.__version__}, pyro {pyro.__version__}",
        extra=[
            f"- budget: {args.seconds:g} s of training per fit, {args.jobs} fits at a time, "
            f"one thread each; 1000 draws of q per step; cards from {args.samples:,} draws",
        ],
    )
    kept, skipped = _with_reference(list(args.posteriors))
    calls = [(p, m, args.seconds, args.samples, args.seed) for p in kept for m in args.methods]
    print(f"{len(calls)} fits …", file=sys.stderr, flush=True)
    fits = run_parallel(fit_one, calls, args.jobs)
    by = {p: [f for f in fits if f.target == p] for p in kept}
    for p, rows in by.items():
        print(table(p, rows))
    print(
        "k̂ < 0.5 good, < 0.7 ok, ≥ 0.7 unreliable. Errors: max over quantities of "
        "|estimate − reference| / reference sd, q's own and PSIS-corrected, on the "
        "constrained scale. W1: 100 draws of q against the reference, over the floor of 100 "
        "reference draws. Seconds: training plus evaluation, wall clock.\n"
    )
    out["fits"] = [dataclasses.asdict(f) for f in fits]
    out["skipped"] = skipped
    report_goals(out, goals(by, skipped, args.quick), args.json)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
