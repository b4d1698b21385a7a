"""What the benchmark scripts share: the command line, the header, timing, fits, errors and goals.

Every script (``density2d.py``, ``mnist.py``, ``uivi.py``, ``gpu.py``, …) prints the
machine first (:func:`start`), parses the same preamble of options (:func:`base_parser`,
:func:`fill_defaults`, :func:`require`), and the ones with goals end with a Goals section
(:func:`goal_line`, :func:`report_goals`). Every time they report is read by one clock
(:func:`clock`: ``time.perf_counter`` once the device is idle), blocks of calls are timed
by :func:`time_block`, and implementations alternate in rounds (:func:`alternate`; the
median over rounds is reported). The 2-D scripts fit many families in worker processes
(:class:`FitFigures`, :func:`run_parallel`); the MNIST scripts (``mnist.py``, ``gpu.py``)
share seed 004's presets and their comparison tables (:func:`seed004_config`,
:class:`Row`, :class:`Estimate`). The plain implementations they compare vilab against
live in ``baselines.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import torch

import vilab
from vilab.commands.fit import run_fit
from vilab.config import FitConfig, TrainConfig, load_train_config
from vilab.data.vae_data import VAEData, load_vae_data
from vilab.train.vae import VAETrainer
from vilab.vae import vae_objective

REPO = Path(__file__).resolve().parents[1]
QUICK_NOTE = "--quick: not a measurement"
MIN_EVAL_SAMPLES = 100_000  # samples of q behind a reported exact KL
T = TypeVar("T")


# -- the machine ------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_lines(peers: str = "") -> list[str]:
    """A few lines describing the machine and the software under test; ``peers`` names
    the compared libraries with their versions (e.g. ``"normflows 1.7.3"``)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores; load average {load})",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"Python {platform.python_version()}",
        f"- vilab {vilab.__version__}" + (f", {peers}" if peers else ""),
    ]


def start(
    title: str, args: argparse.Namespace, peers: str = "", extra: Sequence[str] = ()
) -> dict[str, Any]:
    """Sets the torch threads to ``--threads``, prints the title and the machine.

    Args:
        title: the heading, e.g. ``"vilab MNIST benchmark"``; ``--quick`` adds a note.
        args: the parsed command line (``threads``, ``quick``).
        peers: the compared libraries with their versions, for :func:`machine_lines`.
        extra: more ``- …`` lines printed under the machine's.

    Returns:
        The raw results so far: ``{"machine": lines, "args": the options}`` (paths as
        strings), to which each part adds its own.
    """
    torch.set_num_threads(args.threads)
    print(f"# {title}" + (" (--quick smoke run)" if args.quick else "") + "\n")
    machine = machine_lines(peers)
    print("\n".join([*machine, *extra]) + "\n", flush=True)
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {"machine": machine, "args": options}


def default_data_dir(arg: str | None) -> str | None:
    """``--data-dir``, else ``$VILAB_DATA_DIR``, else ``../shared/data`` beside the
    repository if it exists, else None (vilab's cache)."""
    if arg:
        return arg
    if os.environ.get("VILAB_DATA_DIR"):
        return os.environ["VILAB_DATA_DIR"]
    beside = REPO.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else None


def data_override(data_dir: str | None) -> list[str]:
    """The ``data.data_dir=…`` override of a train config, none without a directory."""
    return [f"data.data_dir={json.dumps(data_dir)}"] if data_dir else []  # JSON is YAML


def plural(n: int, word: str) -> str:
    """``"1 thread"``, ``"2 threads"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def threads() -> str:
    """The torch thread count, e.g. ``"2 threads"``."""
    return plural(torch.get_num_threads(), "thread")


# -- the device --------------------------------------------------------------------------------
def device_lines(device: torch.device) -> list[str]:
    """The header line of the device a benchmark runs on: the GPU's name, memory, CUDA and
    cuDNN, or why it is the CPU."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return [
            f"- device: {device} = {p.name} (compute capability {p.major}.{p.minor}, "
            f"{p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}"
        ]
    why = (
        "this torch build has no CUDA"
        if torch.version.cuda is None
        else "no CUDA device is visible"
        if not torch.cuda.is_available()
        else "--device cpu"
    )
    return [
        f"- device: **CPU** ({why}): every part runs on the CPU with the sizes given; "
        "the speed goals are GPU goals and are only indicative here"
    ]


