"""Long work is never silent: a progress bar on stderr and, after the first of several
parts, one line with what the whole will cost and how to make it cheaper; work predicted
to take under :data:`FEW_SECONDS` may stay quiet (``min_seconds``)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from tqdm import tqdm

#: A phase predicted to take longer than this gets a cost line and a progress bar.
FEW_SECONDS = 3.0


class Progress:
    """A tqdm bar on stderr over ``total`` units done in ``parts`` parts (e.g. batches).

    After the first part (when there are more), one line is written above the bar::

        <what>: <detail>: about 25 min in all (the first of 100 took 15.2 s); <hint>

    the estimate being the first part's time × ``parts``. With ``what=None`` nothing is
    shown (other ranks, or progress off). With ``min_seconds``, the line is written only
    when that estimate exceeds it, and the bar appears only after that long. Draws no
    random numbers.

    Args:
        what: what is computed (the bar's label), or None for silence.
        total: units in all (the bar's total).
        unit: the bar's unit, e.g. ``"img"``.
        parts: how many parts the work is done in.
        detail: what the cost line adds after ``what``, e.g. ``"10000 images in batches of
            100"``.
        hint: how to make it cheaper, appended to the cost line.
        min_seconds: quiet below this (the bar's delay; the cost line's threshold).
    """

    def __init__(
        self,
        what: str | None,
        total: int,
        unit: str,
        parts: int,
        detail: str = "",
        hint: str = "",
        min_seconds: float = 0.0,
    ) -> None:
        self.what, self.parts, self.detail, self.hint = what, parts, detail, hint
        self.min_seconds = min_seconds
        self.done = 0
        self.bar = tqdm(
            total=total,
            desc=what,
            unit=unit,
            file=sys.stderr,
            disable=what is None,
            delay=min_seconds,
        )
        self.t0 = time.perf_counter()

    def advance(self, units: int) -> None:
        """One part is done, ``units`` of the total."""
        self.bar.update(units)
        self.done += 1
        if self.what is not None and self.done == 1 and self.parts > 1:
            first = time.perf_counter() - self.t0
            if first * self.parts > self.min_seconds:
                say(self.cost_line(first))

    def cost_line(self, first: float) -> str:
        """The estimate of the whole from the ``first`` part's seconds."""
        detail = f": {self.detail}" if self.detail else ""
        line = (
            f"{self.what}{detail}: about {duration(first * self.parts)} in all "
            f"(the first of {self.parts} took {first:.1f} s)"
        )
        return f"{line}; {self.hint}" if self.hint else line

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def say(line: str) -> None:
    """One line on stderr that a progress bar, if one is shown, stays below."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def duration(seconds: float) -> str:
    """``"40 s"``, ``"25 min"``, ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
