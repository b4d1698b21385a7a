"""posteriordb: vilab's families against zuko and Pyro on 15 posteriors, at equal CPU time.

For each posterior (posteriordb, Magnusson et al. 2024; the Stan model through
``vilab.targets.stan``, the same log-density on the unconstrained space for everyone)
and each method — vilab's mean-field, full-rank, default and a neural spline flow
(``vilab fit``); zuko's MAF and NSF; Pyro's AutoNormal, AutoMultivariateNormal and
AutoIAFNormal (:mod:`vi_peers`) — one fit trains for ``--seconds`` on one thread (two
fits at a time on two cores). The budget is read by ``--clock``: ``cpu`` (the default)
counts the fit's process CPU time (``time.process_time``), so that a loaded, shared
machine gives every method the same computation; ``wall`` counts wall-clock time. Every q
then gets vilab's report card from the same number of draws
(:func:`vilab.report.report_card`): the ELBO ± s.e., the Pareto k̂ of the importance
weights, and against posteriordb's reference draws on the constrained scale the errors
of the means and sds in reference sds (max over quantities; q's own / PSIS-corrected)
and Pathfinder's W1 of 100 draws of q (picked uniformly / PSIS-resampled) over the floor
that 100 reference draws get (Zhang et al. 2022; :mod:`vilab.estimators.reference`).

``--seeds N`` repeats every fit with seeds ``--seed`` … ``--seed + N − 1``: the table then
gives the mean over seeds and the ELBO's standard error over seeds (with one seed, its
Monte Carlo standard error). ``--posteriors`` also takes the suite's targets with known
answers (``funnel10``, …: :data:`vilab.targets.suite.SUITE`; errors against their closed
forms, no W1), tabled but outside the goals; ``--methods default_2d`` adds vilab's
default for D ≤ 2 (:func:`vilab.config.default_stack` (2)) as a method of its own.
``--reuse FILE`` (an earlier run's ``--json``, same budget, card size and clock) puts its
fits into the tables instead of running them again: run the peers once, then only what
changed.

Goals (issue 18): on ≥ 13 of the 15 posteriors vilab's default reaches k̂ < 0.7 and
PSIS-corrected mean and sd errors < 0.1 reference sd; W1 of the PSIS-resampled draws
≤ 1.1 × floor on all (q's own draws are printed beside it); vilab's
default at least as good as the best peer (its ELBO within 2 s.e. of the best peer's, or
above it). A posterior without reference draws is skipped with a note.

    python benchmarks/posteriordb.py            # 15 × 9 fits of 120 CPU s: ≈ 2.5 h on two idle cores
    python benchmarks/posteriordb.py --quick    # 10 s fits on 2 posteriors: every code path
    python benchmarks/posteriordb.py --posteriors eight_schools-eight_schools_centered \
        funnel10 --methods default zuko_maf pyro_iaf --seconds 60 --seeds 3
    python benchmarks/posteriordb.py --methods default zuko_maf --reuse before.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    CLOCKS,
    CardFit,
    base_parser,
    budget_overrides,
    fill_defaults,
    goal_line,
    report_goals,
    require,
    run_parallel,
    start,
    training_clock,
    write_json,
)

from vilab.targets.suite import SUITE

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
    "default": [],  # vilab's default family for the posterior's dimension
    "spline": ["family.kind=spline_coupling", "family.layers=6", "family.hidden=[64,64]"],
}


def _stack_override(dim: int) -> list[str]:
    """``family.stack=…``: vilab's default stack for dimension ``dim``, spelled out."""
    from vilab.config import default_stack

    return [f"family.stack={json.dumps([f.model_dump() for f in default_stack(dim)])}"]


#: vilab methods run only when ``--methods`` names them: the D ≤ 2 default on any D, and
#: the default with sticking-the-landing gradients.
OPTIONAL = {"default_2d": _stack_override(2), "default_stl": ["objective.stl=true"]}
GOAL_KHAT, GOAL_ERROR, GOAL_W1, GOAL_COUNT = 0.7, 0.1, 1.1, 13


def peers() -> tuple[str, ...]:
    from vi_peers import PEERS

    return PEERS


@dataclasses.dataclass(kw_only=True)
class PosteriorFit(CardFit):
    """One method on one posterior (``target``: its posteriordb name or a suite target)
    with one seed."""

    seed: int = 0

    def summary(self) -> str:
        return f"ELBO {self.card['elbo']:.2f}, k̂ {self.card['khat']:.2f}"

    def ref(self, key: str) -> float:
        """A reference error of the card: against posteriordb's draws, else against a
        suite target's closed form (which has no W1)."""
        ref = self.card.get("reference_draws") or self.card.get("reference") or {}
        return ref.get(key, math.nan)

    def w1_ratio(self, key: str = "w1") -> float:
        """W1 of q's draws (``w1``) or of the PSIS-resampled ones (``w1_psis``) over the
        floor."""
        return self.ref(key) / self.ref("w1_floor")


