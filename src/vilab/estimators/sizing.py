"""How many draws a Monte Carlo figure is worth: drawn in rounds until its standard error
is below a target, or a fixed count.

A mean of n independent draws has standard error se_n = σ/√n, so from a pilot of n₀ draws
with standard error se₀ the count that reaches a target τ is

    n(τ) = n₀ (se₀ / τ)²

(the same rule for a delta-method standard error, which also falls as 1/√n). The pilot
(``min_samples`` draws, the floor) predicts n(τ); the draws are made up to a little more
than that; the standard error of all draws so far is measured again and, while it is still
above τ, a further round is predicted from it — never past ``max_samples``, the cap, which
the result then says it hit. A round after the pilot adds at least a quarter of the draws
so far, so the rounds are few (the count grows geometrically).

Stopping on a measured standard error makes the count depend on the draws; the bias this
puts on the mean or on its standard error is of order 1/n and far below τ at these counts
(the tests check the reported standard error against the spread over seeds).

The work is shown (:mod:`vilab.core.progress`) when it is long: after the pilot, a phase
predicted to take more than :data:`~vilab.core.progress.FEW_SECONDS` gets a cost line
(``report card: ~48,000 draws, ~6 s (s.e. target 0.001; pilot of 5,000: 0.0031)``) and a
progress bar.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from vilab.core.progress import FEW_SECONDS, Progress, duration, say

#: A round after the pilot aims this much past the predicted count (the prediction's
#: standard error is itself estimated), adds at least ``GROWTH`` × the draws so far and
#: at most multiplies them by ``LEAP`` (so that ``settle`` is asked again on the way).
MARGIN, GROWTH, LEAP = 1.1, 0.25, 8


@dataclass(frozen=True)
class Sizing:
    """How many draws: ``fixed`` (exactly that many), or rounds until the standard error
    is ≤ max(``stderr``, ``rel_stderr`` × the estimate's scale) with
    ``min_samples`` ≤ n ≤ ``max_samples`` (the scale, e.g. |KL̂|, is the caller's: a KL of
    20 nats is worth knowing to 0.2, not to 0.001)."""

    stderr: float = 1e-3
    min_samples: int = 10_000
    max_samples: int = 1_000_000
    fixed: int | None = None
    rel_stderr: float = 0.0

    def __post_init__(self) -> None:
        if self.fixed is not None:
            if self.fixed < 1:
                raise ValueError(f"a fixed count of draws must be ≥ 1, got {self.fixed}")
            return
        if not self.stderr > 0:
            raise ValueError(f"the target standard error must be > 0, got {self.stderr}")
        if not self.rel_stderr >= 0:
            raise ValueError(f"the relative target must be ≥ 0, got {self.rel_stderr}")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError(
                f"need 1 ≤ min_samples ≤ max_samples, got {self.min_samples} and {self.max_samples}"
            )

    @classmethod
    def of(
        cls,
        fixed: int | None,
        stderr: float,
        min_samples: int,
        max_samples: int,
        rel_stderr: float = 0.0,
    ) -> Sizing:
        """A config's sizing: ``fixed`` when the user gave a count, else the target."""
        if fixed is not None:
            return cls(fixed=fixed)
        return cls(stderr, min_samples, max_samples, rel_stderr=rel_stderr)

    def capped_at(self, cap: int, pilot: int | None = None) -> Sizing:
        """The same sizing with no more than ``cap`` draws (a fixed count too) and a pilot
        of at most ``pilot``."""
        if self.fixed is not None:
            return replace(self, fixed=min(self.fixed, cap))
        floor = min(self.min_samples, cap, pilot or cap)
        return replace(self, min_samples=floor, max_samples=min(self.max_samples, cap))

    def target(self, scale: float) -> float:
        """The standard error asked for, of an estimate of magnitude ``scale``."""
        rel = self.rel_stderr * abs(scale) if math.isfinite(scale) else 0.0
        return max(self.stderr, rel)


@dataclass(frozen=True)
class Sized:
    """Where the draws stopped: ``samples`` in ``rounds`` rounds (the pilot the first)
    and ``seconds``, at standard error ``stderr``; ``target`` is the one asked for (None
    for a fixed count); ``capped``: the cap was reached above the target; ``note``: why it
    stopped where it did, when not at the target (the cap, or a ``settle`` reason)."""

    samples: int
    stderr: float
    target: float | None
    capped: bool
    rounds: int
    seconds: float
    note: str | None = None

    def metrics(self, prefix: str) -> dict[str, object]:
        """The sizing's entries of ``metrics.json``: ``<prefix>stderr_target``,
        ``<prefix>capped`` and (where there is one) ``<prefix>sizing_note``."""
        out: dict[str, object] = {
            f"{prefix}stderr_target": self.target,
            f"{prefix}capped": self.capped,
        }
        if self.note:
            out[f"{prefix}sizing_note"] = self.note
        return out


def draws_needed(stderr: float, samples: int, target: float) -> int:
    """n(τ) = n (se / τ)²: the draws at which a standard error ``stderr`` of ``samples``
    draws falls to ``target`` (at least 1; :data:`sys.maxsize` for an infinite one)."""
    ratio = (stderr / target) ** 2
    if not ratio < sys.maxsize / max(samples, 1):
        return sys.maxsize
    return max(1, math.ceil(samples * ratio))


def run_sized(
    draw: Callable[[int], None],
    stderr: Callable[[], float],
    sizing: Sizing,
    chunk: int,
    what: str | None = None,
    settle: Callable[[], str | None] | None = None,
    cap_key: str = "max_samples",
    scale: Callable[[], float] | None = None,
) -> Sized:
    """Draw as ``sizing`` says, ``chunk`` at a time.

    Args:
        draw: draws ``m`` more (the caller keeps them).
        stderr: the standard error of the estimate from every draw so far.
        sizing: a fixed count, or target, floor and cap.
        chunk: draws per call of ``draw`` at most.
        what: the phase's name for the cost line and the bar (``"exact KL"``); None shows
            nothing.
        settle: asked after each round short of the target: a reason to draw no more
            (None: go on), e.g. a Pareto k̂ ≥ 0.7 that no count makes trustworthy.
        cap_key: the config key of the cap, for the note when it is reached.
        scale: the estimate's magnitude from every draw so far, for ``rel_stderr``.
    """
    t0 = time.perf_counter()
    if sizing.fixed is not None:
        n = sizing.fixed
        _draw_shown(draw, n, chunk, what, detail=f"{n:,} draws (a fixed count)")
        return Sized(n, stderr(), None, False, 1, time.perf_counter() - t0)
    cap, pilot = sizing.max_samples, sizing.min_samples

    def target_now() -> float:
        return sizing.target(scale() if scale is not None else 0.0)

    # the pilot in at least 4 parts: its first part says what the pilot costs
    _draw_shown(draw, pilot, min(chunk, max(1, math.ceil(pilot / 4))), what, detail="pilot")
    n, rounds, se, target = pilot, 1, stderr(), target_now()
    per_draw = (time.perf_counter() - t0) / pilot
    announced, note = False, None
    while se > target and n < cap:
        note = settle() if settle is not None else None
        if note is not None:
            break
        need = draws_needed(se, n, target)
        goal = min(cap, max(math.ceil(MARGIN * need), n + math.ceil(GROWTH * n)), LEAP * n)
        more = goal - n
        if what is not None and not announced:
            predicted = min(cap, need)
            seconds = per_draw * (predicted - n)
            if seconds > FEW_SECONDS:
                capped = " (the cap)" if need >= cap else ""
                say(
                    f"{what}: ~{predicted:,} draws{capped}, ~{duration(seconds)} "
                    f"(s.e. target {target:.2g}; the pilot of {n:,} gave {se:.2g})"
                )
                announced = True
        _draw_shown(draw, more, chunk, what if announced else None, bar_only=True)
        n, rounds, se, target = goal, rounds + 1, stderr(), target_now()
    capped = se > target and note is None
    if capped:
        why = settle() if settle is not None else None
        note = (
            f"the cap of {cap:,} draws ({cap_key}) was reached at s.e. {se:.2g}, above the "
            f"target {target:.2g}" + (f"; {why}" if why else "")
        )
    return Sized(n, se, target, capped, rounds, time.perf_counter() - t0, note)


def _draw_shown(
    draw: Callable[[int], None],
    n: int,
    chunk: int,
    what: str | None,
    detail: str = "",
    bar_only: bool = False,
) -> None:
    """``n`` draws in parts of ``chunk``; with ``what``, the bar and cost line of
    :class:`~vilab.core.progress.Progress` (shown only past
    :data:`~vilab.core.progress.FEW_SECONDS`, unless ``bar_only``: a round announced
    already shows its bar at once)."""
    parts = max(1, math.ceil(n / chunk))
    label = what if what is None or not detail else f"{what} ({detail})"
    # an announced round shows its bar at once, and no second cost line (one part)
    quiet, parts = (0.0, 1) if bar_only else (FEW_SECONDS, parts)
    with Progress(label, n, "draw", parts, f"{n:,} draws", min_seconds=quiet) as bar:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            draw(m)
            bar.advance(m)
