"""Benchmark: variational families on the 2-D densities, and planar-flow speed vs normflows.

What it measures, in one process on one machine:

(a) **Exact KL(q‖p)** in nats, mean ± standard error over ≥ 100,000 samples of q, after
    fitting each family with one training recipe (Adam, cosine learning rate, 1000 samples
    per step, β-annealing of the energy term; see ``--help``) to Rezende & Mohamed's U1–U4
    (walled, REFERENCE.md §1) and the UIVI banana. Planar and radial flows are fitted at
    depths K = 2, 8, 32 (the paper's Figure 3 as a table); every other family
    (mean-field, full-rank, IAF, the three Sylvester flows) at the depth / width whose
    parameter count is closest to that of planar K = 32. The KL uses the target's known
    log Z (``vilab.estimators.kl.exact_kl`` via the ``kl`` of ``vilab.commands.fit.run_fit``).

(b) **Training steps per second** of vilab and normflows for the same flow (a trainable
    diagonal Gaussian followed by 32 planar layers) on U1, 1000 samples per step, the
    reverse-KL objective ``mean(log q − log p̃)`` with p̃ evaluated by vilab's U1 code on
    both sides, Adam, float32, the same torch thread count. Each side is warmed up, then
    timed over a block of steps; the two alternate for several rounds and the median rate
    of each is reported with the ratio vilab / normflows. vilab is driven the way a user
    drives it (``Fitter(config).train_step()``); normflows the way its examples do
    (``NormalizingFlow.reverse_kld`` + Adam).

Run (the peers live in their own environment, ``make bench-env``)::

    make bench-density2d
    .venv-bench/bin/python benchmarks/density2d.py [--part a|b|both] [--threads 2]
    .venv-bench/bin/python benchmarks/density2d.py --quick        # smoke run, ~1 minute

Part (a) at the defaults runs 65 fits (13 family settings, vilab's default stack among
them, × 5 targets) of ``--steps`` steps each, two at a time on one core each (``--jobs``),
a fit stopping early (marked ``*``) after ``--max-seconds`` (120: "two minutes of CPU"):
at most about an hour on two cores. Narrow it with ``--families``, ``--targets``,
``--depths``.
Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import common
import torch
from torch import Tensor

from vilab.build import FAMILY_KINDS, build_family
from vilab.config import FamilyConfig, FitConfig, load_fit_config
from vilab.targets import Target, resolve_target
from vilab.train.fit import Fitter

ALL_TARGETS = ("U1", "U2", "U3", "U4", "banana")
DEPTH_KINDS = ("planar", "radial")  # fitted at every depth of --depths
REFERENCE_DEPTH = 32  # other families are matched to the parameter count of planar K = 32
# The families of part (a)'s table, matched in parameters by depth (planar, radial,
# Sylvester) or width (IAF). The coupling, spline and naf flows are compared with their
# peers at equal CPU time in benchmarks/peers2d.py instead.
NEW_KINDS = ("affine_coupling", "spline_coupling", "spline_autoregressive", "naf")
TABLE_KINDS = tuple(k for k in FAMILY_KINDS if k not in NEW_KINDS)
DIM = 2


# -- machine ----------------------------------------------------------------------------------
def normflows_version() -> str:
    """``"normflows <version>"``, or that it is not installed."""
    try:
        import normflows

        nf_version = getattr(normflows, "__version__", "installed")
    except ImportError:
        nf_version = "not installed"
    return f"normflows {nf_version}"


# -- part (a): exact KL per family and target ------------------------------------------------
@dataclass(frozen=True)
class FamilySpec:
    """One row of the KL table: a family kind with its depth (and IAF hidden widths)."""

    kind: str
    layers: int = 1
    hidden: tuple[int, ...] = (64, 64)

    @property
    def label(self) -> str:
        """Short description of the setting, e.g. ``K=32`` or ``K=4, hidden 8×8``."""
        if self.kind == "stack":
            return "default: " + " + ".join(f"{f.kind} K={f.layers}" for f in FamilyConfig().stack)
        if self.kind in ("mean_field", "full_rank"):
            return "–"
        if self.kind == "iaf":
            return f"K={self.layers}, hidden {'×'.join(map(str, self.hidden))}"
        return f"K={self.layers}"

    def parameters(self) -> int:
        """Number of trainable parameters of this family in 2-D (mean-field base)."""
        if self.kind == "stack":
            stack = [f.model_dump() for f in FamilyConfig().stack]
            family = build_family("stack", DIM, stack=stack)
        else:
            family = build_family(self.kind, DIM, layers=self.layers, hidden=list(self.hidden))
        return sum(p.numel() for p in family.parameters())


def comparable_spec(kind: str, reference: int) -> FamilySpec:
    """The setting of ``kind`` whose parameter count is closest (in ratio) to ``reference``.

    Flows search their depth K ∈ 1..128; IAF searches K ∈ {2, 4, 8} (even, so the
    variable order alternates evenly) with two hidden layers of width 2..64. Gaussians
    have a fixed count.
    """
    if kind in ("mean_field", "full_rank", "stack"):
        return FamilySpec(kind)
    if kind == "iaf":
        candidates = [FamilySpec(kind, k, (h, h)) for k in (2, 4, 8) for h in range(2, 65)]
    else:
        candidates = [FamilySpec(kind, k) for k in range(1, 129)]
    return min(candidates, key=lambda s: (abs(math.log(s.parameters() / reference)), s.layers))


def family_rows(families: Sequence[str], depths: Sequence[int]) -> list[FamilySpec]:
    """Planar and radial at every depth; every other family matched to planar K = 32."""
    reference = FamilySpec("planar", REFERENCE_DEPTH).parameters()
    rows: list[FamilySpec] = []
    for kind in sorted(families, key=lambda k: k not in DEPTH_KINDS):  # Figure 3 rows first
        if kind in DEPTH_KINDS:
            rows += [FamilySpec(kind, k) for k in depths]
        else:
            rows.append(comparable_spec(kind, reference))
    return rows


@dataclass
class Recipe:
    """The one training recipe shared by every fit of part (a)."""

    steps: int
    max_seconds: float | None
    lr: float
    samples: int
    beta_start: float
    beta_steps: int
    eval_samples: int
    threads: int
    seed: int

    def describe(self) -> str:
        limit = f", at most {self.max_seconds:g} s per fit" if self.max_seconds else ""
        return (
            f"Adam lr {self.lr:g} with cosine decay, {self.steps} steps{limit}, "
            f"{self.samples} samples/step, β from {self.beta_start:g} to 1 over "
            f"{self.beta_steps} steps, float32, seed {self.seed}, {self.threads} threads; "
            f"KL from {self.eval_samples} samples of q"
        )


def fit_config(spec: FamilySpec, target: str, recipe: Recipe) -> FitConfig:
    """The validated vilab config for one fit of part (a)."""
    base: dict[str, Any] = {
        "target": {"name": target},
        "family": {"kind": spec.kind}
        if spec.kind == "stack"  # vilab's default stack, as `vilab fit` uses it
        else {"kind": spec.kind, "layers": spec.layers, "hidden": list(spec.hidden)},
        "optim": {"lr": recipe.lr, "schedule": "cosine"},
        "steps": recipe.steps,
        "samples": recipe.samples,
        "objective": {"beta_start": recipe.beta_start, "beta_steps": recipe.beta_steps},
        "seed": recipe.seed,
        "eval_samples": recipe.eval_samples,
        "dtype": "float32",
        "threads": recipe.threads,
        "figures": False,
        "max_seconds": recipe.max_seconds,
    }
    return load_fit_config(base=base)


@dataclass
class FitResult(common.FitFigures):
    """Outcome of one fit: the exact KL and its standard error, or why there is none."""

    family: str
    setting: str
    parameters: int
    target: str

    @property
    def where(self) -> str:
        return f"{self.family} {self.setting} on {self.target}"

    def kl_cell(self, requested_steps: int) -> str:
        """The KL cell, marked ``*`` if the clock stopped the fit early."""
        mark = "*" if self.steps < requested_steps else ""
        return self.cell(self.kl, self.kl_stderr, mark)


def run_fit(spec: FamilySpec, target: str, recipe: Recipe) -> FitResult:
    """Fits one family to one target in a temporary run directory; never raises on a
    diverged fit (the error is recorded instead)."""
    result = FitResult(spec.kind, spec.label, spec.parameters(), target)
    result.run(fit_config(spec, target, recipe))
    return result


def kl_table(results: Sequence[FitResult], targets: Sequence[str], steps: int) -> str:
    """A markdown table: one row per family setting, one column per target."""
    by_key: dict[tuple[str, str], dict[str, FitResult]] = {}
    params: dict[tuple[str, str], int] = {}
    for r in results:
        by_key.setdefault((r.family, r.setting), {})[r.target] = r
        params[(r.family, r.setting)] = r.parameters
    head = "| family | setting | params | " + " | ".join(targets) + " |"
    rule = "|---|---|---:|" + "---:|" * len(targets)
    lines = [head, rule]
    for key, cells in by_key.items():
        row = [cells[t].kl_cell(steps) if t in cells else "–" for t in targets]
        lines.append(f"| {key[0]} | {key[1]} | {params[key]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def part_a(
    families: Sequence[str],
    targets: Sequence[str],
    depths: Sequence[int],
    recipe: Recipe,
    jobs: int = 1,
) -> list[FitResult]:
    """Fits every family setting to every target (``jobs`` fits at a time, each with
    ``recipe.threads`` threads) and prints the KL table."""
    rows = family_rows(families, depths)
    print("## (a) Exact KL(q‖p) after fitting, nats (lower is better; 0 = exact)\n")
    print(f"Recipe: {recipe.describe()}.\n", flush=True)
    calls = [(s, t, recipe) for s in rows for t in targets]
    results = common.run_parallel(run_fit, calls, jobs)
    print(kl_table(results, targets, recipe.steps))
    print(
        "\nMean ± standard error of log q − log p̃ + log Z over the samples of q. "
        "params: trainable parameters (flows include their mean-field base); families "
        f"other than planar/radial and vilab's default stack (its best family) are "
        f"matched to planar K={REFERENCE_DEPTH} "
        f"({FamilySpec('planar', REFERENCE_DEPTH).parameters()} parameters)."
    )
    if any(r.kl is not None and r.steps < recipe.steps for r in results):
        print(f"* stopped by --max-seconds before {recipe.steps} steps.")
    print()
    return results


# -- part (b): steps per second, vilab vs normflows ------------------------------------------
def vilab_stepper(target: Target, layers: int, samples: int, lr: float, threads: int) -> Any:
    """A vilab Fitter for the planar flow on ``target``: the user-facing training step."""
    base: dict[str, Any] = {
        "target": {"name": target.name},
        "family": {"kind": "planar", "layers": layers, "base": "mean_field"},
        "optim": {"lr": lr, "schedule": "constant"},
        "samples": samples,
        "objective": {"beta_steps": 0},
        "dtype": "float32",
        "threads": threads,
        "figures": False,
    }
    return Fitter(load_fit_config(base=base), target)


def normflows_model(target: Target, layers: int) -> Any:
    """normflows' NormalizingFlow with the same structure: a trainable diagonal Gaussian
    followed by ``layers`` planar layers, its target calling vilab's log p̃."""
    import normflows as nf

    class VilabTarget(nf.distributions.Target):
        """normflows target wrapping a vilab target's unnormalized log-density."""

        def __init__(self, inner: Target) -> None:
            super().__init__()
            self.inner = inner

        def log_prob(self, z: Tensor) -> Tensor:
            return self.inner.log_prob(z)

    flows = [nf.flows.Planar((DIM,)) for _ in range(layers)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(DIM), flows, VilabTarget(target))