@dataclasses.dataclass
class Summary:
    """One method on one posterior over its seeds: means of the figures; ``elbo_se`` the
    standard error over seeds, or with one seed the card's Monte Carlo one."""

    method: str
    seeds: int
    failed: list[str]
    elbo: float = math.nan
    elbo_se: float = math.nan
    figures: dict[str, float] = dataclasses.field(default_factory=dict)

    KEYS = ("khat", "mean_error_q", "mean_error_psis", "sd_error_q", "sd_error_psis")
    #: The reference's own MCSE of its means and sds, max over coordinates, in its sds.
    REF_MCSE = ("ref_mcse_mean_max", "ref_mcse_sd_max")

    @classmethod
    def of(cls, method: str, fits: list[PosteriorFit]) -> Summary:
        ok = [f for f in fits if f.card]
        s = cls(method, len(fits), [f"seed {f.seed}: {f.error}" for f in fits if not f.card])
        if not ok:
            return s
        elbos = [f.card["elbo"] for f in ok]
        s.elbo = statistics.fmean(elbos)
        if len(ok) > 1:
            s.elbo_se = statistics.stdev(elbos) / math.sqrt(len(ok))
        else:
            s.elbo_se = ok[0].card["elbo_stderr"]
        per_fit = {
            "khat": [f.card["khat"] for f in ok],
            "w1": [f.w1_ratio() for f in ok],
            "w1_psis": [f.w1_ratio("w1_psis") for f in ok],
            "steps": [f.steps for f in ok],
            "seconds": [f.seconds for f in ok],
            "wall": [f.wall for f in ok],
        }
        for k in (*cls.KEYS[1:], *cls.REF_MCSE):
            per_fit[k] = [f.ref(k) for f in ok]
        s.figures = {k: statistics.fmean(v) for k, v in per_fit.items()}
        return s

    @property
    def ok(self) -> bool:
        return not math.isnan(self.elbo)

    def get(self, key: str) -> float:
        return self.figures.get(key, math.nan)

    def meets_goal(self) -> bool:
        errors = (self.get("mean_error_psis"), self.get("sd_error_psis"))
        return self.ok and self.get("khat") < GOAL_KHAT and max(errors) < GOAL_ERROR


def _target(posterior: str) -> Any:
    from vilab.build import target_from_config
    from vilab.config import TargetConfig

    return target_from_config(TargetConfig(name=_spec(posterior)))


def _spec(posterior: str) -> str:
    """The ``target.name`` of a posterior: a suite target as it is, else
    ``posteriordb:NAME``."""
    return posterior if posterior in SUITE else f"posteriordb:{posterior}"


def fit_one(
    posterior: str, method: str, seconds: float, samples: int, seed: int, clock: str = "cpu"
) -> PosteriorFit:
    """Fit ``method`` to ``posterior`` for ``seconds`` of training by ``clock`` and read
    its card."""
    r = PosteriorFit(target=posterior, method=method, seed=seed)
    t0 = time.perf_counter()
    vilab = VILAB | OPTIONAL
    if method in vilab:
        from vilab.config import load_fit_config

        overrides = budget_overrides(_spec(posterior), seconds, samples, seed)
        overrides += vilab[method]
        with training_clock(clock):
            r.card = r.run(load_fit_config(overrides=overrides)).get("report", {})
    else:
        _fit_peer(r, seconds, samples, seed, clock)
    r.wall = time.perf_counter() - t0
    return r


def _fit_peer(r: PosteriorFit, seconds: float, samples: int, seed: int, clock: str) -> None:
    import torch
    from vi_peers import fit_peer

    from vilab.report import report_card

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    target = _target(r.target)
    try:
        q, r.steps, r.seconds = fit_peer(r.method, target, seconds, 1000, CLOCKS[clock])
        r.card = report_card(q, target, samples)
    except (FloatingPointError, RuntimeError, ValueError, NotImplementedError) as err:
        r.error = type(err).__name__
        print(f"  {r.where}: {err}", file=sys.stderr)


def summaries(fits: list[PosteriorFit]) -> list[Summary]:
    """A :class:`Summary` per method, in the order the methods first appear."""
    methods = list(dict.fromkeys(f.method for f in fits))
    return [Summary.of(m, [f for f in fits if f.method == m]) for m in methods]


