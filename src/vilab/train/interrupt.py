"""Signals stop a run at a step boundary, with a checkpoint.

SIGINT (Ctrl-C) and SIGTERM (what ``kill`` and cluster schedulers send before they kill)
are handled alike: the first asks training to stop after the current step, so the
checkpoint written then is a whole step, never half of one; a second one interrupts at
once (``KeyboardInterrupt``), keeping the last checkpoint written. After training (during
the final evaluation and figures) the first signal interrupts at once: the checkpoint is
already whole.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """What the handlers saw: ``requested`` (also its value when called, for the step
    loop) once a signal asked to stop; ``signal`` its name (``"SIGINT"``/``"SIGTERM"``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at_once = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __call__(self) -> bool:
        return self.requested

    @property
    def signal(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self.at_once or not first:
            raise KeyboardInterrupt


@contextmanager
def stop_signals(at_step_boundary: bool = True) -> Iterator[StopSignals]:
    """Within the block, SIGINT and SIGTERM are caught (see the module docstring); the
    previous handlers are restored afterwards. With ``at_step_boundary=False`` (several
    processes, which could not agree on the boundary without a collective) every signal
    interrupts at once. Off the main thread, where Python cannot install handlers, the
    defaults stand."""
    stop = StopSignals()
    stop.at_once = not at_step_boundary
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