def check_same_flow(fitter: Fitter, model: Any) -> tuple[float, float]:
    """Copies vilab's planar parameters into the normflows layers and pushes the same points
    through both; returns the largest |Δz| and |Δ log det| (both should be ~1e-6)."""
    planar = fitter.family.flows[0]
    values = planar.params()
    with torch.no_grad():
        for k, layer in enumerate(model.flows):
            layer.u.copy_(values["u"][k].reshape(layer.u.shape))
            layer.w.copy_(values["w"][k].reshape(layer.w.shape))
            layer.b.copy_(values["b"][k].reshape(layer.b.shape))
        z0 = torch.randn(1000, DIM)
        z_v, logdet_v = planar(z0)
        z_n, logdet_n = z0, torch.zeros(1000)
        for layer in model.flows:
            z_n, ld = layer(z_n)
            logdet_n = logdet_n + ld
    return float((z_v - z_n).abs().max()), float((logdet_v - logdet_n).abs().max())


@dataclass
class SpeedResult:
    """Per-round rates (steps/s) of both libraries and their medians."""

    vilab: list[float] = field(default_factory=list)
    normflows: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.vilab) / statistics.median(self.normflows)


def part_b(args: argparse.Namespace) -> SpeedResult:
    """Times the planar flow's training step in vilab and normflows, alternating rounds
    (``--speed-*``, ``--samples``, ``--lr``, ``--threads``, ``--seed``)."""
    target_name, layers, samples, lr = args.speed_target, args.speed_layers, args.samples, args.lr
    threads, seed = args.threads, args.seed
    warmup, steps, rounds = args.speed_warmup, args.speed_steps, args.speed_rounds
    torch.set_num_threads(threads)
    target = resolve_target(target_name)
    torch.manual_seed(seed)
    fitter = vilab_stepper(target, layers, samples, lr, threads)
    torch.manual_seed(seed)
    model = normflows_model(target, layers)
    dz, dlogdet = check_same_flow(fitter, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def normflows_step() -> float:
        # As in normflows' examples: reverse KL, skip a non-finite loss, Adam, record.
        optimizer.zero_grad()
        loss = model.reverse_kld(samples)
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        return loss.item()

    n_v = sum(p.numel() for p in fitter.family.parameters())
    n_n = sum(p.numel() for p in model.parameters())
    print(f"## (b) Training speed: planar K={layers} on {target_name}, vilab vs normflows\n")
    print(
        f"{samples} samples/step, reverse KL mean(log q − log p̃), Adam lr {lr:g}, float32, "
        f"{torch.get_num_threads()} threads; {warmup} warm-up steps, then {rounds} "
        f"alternating rounds of {steps} steps; median over rounds."
    )
    print(
        f"Same flow: {n_v} vs {n_n} parameters; with vilab's (u, w, b) copied into normflows, "
        f"max |Δz| = {dz:.1e}, max |Δ log det| = {dlogdet:.1e}.\n",
        flush=True,
    )
    common.time_block(fitter.train_step, warmup)
    common.time_block(normflows_step, warmup)
    result = SpeedResult()
    steppers = {"vilab": fitter.train_step, "normflows": normflows_step}
    for r in range(rounds):
        for name in common.rotated(list(steppers), r):
            getattr(result, name).append(steps / common.time_block(steppers[name], steps)[1])
        print(
            f"  round {r + 1}/{rounds}: vilab {result.vilab[-1]:.1f}, "
            f"normflows {result.normflows[-1]:.1f} steps/s",
            file=sys.stderr,
            flush=True,
        )
    v, n = statistics.median(result.vilab), statistics.median(result.normflows)
    print("| library | steps/s (median) | ms/step | min–max steps/s |")
    print("|---|---:|---:|---:|")
    for name, rates, med in (("vilab", result.vilab, v), ("normflows", result.normflows, n)):
        print(f"| {name} | {med:.1f} | {1e3 / med:.2f} | {min(rates):.1f}–{max(rates):.1f} |")
    print(f"\n**vilab / normflows = {result.ratio:.2f}** (> 1: vilab is faster)\n")
    return result


# -- command line ----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = common.base_parser(__doc__, ("a", "b", "both"), "both", data_dir=False)
    a = p.add_argument_group("part (a): exact KL")
    a.add_argument(
        "--jobs", type=int, default=2, help="fits at once, each max(1, threads // jobs) threads [2]"
    )
    kinds, targets = ",".join(TABLE_KINDS), ",".join(ALL_TARGETS)
    a.add_argument(
        "--families",
        type=common.choice_list("family", TABLE_KINDS),
        default=list(TABLE_KINDS),
        help=f"comma-separated [{kinds}]",
    )
    a.add_argument(
        "--targets",
        type=common.choice_list("target", ALL_TARGETS),
        default=list(ALL_TARGETS),
        help=f"comma-separated [{targets}]",
    )
    a.add_argument("--depths", type=common.int_list, help="planar/radial K [2,8,32; quick: 2,8]")
    a.add_argument("--steps", type=int, help="training steps per fit [8000; quick: 20]")
    a.add_argument("--max-seconds", type=float, help="time limit per fit [120; quick: 30]")
    a.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, cosine [2e-3]")
    a.add_argument("--samples", type=int, default=1000, help="samples of q per step [1000]")
    a.add_argument("--beta-start", type=float, default=0.01, help="initial β [0.01]")
    a.add_argument("--beta-steps", type=int, help="steps for β to reach 1 [40%% of steps]")
    a.add_argument(
        "--eval-samples",
        type=int,
        help=f"samples for the KL [{common.MIN_EVAL_SAMPLES}; quick: 2000]",
    )
    b = p.add_argument_group("part (b): speed")
    b.add_argument("--speed-target", choices=ALL_TARGETS, default="U1", help="[U1]")
    b.add_argument("--speed-layers", type=int, default=32, help="planar depth K [32]")
    b.add_argument("--speed-warmup", type=int, help="warm-up steps per side [50; quick: 5]")
    b.add_argument("--speed-steps", type=int, help="steps per timed round [500; quick: 20]")
    b.add_argument("--speed-rounds", type=int, help="alternating rounds [5; quick: 2]")
    args = p.parse_args(argv)

    common.fill_defaults(
        args,
        {
            "depths": ([2, 8], [2, 8, 32]),
            "steps": (20, 8_000),
            "max_seconds": (30.0, 120.0),
            "eval_samples": (2_000, common.MIN_EVAL_SAMPLES),
            "speed_warmup": (5, 50),
            "speed_steps": (20, 500),
            "speed_rounds": (2, 5),
        },
    )
    if args.beta_steps is None:
        args.beta_steps = max(1, int(0.4 * args.steps))
    common.require_kl_samples(p, args)
    common.require(
        p, args, ["threads", "steps", "samples", "speed_steps", "speed_rounds", "speed_layers"]
    )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out = common.start("vilab density2d benchmark", args, normflows_version())
    if args.part in ("a", "both"):
        recipe = common.from_args(Recipe, args, threads=max(1, args.threads // args.jobs))
        results = part_a(args.families, args.targets, args.depths, recipe, args.jobs)
        out["kl"] = [asdict(r) for r in results]
    if args.part in ("b", "both"):
        speed = part_b(args)
        out["speed"] = asdict(speed) | {"ratio": speed.ratio}
    common.write_json(out, args.json)


if __name__ == "__main__":
    main()
