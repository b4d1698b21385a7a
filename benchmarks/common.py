"""What the benchmark scripts share: the command line, the header, fits, errors and goals.

Every script (``density2d.py``, ``mnist.py``, ``uivi.py``, ``scaling.py``) prints the
machine first (:func:`start`), parses the same preamble of options (:func:`base_parser`,
:func:`fill_defaults`, :func:`require`), and the ones with goals end with a Goals section
(:func:`goal_line`, :func:`report_goals`). The 2-D scripts fit many families in worker
processes (:class:`FitFigures`, :func:`run_parallel`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import torch

import vilab
from vilab.config import FitConfig
from vilab.train.fit import fit

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


# -- fits of part (a) / (1), in worker processes ----------------------------------------------
@dataclasses.dataclass(kw_only=True)
class FitFigures:
    """The figures of one ``vilab.train.fit.fit`` run: the exact KL ± its standard error,
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
                metrics = fit(config, run_dir, progress=False, tensorboard=False)
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


# -- timing ------------------------------------------------------------------------------------
def time_steps(step: Callable[[], object], n: int) -> float:
    """Steps per second over ``n`` consecutive calls of ``step``."""
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - t0)


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
