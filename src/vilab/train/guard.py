"""Non-finite steps: skip, count, roll back with a lower learning rate, then stop.

A step whose loss or gradient is NaN or ±inf is not applied: the parameters and the
optimizer state stay as they were, the step counter moves on (the next batch comes), and
the step is counted in ``skipped``. After ``faults.max_bad_steps`` such steps *in a row*
the run rolls back to its last good checkpoint, multiplies the learning rate by
``faults.rollback_lr_factor`` for the rest of the run, writes that state as the new
checkpoint, and goes on; after ``faults.max_rollbacks`` rollbacks it stops with
:class:`Diverged`. The learning-rate scale and the counters (the bad steps in a row too)
are part of the checkpoint, so a resumed run keeps them.

A checkpoint is *good* once a later step was finite (:class:`GoodCheckpoints`): the
update of the checkpointed step itself may be what sends every later step to NaN, and a
rollback to it would then replay the same failure. A run that ends in non-finite steps
keeps its last good checkpoint rather than writing its end state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor


class Diverged(FloatingPointError):
    """Training kept producing non-finite losses or gradients after every rollback."""


class _Faults(Protocol):
    max_bad_steps: int
    max_rollbacks: int
    rollback_lr_factor: float


def grads_finite(parameters: Iterable[torch.nn.Parameter]) -> Tensor:
    """A 0-d bool tensor: every gradient is finite. One sum over all entries (NaN and ±inf
    propagate; a sum that overflows the dtype counts as non-finite too): about 0.07 ms for
    seed 004's 633k parameters on two cores."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    return torch.stack([g.sum() for g in grads]).sum().isfinite()


def backward_checked(
    loss: Tensor, parameters: list[torch.nn.Parameter], clip: float | None
) -> bool:
    """Back-propagate ``loss``, clip the gradient norm to ``clip`` (if given), and say
    whether the step may be applied: the loss and every gradient finite.

    The loss is multiplied by (1 + 0·loss), which is 1 exactly for a finite loss and NaN
    otherwise, so a non-finite loss shows in the gradients; with data-parallel training
    (whose gradients are averaged) a non-finite loss on any rank then makes the decision
    of every rank, from one local check."""
    (loss * (1.0 + 0.0 * loss.detach())).backward()
    if clip is not None:
        return bool(torch.nn.utils.clip_grad_norm_(parameters, clip).isfinite())
    return bool(grads_finite(parameters))


class StepGuard:
    """Counts non-finite steps and says when to roll back (see the module docstring)."""

    def __init__(self, faults: _Faults) -> None:
        self.faults = faults
        self.skipped = 0
        self.in_a_row = 0
        self.rollbacks = 0
        self.lr_scale = 1.0

    def record(self, finite: bool, step: int) -> bool:
        """Record the step just done; True if the run must now roll back.

        Raises:
            Diverged: a rollback is due but ``max_rollbacks`` are used up.
        """
        if finite:
            self.in_a_row = 0
            return False
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row < self.faults.max_bad_steps:
            return False
        if self.rollbacks >= self.faults.max_rollbacks:
            raise Diverged(
                f"training diverged: {self.in_a_row} non-finite steps in a row up to step "
                f"{step}, after {self.rollbacks} rollback(s) that lowered the learning rate "
                f"to {self.lr_scale:g}× optim.lr; lower optim.lr, set optim.grad_clip, or "
                "raise faults.max_rollbacks"
            )
        self.rollbacks += 1
        self.in_a_row = 0
        self.lr_scale *= self.faults.rollback_lr_factor
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "in_a_row": self.in_a_row,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.in_a_row = int(state.get("in_a_row", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))

    def metrics(self) -> dict[str, float]:
        return {
            "skipped_steps": self.skipped,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
        }


class GoodCheckpoints:
    """Writes a checkpoint only once it is known to be good.

    ``hold(data)`` keeps the encoded state of a checkpoint step in memory; ``step_done``
    writes it at the next finite step (a skipped step changes nothing, so a later finite
    step vouches for the held state as well); ``write(data)`` writes at once (start, end,
    after a rollback) and forgets what was held, and a rollback drops it. So a crash loses
    at most ``checkpoint_every`` steps plus the non-finite steps in a row just after a
    checkpoint step. ``write_file(path, data)`` does the writing (atomic; on rank 0 only in
    a multi-process run, where ``data`` is None on the other ranks).
    """

    def __init__(self, path: Path, write_file: Callable[[Path, bytes | None], None]) -> None:
        self.path, self.write_file = path, write_file
        self.held: tuple[bytes | None] | None = None

    def hold(self, data: bytes | None) -> None:
        self.held = (data,)

    def step_done(self, finite: bool) -> None:
        if self.held is not None and finite:
            self.write_file(self.path, self.held[0])
            self.held = None

    def drop(self) -> None:
        self.held = None

    def write(self, data: bytes | None) -> None:
        self.held = None
        self.write_file(self.path, data)
