"""Benchmark: training steps per second of vilab's neural spline flows against zuko's NSF.

The same flow on both sides, in one process: a fixed standard-normal base in D dimensions
(``--dim``, 2: the target U1; otherwise a standard normal) followed by ``--transforms`` (3, zuko's default) rational-quadratic spline
transforms with ``--bins`` (8) bins on [−5, 5] (both libraries' tail bound), conditioners
with ``--hidden`` (64,64) hidden units, the order reversed between transforms, batch
``--samples`` (1000) per step. Two pairs:

- ``autoregressive``: vilab's ``spline_autoregressive`` (MADE conditioner) against zuko's
  ``NSF`` (fully autoregressive, ``passes=None``);
- ``coupling``: vilab's ``spline_coupling`` (half the coordinates splined, an MLP on the
  other half) against zuko's ``NSF(passes=2)`` (its coupling).

One step is the reverse-KL objective ``mean(log q(z) − log p̃(z))`` on U1 (vilab's U1 code
on both sides), its backward pass and an Adam update, in float32 with the same torch thread
count. vilab is driven the way a user drives it (``Fitter(config).train_step()``, which also
logs the bound); zuko the way its documentation does (``flow().rsample_and_log_prob`` +
Adam). Each side is warmed up, then timed over a block of steps; the sides alternate for
several rounds and the median rate of each is reported with the ratio vilab / zuko.

Where the work differs: vilab runs its autoregressive spline in IAF's direction (the
spline's parameters computed from the noise), so drawing and scoring a sample is one
conditioner pass per transform; zuko's NSF is a MAF, whose sampling direction is its
inverse: D conditioner passes, then one more for the log-determinant. Both are the same
model class (a D-dimensional autoregressive RQ-spline flow); the ratio measures what a
user of each library pays per training step of the reverse KL.

Run (zuko lives in the benchmark environment, ``make bench-env``)::

    .venv-bench/bin/python benchmarks/spline_speed.py [--part autoregressive|coupling|both]
    .venv-bench/bin/python benchmarks/spline_speed.py --quick     # smoke run, seconds

Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import common
import torch

from vilab.config import load_fit_config
from vilab.targets import Target, resolve_target
from vilab.targets.user import CallableTarget
from vilab.train.fit import Fitter

PAIRS = {"autoregressive": ("spline_autoregressive", None), "coupling": ("spline_coupling", 2)}
GOAL = 2.0  # vilab's spline flow at least this many times zuko's steps/s (issue 11)


def gaussian(z: torch.Tensor) -> torch.Tensor:
    """The target in D ≠ 2: an unnormalized standard normal."""
    return -0.5 * (z * z).sum(-1)


def zuko_version() -> str:
    """``"zuko <version>"``, or that it is not installed."""
    try:
        import zuko
    except ImportError:
        return "zuko not installed"
    return f"zuko {getattr(zuko, '__version__', 'installed')}"


def vilab_stepper(kind: str, args: argparse.Namespace, target: Target) -> Fitter:
    """A vilab Fitter for ``transforms`` spline layers of ``kind`` on a standard normal."""
    flow = {
        "kind": kind,
        "layers": args.transforms,
        "hidden": args.hidden,
        "bins": args.bins,
        "tail_bound": 5.0,
    }
    base: dict[str, Any] = {
        "family": {"kind": "stack", "base": "standard", "stack": [flow]},
        "optim": {"lr": args.lr, "schedule": "constant"},
        "samples": args.samples,
        "objective": {"beta_steps": 0},
        "dtype": "float32",
        "threads": args.threads,
        "figures": False,
        "seed": args.seed,
    }
    return Fitter(load_fit_config(base=base), target)


def zuko_stepper(passes: int | None, args: argparse.Namespace, target: Target) -> Any:
    """zuko's NSF with the same structure and its training step (reverse KL + Adam)."""
    import zuko

    torch.manual_seed(args.seed)
    flow = zuko.flows.NSF(
        features=args.dim,
        context=0,
        bins=args.bins,
        transforms=args.transforms,
        passes=passes,
        hidden_features=tuple(args.hidden),
    )
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)

    def step() -> float:
        z, log_q = flow().rsample_and_log_prob((args.samples,))
        loss = (log_q - target.log_prob(z)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    step.flow = flow  # type: ignore[attr-defined]
    return step


@dataclass
class SpeedResult:
    """Per-round rates (steps/s) of both libraries for one pair, and their medians."""

    pair: str
    vilab_params: int = 0
    zuko_params: int = 0
    vilab: list[float] = field(default_factory=list)
    zuko: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.vilab) / statistics.median(self.zuko)


