"""The step loop shared by ``vilab fit`` and ``vilab train``.

One iteration: a training step; if it was not finite, the :class:`~vilab.train.guard.
StepGuard` may call for a rollback to the last good checkpoint; the train values are
logged every ``log_every`` steps; the caller's ``after_step`` hook runs (the VAE's
validation); a checkpoint is held every ``checkpoint_every`` steps and written by
:class:`~vilab.train.guard.GoodCheckpoints` once a later step is finite; the loop stops at
``steps``, at the ``max_seconds`` budget, once the trainer's ``stop_reason`` is set (a fit
that converged), or at a Ctrl-C (at the step boundary).

A step may return its ``"finite"`` flag as a 0-d tensor on its device instead of a bool (a
GPU step that applied itself conditionally, :func:`vilab.train.guard.step_if_finite`):
the loop then keeps the flags and reads them back together at the next sync point — a
logged step, a checkpoint step, the last step, the budget or a stop — and replays them
through the guard and the checkpoints in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from vilab.train.guard import GoodCheckpoints, StepGuard


@dataclass
class StepResult:
    """What one training step returns.

    Attributes:
        values: what to log (``bound``, ``lr``, ``beta``, …).
        finite: whether the update was applied; or, for a step applied conditionally on
            its device, a 0-d bool tensor there (read back at the next sync point).
        fault: what the target did wrong in a non-finite step, with its values
            (:func:`vilab.train.faults.check_target`); None otherwise.
    """

    values: dict[str, float]
    finite: bool | Tensor
    fault: str | None = None


class Stepper(Protocol):
    """What the loop drives: a :class:`~vilab.train.fit.Fitter` or a
    :class:`~vilab.train.vae.VAETrainer`."""

    step: int
    seconds: float
    guard: StepGuard
    stop_reason: str | None  # why training is over before ``steps`` (a fit that converged)

    def train_step(self, log_value: bool = True) -> StepResult: ...

    def start_clock(self) -> None: ...

    def encode(self) -> bytes | None: ...

    def rollback(self, path: Path) -> None: ...


class LoopConfig(Protocol):
    steps: int
    log_every: int
    checkpoint_every: int
    max_seconds: float | None


@dataclass
class Hooks:
    """Where the loop's records go (the VAE sends them through rank 0)."""

    log: Callable[[int, dict[str, float]], None]
    rewind: Callable[[int], None]
    advance: Callable[[], None]
    after_step: Callable[[int], None] = lambda step: None


def run_steps(
    stepper: Stepper,
    config: LoopConfig,
    ckpts: GoodCheckpoints,
    hooks: Hooks,
    stop_requested: Callable[[], bool],
) -> bool:
    """Train from ``stepper.step`` to ``config.steps`` (see the module docstring); the last
    state is written as a checkpoint unless the run ended in non-finite steps. True if a
    Ctrl-C stopped it early."""
    guard = stepper.guard
    interrupted = False
    pending: list[tuple[int, Tensor]] = []  # flags of steps not read back yet

    def settle() -> bool:
        """Read the pending flags back (one transfer) and replay them; True if a rollback
        is due (the flags after it are dropped: the rollback undoes their steps)."""
        flags = torch.stack([f for _, f in pending]).cpu().tolist() if pending else []
        steps = [s for s, _ in pending]
        pending.clear()
        for s, f in zip(steps, flags):
            ckpts.step_done(bool(f))
            if guard.record(bool(f), s):
                return True
        return False

    stepper.start_clock()
    while stepper.step < config.steps and stepper.stop_reason is None:
        logged = (stepper.step + 1) % config.log_every == 0 or stepper.step + 1 == config.steps
        result = stepper.train_step(log_value=logged)
        step, flag, values = stepper.step, result.finite, result.values
        over = config.max_seconds is not None and stepper.seconds >= config.max_seconds
        if isinstance(flag, Tensor):
            pending.append((step, flag))
            sync = logged or step % config.checkpoint_every == 0 or step == config.steps
            rollback = settle() if sync or over or stop_requested() else False
        else:
            ckpts.step_done(bool(flag))
            rollback = guard.record(bool(flag), step, result.fault)
        if rollback:
            ckpts.drop()
            stepper.rollback(ckpts.path)
            ckpts.write(stepper.encode())  # the rollback and its lower lr survive a crash
            hooks.rewind(stepper.step)
            hooks.log(stepper.step, {"rollback": guard.rollbacks, **guard.metrics()})
            stepper.start_clock()
            continue
        if step % config.log_every == 0 or step == config.steps:
            if guard.skipped:
                values["skipped_steps"] = guard.skipped
            hooks.log(step, values)
        hooks.after_step(step)
        if step % config.checkpoint_every == 0:
            ckpts.hold(stepper.encode())
        hooks.advance()
        if over or stepper.stop_reason is not None:
            break
        if stop_requested():
            interrupted = True
            break
    if guard.in_a_row == 0:  # else the last good checkpoint stands
        ckpts.write(stepper.encode())
    return interrupted