def set_tf32(on: bool) -> None:
    """TF32 matmuls and convolutions or full float32, for every row alike (process-wide
    torch settings, which a ``VAETrainer`` also sets from its ``tf32``)."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")


def runtime(
    device: torch.device, precision: str = "float32", tf32: bool = False, compile: bool = False
) -> list[str]:
    """The train-config overrides (DESIGN.md §9) that put a run on ``device`` at
    ``precision``, with ``tf32`` and ``compile``."""
    values = {"device": str(device), "precision": precision, "tf32": tf32, "compile": compile}
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def model_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


# -- the command line -------------------------------------------------------------------------
def from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """The dataclass ``cls`` with each field from the option of the same name, or from
    ``values`` where given there."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: values[n] if n in values else getattr(args, n) for n in names})


def base_parser(
    doc: str | None, parts: Sequence[str], default_part: str, data_dir: bool = True
) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--part``, ``--quick``, ``--threads``, ``--seed``,
    ``--data-dir`` (with ``data_dir``) and ``--json``; its description is the first
    paragraph of ``doc`` (the script's docstring)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0] if doc else None,
        epilog="Defaults in brackets; [quick: …] is the default under --quick.",
    )
    p.add_argument("--part", choices=tuple(parts), default=default_part, help=f"[{default_part}]")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of every code path")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads [2]")
    p.add_argument("--seed", type=int, default=0, help="[0]")
    if data_dir:
        p.add_argument("--data-dir", default=None, help="[$VILAB_DATA_DIR, else ../shared/data]")
    p.add_argument("--json", type=Path, default=None, help="also write raw results to this file")
    return p


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, tuple[Any, Any]]) -> None:
    """Sets every option of ``defaults`` that the command line left at None:
    ``defaults[name] = (value under --quick, value otherwise)``."""
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def require_kl_samples(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A reported KL needs ``--eval-samples`` ≥ :data:`MIN_EVAL_SAMPLES`, except under
    ``--quick``."""
    if args.eval_samples < MIN_EVAL_SAMPLES and not args.quick:
        parser.error(
            f"--eval-samples must be ≥ {MIN_EVAL_SAMPLES} for a reported KL (or use --quick)"
        )


def require(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    names: Sequence[str],
    minimum: float = 1,
    strict: bool = False,
) -> None:
    """Exits through ``parser.error`` unless every option of ``names`` that is set (not
    None) is ≥ ``minimum`` (> with ``strict``; NaN fails both)."""
    for name in names:
        value = getattr(args, name)
        if value is None or (value > minimum if strict else value >= minimum):
            continue
        parser.error(
            f"--{name.replace('_', '-')} must be {'>' if strict else '≥'} {minimum:g}, got {value}"
        )


def int_list(text: str) -> list[int]:
    """``"2,8,32"`` → ``[2, 8, 32]``: an argparse type for positive integers."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def choice_list(kind: str, allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated, non-empty list of ``allowed`` names."""

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(bad) or repr(text)}; choose from {', '.join(allowed)}"
            )
        return items

    return parse


def rotated(names: Sequence[str], r: int) -> list[str]:
    """The order of round ``r`` when implementations alternate: ``names`` rotated by ``r``."""
    shift = r % len(names)
    return [*names[shift:], *names[:shift]]


def eval_options(
    group: argparse._ActionsContainer,
    images: tuple[int, int],
    rounds: tuple[int, int],
    where: str,
    batch: int | None = None,
    chunk: int | None = None,
    vilab: str = "",
) -> dict[str, tuple[Any, Any]]:
    """The options of a log p(x) comparison: ``--eval-samples`` K, ``--eval-images`` per
    round and ``--eval-rounds`` (``images``, ``rounds``: (under ``--quick``, otherwise)),
    and ``evaluate``'s images × samples at once, ``--eval-batch`` and ``--eval-chunk``, for
    the parts ``where`` (defaults ``batch``, ``chunk``; None: vilab's sizing).

    Returns:
        The defaults of the first three for :func:`fill_defaults`.
    """
    defaults = {"eval_samples": (10, 1000), "eval_images": images, "eval_rounds": rounds}
    helps = ("importance samples K", "test images per round", "alternating rounds")
    for (name, (quick, full)), text in zip(defaults.items(), helps):
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, type=int, help=f"{text} [{full}; quick: {quick}]")
    for flag, what, default in (
        ("--eval-batch", "images", batch),
        ("--eval-chunk", "samples", chunk),
    ):
        shown = "vilab's" if default is None else default
        help = f"{vilab}`evaluate`: {what} at once, {where} [{shown}]"
        group.add_argument(flag, type=int, default=default, help=help)
    return defaults


