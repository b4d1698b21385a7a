"""Benchmark: vilab's families against zuko's and normflows' flows on 2-D targets at equal CPU time.

Every method trains q by the reverse KL, mean(log q(z) − log p̃(z)) over 1000 draws of q a
step, for ``--seconds`` of wall-clock time on one thread (two fits at a time on two
cores), each with its library's recommended setup:

- **vilab default**: ``vilab fit``'s default family and recipe (16 orthogonal Sylvester
  layers, 3 autoregressive spline layers and 2 IAF steps, Adam 2e-3 with cosine decay,
  β-annealing over 40 % of the run);
- **vilab spline**: the same recipe with ``--spline`` (a rational-quadratic spline flow);
- **zuko NSF**: ``zuko.flows.NSF(2)`` at zuko's defaults (3 transforms, 8 bins, hidden
  (64, 64)), Adam 1e-3;
- **normflows RealNVP**: normflows' README model (32 affine coupling blocks with
  MLP([1, 64, 64, 2], init_zeros) and swaps, a trainable diagonal Gaussian), Adam 5e-4
  with weight decay 1e-5, trained with ``reverse_kld``;
- **normflows NSF**: 16 autoregressive rational-quadratic splines (2 blocks of 128) with
  LU-linear permutations, as in normflows' spline examples, Adam 5e-4.

Then **one estimator for all**: 100,000 draws of each trained q with their log q, and
KL(q‖p) = mean(log q − log p̃) + log Z with its standard error, log Z by quadrature on the
target's box (vilab.targets.grid.grid_log_z). Targets: U1–U4 (walled) and the banana
(REFERENCE.md), and normflows' TwoMoons, RingMixture and CircularGaussianMixture.

Goal (issue 11): on every target vilab's default family is the best, or within 2
standard errors of the best peer.

    .venv-bench/bin/python benchmarks/peers2d.py              # ≈ 25 min on two cores
    .venv-bench/bin/python benchmarks/peers2d.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import torch
from torch import Tensor

import vilab
from vilab.targets import Target, resolve_target
from vilab.targets.grid import grid_log_z
from vilab.targets.user import CallableTarget

VILAB_TARGETS = ("U1", "U2", "U3", "U4", "banana")
NORMFLOWS_TARGETS = {
    "two_moons": "TwoMoons",
    "ring_mixture": "RingMixture",
    "circular_mixture": "CircularGaussianMixture",
}
ALL_TARGETS = (*VILAB_TARGETS, *NORMFLOWS_TARGETS)
METHODS = ("vilab default", "vilab spline", "zuko NSF", "normflows RealNVP", "normflows NSF")
PEER_BOX = (-4.0, 4.0, -4.0, 4.0)  # holds all but < 1e-12 of each normflows target's mass
SampleFn = Callable[[int], tuple[Tensor, Tensor]]


def peer_versions() -> str:
    out = []
    for name in ("zuko", "normflows"):
        try:
            module = __import__(name)
            out.append(f"{name} {getattr(module, '__version__', 'installed')}")
        except ImportError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def make_target(name: str) -> Target:
    """A vilab built-in, or a normflows target wrapped as a vilab target on its box."""
    if name in VILAB_TARGETS:
        return resolve_target(name)
    import normflows as nf

    peer = getattr(nf.distributions, NORMFLOWS_TARGETS[name])()

    def log_prob(z: Tensor) -> Tensor:
        return peer.log_prob(z.reshape(-1, 2)).reshape(z.shape[:-1])

    return CallableTarget(log_prob, 2, name, box=PEER_BOX)


# -- the peers' models, built as each library's documentation builds them --------------------
@dataclasses.dataclass
class Peer:
    """A peer's model, how it draws (z, log q), and its optimizer settings."""

    model: torch.nn.Module
    sample: SampleFn
    lr: float
    weight_decay: float = 0.0


def zuko_nsf() -> Peer:
    import zuko

    flow = zuko.flows.NSF(2)
    return Peer(flow, lambda n: flow().rsample_and_log_prob((n,)), 1e-3)


def normflows_realnvp() -> Peer:
    import normflows as nf

    flows: list[Any] = []
    for _ in range(32):
        flows.append(nf.flows.AffineCouplingBlock(nf.nets.MLP([1, 64, 64, 2], init_zeros=True)))
        flows.append(nf.flows.Permute(2, mode="swap"))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2), flows)
    return Peer(model, model.sample, 5e-4, 1e-5)


def normflows_nsf() -> Peer:
    import normflows as nf

    flows: list[Any] = []
    for _ in range(16):
        flows.append(nf.flows.AutoregressiveRationalQuadraticSpline(2, 2, 128))
        flows.append(nf.flows.LULinearPermute(2))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)
    return Peer(model, model.sample, 5e-4, 1e-5)


PEERS = {
    "zuko NSF": zuko_nsf,
    "normflows RealNVP": normflows_realnvp,
    "normflows NSF": normflows_nsf,
}


def train_peer(peer: Peer, target: Target, args: Any) -> int:
    """Reverse-KL training for ``args.seconds``; a non-finite loss skips the step (as the
    peers' examples do). Returns the steps taken."""
    opt = torch.optim.Adam(peer.model.parameters(), lr=peer.lr, weight_decay=peer.weight_decay)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        z, log_q = peer.sample(args.samples)
        loss = (log_q - target.log_prob(z)).mean()
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
        steps += 1
    return steps