def run_pair(pair: str, args: argparse.Namespace, target: Target) -> SpeedResult:
    """Warm up both sides, then alternate timed rounds; prints the pair's table."""
    kind, passes = PAIRS[pair]
    fitter = vilab_stepper(kind, args, target)
    zuko_step = zuko_stepper(passes, args, target)
    result = SpeedResult(
        pair,
        vilab_params=sum(p.numel() for p in fitter.family.parameters()),
        zuko_params=sum(p.numel() for p in zuko_step.flow.parameters()),
    )
    zuko_name = "NSF" if passes is None else f"NSF(passes={passes})"
    print(f"## {pair}: vilab {kind} vs zuko {zuko_name}\n")
    print(
        f"{result.vilab_params} vs {result.zuko_params} parameters; {args.warmup} warm-up "
        f"steps, then {args.rounds} alternating rounds of {args.steps} steps; median over "
        "rounds.\n",
        flush=True,
    )
    steppers = {"vilab": fitter.train_step, "zuko": zuko_step}
    for step in steppers.values():
        common.time_block(step, args.warmup)
    for r in range(args.rounds):
        for name in common.rotated(list(steppers), r):
            getattr(result, name).append(
                args.steps / common.time_block(steppers[name], args.steps)[1]
            )
        print(
            f"  round {r + 1}/{args.rounds}: vilab {result.vilab[-1]:.1f}, "
            f"zuko {result.zuko[-1]:.1f} steps/s",
            file=sys.stderr,
            flush=True,
        )
    print("| library | steps/s (median) | ms/step | min–max steps/s |")
    print("|---|---:|---:|---:|")
    for name, rates in (("vilab", result.vilab), ("zuko", result.zuko)):
        med = statistics.median(rates)
        print(f"| {name} | {med:.1f} | {1e3 / med:.2f} | {min(rates):.1f}–{max(rates):.1f} |")
    print(f"\n**vilab / zuko = {result.ratio:.2f}** (> 1: vilab is faster)\n", flush=True)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = common.base_parser(__doc__, (*PAIRS, "both"), "both", data_dir=False)
    p.add_argument("--dim", type=int, default=2, help="D; U1 when 2, else a Gaussian [2]")
    p.add_argument("--transforms", type=int, default=3, help="spline transforms [3]")
    p.add_argument("--bins", type=int, default=8, help="spline bins K [8]")
    p.add_argument("--hidden", type=common.int_list, default=[64, 64], help="[64,64]")
    p.add_argument("--samples", type=int, default=1000, help="samples per step [1000]")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate [1e-3]")
    p.add_argument("--warmup", type=int, help="warm-up steps per side [30; quick: 3]")
    p.add_argument("--steps", type=int, help="steps per timed round [200; quick: 5]")
    p.add_argument("--rounds", type=int, help="alternating rounds [5; quick: 2]")
    args = p.parse_args(argv)
    common.fill_defaults(args, {"warmup": (3, 30), "steps": (5, 200), "rounds": (2, 5)})
    common.require(p, args, ["threads", "dim", "transforms", "samples", "steps", "rounds"])
    common.require(p, args, ["bins"], 2)
    common.require(p, args, ["warmup"], 0)
    common.require(p, args, ["lr"], 0, strict=True)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out = common.start("vilab spline-flow speed benchmark", args, zuko_version())
    target = resolve_target("U1") if args.dim == 2 else CallableTarget(gaussian, args.dim)
    pairs = list(PAIRS) if args.part == "both" else [args.part]
    results = [run_pair(pair, args, target) for pair in pairs]
    out["speed"] = [asdict(r) | {"ratio": r.ratio} for r in results]
    lines = [
        common.goal_line(
            f"vilab {PAIRS[r.pair][0]} ≥ {GOAL:g}× zuko's steps/s ({r.pair})",
            f"{r.ratio:.2f}×",
            None if args.quick else r.ratio >= GOAL,
            common.QUICK_NOTE if args.quick else "",
        )
        for r in results
    ]
    common.report_goals(out, lines, args.json)


if __name__ == "__main__":
    main()