# -- fits of part (a) / (1), in worker processes ----------------------------------------------
@dataclasses.dataclass(kw_only=True)
class FitFigures:
    """The figures of one ``vilab.commands.fit.run_fit`` run: the exact KL ± its standard error,
    the steps done in the seconds taken, or the error that stopped it."""

    kl: float | None = None
    kl_stderr: float | None = None
    steps: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def where(self) -> str:
        """What was fitted to what, e.g. ``"planar K=8 on U1"``."""
        raise NotImplementedError

    def run(
        self,
        config: FitConfig,
        then: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Fits ``config`` in a temporary run directory and records its figures.

        A diverged fit is recorded (``error`` = the exception's type), not raised. ``then``
        may read the run directory before it is removed; what it returns updates the
        metrics. Returns the metrics, empty if the fit failed.
        """
        with tempfile.TemporaryDirectory(prefix="vilab-bench-") as run_dir:
            try:
                metrics = run_fit(config, run_dir, progress=False, tensorboard=False).metrics
                if then is not None:
                    metrics |= then(Path(run_dir), metrics)
            except (FloatingPointError, RuntimeError, ValueError) as err:
                self.error = type(err).__name__
                print(f"  {self.where}: {err}", file=sys.stderr)
                return {}
        self.kl, self.kl_stderr = metrics["kl"], metrics["kl_stderr"]
        self.steps, self.seconds = int(metrics["steps"]), float(metrics["seconds"])
        if metrics.get("interrupted"):
            self.error = "interrupted"
        return metrics

    def status(self) -> str:
        """The KL to 4 decimals, or the error, for the progress lines."""
        return (
            f"KL {self.kl:.4f} ± {self.kl_stderr:.4f}" if self.kl is not None else str(self.error)
        )

    def cell(self, value: float | None, stderr: float | None, mark: str = "") -> str:
        """A table cell: ``value ± stderr`` to 3 decimals, else ``failed (error)`` or –."""
        if value is None or stderr is None:
            return f"failed ({self.error})" if self.error else "–"
        return f"{value:.3f} ± {stderr:.3f}{mark}"


@dataclasses.dataclass(kw_only=True)
class CardFit(FitFigures):
    """One method fitted to one target for a time budget, scored by its report card
    (``card``), with the wall-clock seconds of fit and card (``wall``)."""

    target: str
    method: str
    card: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall: float = 0.0

    @property
    def where(self) -> str:
        return f"{self.method} on {self.target}"

    def summary(self) -> str:
        """The card's figures for the progress lines."""
        return f"k̂ {self.card['khat']:.2f}"

    def status(self) -> str:
        return self.summary() if self.card else str(self.error)


def budget_overrides(target: str, seconds: float, samples: int, seed: int) -> list[str]:
    """Config keys of a vilab fit of ``target`` run for ``seconds`` of training (one
    thread, no figures, checkpoints or per-step logs to speak of), carded from ``samples``
    draws of q."""
    return [
        f"target.name={target}",
        "steps=1000000",
        f"max_seconds={seconds}",
        f"report_samples={samples}",
        f"eval_samples={samples}",
        f"seed={seed}",
        "threads=1",
        "figures=false",
        "checkpoint_every=1000000",
        "log_every=100",
    ]


F = TypeVar("F", bound=FitFigures)


def run_parallel(fn: Callable[..., F], calls: Sequence[tuple[Any, ...]], jobs: int) -> list[F]:
    """``fn(*call)`` for every call, ``jobs`` worker processes at a time, a progress line
    on stderr as each ends. Returns the results in the order of ``calls``."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fn, *call) for call in calls]
        for i, future in enumerate(as_completed(futures), start=1):
            r = future.result()
            print(
                f"  [{i}/{len(calls)}] {r.where}: {r.status()} "
                f"({r.steps} steps, {r.seconds:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        return [f.result() for f in futures]


# -- timing: one clock, blocks of calls, alternating rounds ------------------------------------
def clock(device: torch.device | None = None) -> float:
    """``time.perf_counter()`` once ``device`` has finished what was queued on it (a CUDA
    device is synchronized first; the CPU and None need nothing): every benchmark's clock."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_block(
    step: Callable[[], T], n: int = 1, device: torch.device | None = None
) -> tuple[list[T], float]:
    """Calls ``step`` ``n`` times in a row (a warm-up is such a block, its time unused).

    Returns:
        What each call returned, and the seconds the ``n`` calls took by :func:`clock`,
        read on an idle ``device`` before the first call and after the last.
    """
    t0 = clock(device)
    out = [step() for _ in range(n)]
    return out, clock(device) - t0


def alternate(
    names: Sequence[str],
    rounds: int,
    run: Callable[[str, int], object],
    progress: Callable[[int], str] | None = None,
) -> None:
    """``run(name, r)`` for every name in rounds r = 0, 1, …, the order rotated every round
    (:func:`rotated`) so that no implementation always runs first; after each round the
    line ``progress(r)`` on stderr. The caller reports the median over rounds."""
    for r in range(rounds):
        for name in rotated(names, r):
            run(name, r)
        if progress is not None:
            print(progress(r), file=sys.stderr, flush=True)


@dataclasses.dataclass
class Row:
    """One implementation in a throughput table: images/s and mean loss per round."""

    label: str
    rates: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


Step = Callable[[], tuple[int, float | None]]  # one optimizer step -> (images, loss or None)


def race(
    rows: Mapping[str, Row],
    steps: Mapping[str, Step],
    rounds: int,
    n: int,
    device: torch.device | None = None,
    progress: Callable[[int], str] | None = None,
) -> None:
    """The timed rounds of a throughput table (after the caller's warm-up): each round, a
    block of ``n`` steps of every row (:func:`time_block`, rows alternating); its images/s
    and, where the steps return their loss, the mean loss go into ``rows``."""

    def run(name: str, r: int) -> None:
        out, seconds = time_block(steps[name], n, device)
        rows[name].rates.append(sum(b for b, _ in out) / seconds)
        losses = [loss for _, loss in out if loss is not None]
        if losses:
            rows[name].losses.append(sum(losses) / n)

    alternate(list(steps), rounds, run, progress)


@dataclasses.dataclass
class Estimate:
    """Per-round mean log p̂(x) over the round's images and its MC standard error."""

    label: str
    means: list[float] = dataclasses.field(default_factory=list)
    stderrs: list[float | None] = dataclasses.field(default_factory=list)
    seconds_per_1000: list[float] = dataclasses.field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.means)

    @property
    def stderr(self) -> float | None:
        if any(s is None for s in self.stderrs):
            return None
        return combined_stderr([s for s in self.stderrs if s is not None])

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds_per_1000)