def table(posterior: str, rows: list[Summary], clock: str = "cpu") -> str:
    """One Markdown table: a row per method (means over its seeds)."""
    seeds = max((s.seeds for s in rows), default=1)
    se = "s.e. over seeds" if seeds > 1 else "s.e."
    lines = [
        f"### {posterior}" + (f" ({seeds} seeds)" if seeds > 1 else "") + "\n",
        f"| method | steps | train s ({clock}) | ELBO ± {se} | k̂ | mean err q / PSIS | "
        "sd err q / PSIS | W1 / floor q / PSIS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        if not s.ok:
            lines.append(f"| {s.method} | | | failed ({'; '.join(s.failed)}) | | | | |")
            continue
        g = s.get
        note = f" ({len(s.failed)} failed)" if s.failed else ""
        lines.append(
            f"| {s.method}{note} | {g('steps'):.0f} | {g('seconds'):.0f} "
            f"| {s.elbo:.2f} ± {s.elbo_se:.2f} | {g('khat'):.2f} "
            f"| {g('mean_error_q'):.3f} / {g('mean_error_psis'):.3f} "
            f"| {g('sd_error_q'):.3f} / {g('sd_error_psis'):.3f} "
            f"| {g('w1'):.2f} / {g('w1_psis'):.2f} |"
        )
    mcse = [max((s.get(k) for s in rows if s.ok), default=math.nan) for k in Summary.REF_MCSE]
    if not any(math.isnan(m) for m in mcse):
        lines.append(
            f"\nThe reference's own Monte Carlo s.e., max over coordinates: means "
            f"{mcse[0]:.3f}, sds {mcse[1]:.3f} reference sd (errors of that size are noise)."
        )
    return "\n".join(lines) + "\n"


def goals(by: dict[str, list[Summary]], skipped: list[str], quick: bool) -> list[str]:
    """The issue's three goals with PASS/MISS (n/a under ``--quick``), over the
    posteriordb posteriors of ``by`` (suite targets are tabled only)."""
    note = "--quick: budget too small to judge" if quick else ""
    by = {p: rows for p, rows in by.items() if p not in SUITE}
    default = {p: next(s for s in rows if s.method == "default") for p, rows in by.items()}
    ok = [p for p, s in default.items() if s.meets_goal()]
    need = GOAL_COUNT - len(skipped)  # a skipped posterior counts as a miss
    extra = f"; skipped (no reference): {', '.join(skipped)}" if skipped else ""
    w1 = {k: {p: s.get(k) for p, s in default.items()} for k in ("w1_psis", "w1")}
    bad_w1 = {k: [p for p, v in w1[k].items() if not v <= GOAL_W1] for k in w1}
    worse = [p for p, rows in by.items() if not _as_good_as_best_peer(rows)]
    return [
        goal_line(
            f"vilab default: k̂ < {GOAL_KHAT} and mean, sd errors < {GOAL_ERROR} ref sd "
            f"on ≥ {GOAL_COUNT} of 15",
            f"{len(ok)} of {len(by)} measured{extra}",
            None if quick else len(ok) >= need,
            note,
        ),
        goal_line(
            f"vilab default: W1 ≤ {GOAL_W1} × floor on all (PSIS-resampled draws, as the "
            "errors are PSIS-corrected; q's own draws after the ';')",
            "; ".join(
                f"worst {max(w1[k].values(), default=math.nan):.2f} × floor"
                + (f", above on {', '.join(bad_w1[k])}" if bad_w1[k] else "")
                for k in w1
            ),
            None if quick else not bad_w1["w1_psis"] and not skipped,
            note,
        ),
        goal_line(
            "vilab default at least as good as the best peer (ELBO within 2 s.e.)",
            f"behind on {len(worse)} of {len(by)}" + (f": {', '.join(worse)}" if worse else ""),
            None if quick else not worse,
            note,
        ),
    ]


def _as_good_as_best_peer(rows: list[Summary]) -> bool:
    mine = next(s for s in rows if s.method == "default")
    theirs = [s for s in rows if s.method in peers() and s.ok]
    if not theirs:
        return mine.ok
    if not mine.ok:
        return False
    best = max(theirs, key=lambda s: s.elbo)
    return mine.elbo >= best.elbo - 2 * math.hypot(mine.elbo_se, best.elbo_se)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__, ["all"], "all", data_dir=False)
    p.add_argument("--seconds", type=float, default=None, help="training seconds per fit [120]")
    p.add_argument(
        "--clock", choices=tuple(CLOCKS), default="cpu", help="what --seconds counts [cpu]"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per fit, from --seed on [1]")
    p.add_argument("--samples", type=int, default=None, help="draws of q per card [20000]")
    p.add_argument("--jobs", type=int, default=2, help="fits at a time [2]")
    p.add_argument("--posteriors", nargs="+", choices=[*POSTERIORS, *SUITE], default=None)
    p.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="the --json file of an earlier run: its fits of the same budget are not run "
        "again but enter the tables (repeatable)",
    )
    methods = [*VILAB, *peers()]
    p.add_argument("--methods", nargs="+", choices=[*methods, *OPTIONAL], default=methods)
    args = p.parse_args(argv)
    fill_defaults(args, {"seconds": (10.0, 120.0), "samples": (2000, 20_000)})
    fill_defaults(args, {"posteriors": (list(QUICK_POSTERIORS), list(POSTERIORS))})
    require(p, args, ["threads", "jobs", "seeds"])
    require(p, args, ["samples"], 100)
    require(p, args, ["seconds"], 0, strict=True)
    return args


