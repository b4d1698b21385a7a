"""Learning-rate schedule and run progress, shared by 2-D fits and VAE training.

Progress is the fraction of the run done: the step fraction, or the time fraction of a
``max_seconds`` budget if that is further — so a time-budgeted run completes its decay
(and β-annealing) within the budget. All of it is derived from (step, seconds): nothing
to checkpoint beyond them.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol

#: The progress from which ``objective.stl: late`` takes sticking-the-landing gradients.
LATE_STL = 2 / 3


class _Optim(Protocol):
    warmup_steps: int
    schedule: str
    min_lr_ratio: float


class _BaseLR(_Optim, Protocol):
    lr: float


def progress(step: int, seconds: float, steps: int, max_seconds: float | None) -> float:
    """Fraction of the run done, in [0, 1]."""
    p = step / steps
    if max_seconds is not None:
        p = max(p, seconds / max_seconds)
    return min(1.0, p)


def lr_factor(step: int, frac: float, optim: _Optim) -> float:
    """Multiplier of the base learning rate: linear warm-up over ``warmup_steps`` steps,
    then constant, or cosine decay to ``min_lr_ratio`` over the progress ``frac``."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def apply_lr(optimizer: Any, optim: _BaseLR, step: int, frac: float, scale: float = 1.0) -> float:
    """Set every parameter group's learning rate to ``optim.lr × scale × lr_factor`` (the
    guard's rollback ``scale``); returns it."""
    lr = optim.lr * scale * lr_factor(step, frac, optim)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def stl_now(stl: bool | Literal["late"], frac: float, lr_reduced: bool = False) -> bool:
    """Whether this step takes sticking-the-landing gradients: always (``True``), never
    (``False``), or, for ``"late"``, from the progress :data:`LATE_STL` on, or once a
    stopping rule has lowered the learning rate (a fit that stops on convergence has no
    progress to read: its first stall says q is near where it will end)."""
    if stl == "late":
        return frac >= LATE_STL or lr_reduced
    return bool(stl)