Estimator = Callable[[torch.Tensor, int], tuple[float, float | None]]  # (x, seed) -> (mean, se)


def race_estimates(
    estimates: Mapping[str, Estimate],
    runners: Mapping[str, Estimator],
    rounds: int,
    images: Callable[[int], torch.Tensor],
    seed: int,
    device: torch.device | None = None,
    progress: Callable[[int], str] | None = None,
) -> None:
    """The timed rounds of a log p(x) table: round r gives every estimator of
    ``estimates`` the images ``images(r)`` and the seed ``seed + 1000 r`` (also set by
    ``torch.manual_seed`` before it runs), estimators alternating; each call is timed by
    :func:`time_block` and recorded in seconds per 1000 images."""
    batch: dict[int, torch.Tensor] = {}

    def run(name: str, r: int) -> None:
        if r not in batch:
            batch.clear()
            batch[r] = images(r)
        x = batch[r]
        torch.manual_seed(seed + 1000 * r)
        ((mean, se),), seconds = time_block(lambda: runners[name](x, seed + 1000 * r), 1, device)
        e = estimates[name]
        e.means.append(mean)
        e.stderrs.append(se)
        e.seconds_per_1000.append(1e3 * seconds / len(x))

    alternate(list(estimates), rounds, run, progress)


# -- seed 004's VAEs: what mnist.py and gpu.py share -----------------------------------------
SEED004 = {
    "mean_field": REPO / "configs" / "vae_seed004_mean_field.yaml",
    "iaf": REPO / "configs" / "vae_seed004_iaf.yaml",
}


def seed004_config(
    name: str, threads: int, seed: int, data_dir: str | None, extra: Sequence[str] = ()
) -> TrainConfig:
    """Seed 004's preset (``configs/vae_seed004_<name>.yaml``) with the run's threads, seed
    and data directory, and ``extra`` overrides (``key.sub=value``)."""
    overrides = [f"threads={threads}", f"seed={seed}", *data_override(data_dir)]
    return load_train_config(SEED004[name], [*overrides, *extra])