def _with_reference(names: list[str]) -> tuple[list[str], list[str]]:
    """Split ``names`` into those with reference draws (or a suite target's closed form)
    and those without; builds (and caches) each Stan model now, before the workers start."""
    from vilab.targets.posteriordb import load_posterior

    kept, skipped = [], []
    for name in names:
        info = None if name in SUITE else load_posterior(name)
        if info is not None and info.reference is None:
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
            f"- budget: {args.seconds:g} s of training per fit by the {args.clock} clock "
            f"({'process CPU time' if args.clock == 'cpu' else 'wall clock'}), "
            f"{args.jobs} fits at a time, one thread each; {plural_seeds(args.seeds)}; "
            f"1000 draws of q per step (vilab: fewer where the budget would allow fewer "
            f"than 1000 steps, `budget.*`); cards from {args.samples:,} draws",
        ],
    )
    kept, skipped = _with_reference(list(args.posteriors))
    seeds = range(args.seed, args.seed + args.seeds)
    calls = [
        (p, m, args.seconds, args.samples, s, args.clock)
        for s in seeds
        for p in kept
        for m in args.methods
    ]
    done = reused(args.reuse, args.seconds, args.samples, args.clock)
    calls = [c for c in calls if c[:2] + (c[4],) not in done]
    print(f"{len(calls)} fits ({len(done)} reused) …", file=sys.stderr, flush=True)
    fits = [f for f in done.values() if f.target in kept and f.method in args.methods]
    fits += run_parallel(fit_one, calls, args.jobs)
    by = {p: summaries([f for f in fits if f.target == p]) for p in kept}
    for p, rows in by.items():
        print(table(p, rows, args.clock))
    print(
        "k̂ < 0.5 good, < 0.7 ok, ≥ 0.7 unreliable. Errors: max over quantities of "
        "|estimate − reference| / reference sd, q's own and PSIS-corrected, on the "
        "constrained scale (a suite target: against its closed form, no W1). W1: 100 draws "
        "of q (picked uniformly / resampled by the PSIS weights) against the reference, "
        "over the floor of 100 reference draws, each a mean over 10 random splits of the "
        "reference. Train s: the "
        "training budget as read by the clock; steps and figures are means over seeds.\n"
    )
    out["fits"] = [dataclasses.asdict(f) for f in fits]
    out["skipped"] = skipped
    if "default" in args.methods:
        report_goals(out, goals(by, skipped, args.quick), args.json)
    else:  # (the peers alone, say, to --reuse beside vilab's fits later)
        print("## Goals\n- not judged: they are about vilab's default (--methods default)")
        write_json(out, args.json)


def reused(
    paths: list[Path], seconds: float, samples: int, clock: str
) -> dict[tuple[str, str, int], PosteriorFit]:
    """The fits of earlier runs' ``--json`` files, by (posterior, method, seed).

    Raises:
        SystemExit: a file run with another budget, card size or clock (its fits would not
            compare)."""
    fits: dict[tuple[str, str, int], PosteriorFit] = {}
    for path in paths:
        data = json.loads(path.read_text())
        a = data.get("args", {})
        theirs = (a.get("seconds"), a.get("samples"), a.get("clock", "cpu"))
        if theirs != (seconds, samples, clock):
            sys.exit(
                f"--reuse {path}: run with seconds, samples, clock = {theirs}, this run "
                f"{(seconds, samples, clock)}: its fits do not compare"
            )
        for d in data["fits"]:
            f = PosteriorFit(**d)
            fits[(f.target, f.method, f.seed)] = f
    return fits


def plural_seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds (ELBO ± s.e. over seeds)"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
