"""Ctrl-C at a step boundary: the first SIGINT asks training to stop after the current
step (so the checkpoint written then is a whole step, never half of one); a second one
interrupts at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def stop_at_step_boundary(enabled: bool = True) -> Iterator[Callable[[], bool]]:
    """Within the block, SIGINT sets a flag that the returned function reports; the
    previous handler is restored afterwards. Does nothing (the function always says
    False, and Ctrl-C raises ``KeyboardInterrupt`` as usual) when not ``enabled`` or off
    the main thread, where Python cannot install a signal handler."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked = [False]

    def handler(signum: int, frame: FrameType | None) -> None:
        if asked[0]:
            raise KeyboardInterrupt
        asked[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: asked[0]
    finally:
        signal.signal(signal.SIGINT, previous)