class Seed004:
    """Seed 004's presets with a run's ``--threads``, ``--seed`` and ``--data-dir``, their
    data loaded once (the presets share it), and trainers on it: with a ``device``, on
    that device (``--tf32`` with it), else where the preset puts them."""

    def __init__(self, args: argparse.Namespace, device: torch.device | None = None) -> None:
        self.args, self.device = args, device
        self.data_dir = default_data_dir(args.data_dir)
        self._data: VAEData | None = None

    def config(self, name: str, extra: Sequence[str] = ()) -> TrainConfig:
        a = self.args
        return seed004_config(name, a.threads, a.seed, self.data_dir, extra)

    @property
    def data(self) -> VAEData:
        if self._data is None:
            self._data = load_vae_data(self.config("mean_field").data, self.args.seed)
        return self._data

    def trainer(self, name: str, precision: str = "float32", compile: bool = False) -> VAETrainer:
        on = self.device
        extra = [] if on is None else runtime(on, precision, self.args.tf32, compile)
        return VAETrainer(self.config(name, extra), self.data)

    def test(self, start: int, n: int) -> torch.Tensor:
        """Test images ``start`` to ``start + n`` (on the device, if any)."""
        x = self.data.test[start : start + n]
        return x if self.device is None else x.to(self.device)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def vilab_step(trainer: VAETrainer, log_value: bool = True) -> Step:
    """vilab's training step as its users drive it, ``trainer.train_step(log_value)``:
    (images, −bound) — with ``log_value=False`` (no host read), (images, None)."""

    def step() -> tuple[int, float | None]:
        images = trainer.data.train.global_size(trainer.step)
        bound = trainer.train_step(log_value=log_value).values["bound"]
        return images, -bound if log_value else None

    return step


@torch.no_grad()
def neg_elbo(model: VAETrainer | torch.nn.Module, x: torch.Tensor, seed: int) -> float:
    """−ELBO of ``x`` by vilab's trainer or a plain model (its ``loss``), the noise drawn
    right after ``torch.manual_seed(seed)``: the same for two models (to float32
    rounding) iff they compute the same thing."""
    torch.manual_seed(seed)
    if isinstance(model, VAETrainer):
        obj = vae_objective(model.vae, x, model.config.objective)
        return -float(obj.value.mean())
    return float(model.loss(x))  # type: ignore[operator]


# -- Monte Carlo errors -----------------------------------------------------------------------
def combined_stderr(stderrs: Sequence[float], sizes: Sequence[int] | None = None) -> float:
    """Standard error of the mean over all items from per-batch standard errors.

    With batch b of n_b items whose mean has standard error se_b (independent batches),
    the mean over all N = Σ n_b items has ``sqrt(Σ_b (n_b se_b)²) / N``; ``sizes=None``
    means equal batches: ``sqrt(Σ_b se_b²) / B``.
    """
    if sizes is None:
        sizes = [1] * len(stderrs)
    if len(sizes) != len(stderrs):
        raise ValueError(f"{len(stderrs)} standard errors but {len(sizes)} batch sizes")
    return math.sqrt(sum((e * n) ** 2 for e, n in zip(stderrs, sizes))) / sum(sizes)


# -- goals ------------------------------------------------------------------------------------
def join_notes(*notes: str) -> str:
    """The non-empty notes, joined by ``"; "``."""
    return "; ".join(n for n in notes if n)


def goal_line(text: str, figure: str, ok: bool | None, note: str = "") -> str:
    """One line of the Goals section: the goal, the measured figure and PASS, MISS or n/a."""
    verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
    return f"- {text}: {figure} — **{verdict}**" + (f" ({note})" if note else "")


def write_json(out: dict[str, Any], json_path: Path | None) -> None:
    """With ``--json``, writes the raw results there."""
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=2, default=str) + "\n")


def report_goals(out: dict[str, Any], lines: list[str], json_path: Path | None) -> None:
    """Print the Goals section and, with ``--json``, write the raw results with it."""
    print("## Goals\n")
    print("\n".join(lines) + "\n")
    out["goals"] = lines
    write_json(out, json_path)


#: What a training budget counts: ``cpu`` the process's CPU time (one thread's work on a
#: machine that others share), ``wall`` the wall clock.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


@contextlib.contextmanager
def training_clock(clock: str) -> Iterator[None]:
    """vilab's training clock (:class:`vilab.train.state.TrainerState`, which ``max_seconds``
    and the schedules read, for fits and VAEs alike) reads :data:`CLOCKS` [``clock``] while
    inside."""
    from vilab.train import state

    with mock.patch.object(state, "time", types.SimpleNamespace(perf_counter=CLOCKS[clock])):
        yield