@torch.no_grad()
def kl_of(sample: SampleFn, target: Target, log_z: float, n: int) -> tuple[float, float]:
    """The one estimator: KL = mean(log q − log p̃) + log Z over n draws, and its s.e."""
    gaps = []
    for start in range(0, n, 20_000):
        z, log_q = sample(min(20_000, n - start))
        gaps.append((log_q.double() - target.log_prob(z).double()).reshape(-1))
    gap = torch.cat(gaps)
    finite = torch.isfinite(gap)
    if not finite.all():
        return math.inf, math.nan
    return float(gap.mean()) + log_z, float(gap.std() / math.sqrt(gap.numel()))


@dataclasses.dataclass(kw_only=True)
class PeerFit(common.FitFigures):
    method: str
    target: str

    @property
    def where(self) -> str:
        return f"{self.method} on {self.target}"


def fit_one(method: str, target_name: str, args: Any) -> PeerFit:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    r = PeerFit(method=method, target=target_name)
    target = make_target(target_name)
    log_z = target.log_z if target.log_z is not None else grid_log_z(target)
    t0 = time.perf_counter()
    try:
        if method.startswith("vilab"):
            settings: dict[str, Any] = {"steps": 10**7, "max_seconds": args.seconds}
            if method == "vilab spline":
                settings["family"] = {"kind": args.spline, "layers": args.spline_layers}
            with tempfile.TemporaryDirectory() as run_dir:
                res = vilab.fit(
                    target, run_dir=run_dir, progress=False, threads=1, figures=False,
                    eval_samples=2, report_samples=100, seed=args.seed, **settings,
                )  # fmt: skip
            family = res.family
            r.steps = int(res.metrics["steps"])
            sample: SampleFn = family.rsample_and_log_prob
        else:
            peer = PEERS[method]()
            sample = peer.sample
            r.steps = train_peer(peer, target, args)
        r.seconds = time.perf_counter() - t0
        r.kl, r.kl_stderr = kl_of(sample, target, log_z, args.eval_samples)
        if not math.isfinite(r.kl):
            r.error, r.kl, r.kl_stderr = "non-finite log q − log p̃", None, None
    except (RuntimeError, ValueError, FloatingPointError) as err:
        r.error = type(err).__name__
        print(f"  {r.where}: {err}", file=sys.stderr)
    return r


def table(fits: list[PeerFit], targets: Sequence[str], methods: Sequence[str]) -> str:
    head = "| method | " + " | ".join(targets) + " |"
    lines = [head, "|---|" + "---:|" * len(targets)]
    by = {(f.method, f.target): f for f in fits}
    for m in methods:
        cells = []
        for t in targets:
            f = by.get((m, t))
            cells.append("–" if f is None else f.cell(f.kl, f.kl_stderr) + f" ({f.steps})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(fits: list[PeerFit], targets: Sequence[str], quick: bool) -> list[str]:
    lines = []
    for t in targets:
        mine = {f.method: f for f in fits if f.target == t}
        default = mine.get("vilab default")
        peers = [f for m, f in mine.items() if not m.startswith("vilab") and f.kl is not None]
        if default is None or default.kl is None or not peers:
            lines.append(common.goal_line(f"{t}: vilab default best or within 2 s.e.", "n/a", None))
            continue
        best = min(peers, key=lambda f: f.kl)  # type: ignore[arg-type,return-value]
        gap = default.kl - best.kl  # type: ignore[operator]
        se = math.hypot(default.kl_stderr or 0.0, best.kl_stderr or 0.0)
        ok = gap <= 2 * se
        figure = (
            f"{default.kl:.4f} vs {best.method} {best.kl:.4f} (gap {gap:+.4f}, 2 s.e. {2 * se:.4f})"
        )
        lines.append(
            common.goal_line(
                f"{t}: vilab default best or within 2 s.e. of the best peer",
                figure,
                None if quick else ok,
                "--quick" if quick else "",
            )
        )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = common.base_parser(__doc__, ["all"], "all", data_dir=False)
    p.add_argument("--seconds", type=float, default=None, help="training seconds per fit [60]")
    p.add_argument("--samples", type=int, default=1000, help="draws of q per step [1000]")
    p.add_argument("--eval-samples", type=int, default=None, help="draws for the KL [100000]")
    p.add_argument("--jobs", type=int, default=2, help="fits at a time [2]")
    p.add_argument("--targets", nargs="+", choices=ALL_TARGETS, default=list(ALL_TARGETS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--spline", default="spline_coupling", help="vilab's spline flow kind")
    p.add_argument("--spline-layers", type=int, default=6, help="its layers [6]")
    args = p.parse_args(argv)
    common.fill_defaults(args, {"seconds": (2.0, 60.0), "eval_samples": (2000, 100_000)})
    common.require(p, args, ["jobs", "samples", "spline_layers"])
    common.require(p, args, ["seconds"], 0, strict=True)
    common.require(p, args, ["eval_samples"], 2)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out = common.start(
        "vilab 2-D peers benchmark",
        args,
        peer_versions(),
        [
            f"- {args.seconds:g} s of training per fit, one thread, {args.jobs} at a time; "
            f"KL from {args.eval_samples:,} draws of each q"
        ],  # fmt: skip
    )
    calls = [(m, t, args) for t in args.targets for m in args.methods]
    fits = common.run_parallel(fit_one, calls, args.jobs)
    print("## Exact KL(q‖p), nats, at equal CPU time (steps in brackets)\n")
    print(table(fits, args.targets, args.methods) + "\n")
    out["fits"] = [dataclasses.asdict(f) for f in fits]
    common.report_goals(out, goals(fits, args.targets, args.quick), args.json)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
