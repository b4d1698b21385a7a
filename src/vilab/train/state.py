"""What both trainers share: the step counter, the training clock, the fault guard, and a
checkpoint state that saves, restores and rolls back with one error message.

A trainer (:class:`~vilab.train.fit.Fitter`, :class:`~vilab.train.vae.VAETrainer`)
subclasses :class:`TrainerState` and says what it adds to a checkpoint
(:meth:`TrainerState.own_state`) and how it takes it back
(:meth:`TrainerState.load_own_state`); the rest — ``step``, ``seconds``, the guard's
counts, the file's bytes, the rollback — is written here once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from vilab.core.checkpoint import brief, encode_checkpoint, load_checkpoint
from vilab.distributed import SINGLE, World, main_only, on_main
from vilab.train.guard import StepGuard


class _Faults(Protocol):
    max_bad_steps: int
    max_rollbacks: int
    rollback_lr_factor: float


class TrainerState:
    """Step, clock, guard and checkpoint state of a trainer.

    Attributes:
        step: updates done (skipped non-finite ones included).
        seconds: training time so far (evaluation excluded: see :meth:`start_clock`).
        guard: the :class:`~vilab.train.guard.StepGuard` of non-finite steps.
        world: the processes training together (rank 0 reads and writes files).
    """

    #: Attributes a rollback keeps as they are (besides the guard's counts): the clock, so
    #: that a time budget counts the lost steps too.
    kept_on_rollback: tuple[str, ...] = ("seconds",)
    #: Why training is over before its ``steps`` (None: it is not).
    stop_reason: str | None = None

    def __init__(self, faults: _Faults, world: World = SINGLE) -> None:
        self.world = world
        self.guard = StepGuard(faults)
        self.step = 0
        self.seconds = 0.0
        self._t0 = time.perf_counter()

    def start_clock(self) -> None:
        """(Re)start the training clock at ``self.seconds`` (time outside the steps, such
        as validation, is not training time)."""
        self._t0 = time.perf_counter() - self.seconds

    def clock(self) -> float:
        """Training seconds now."""
        return time.perf_counter() - self._t0

    # -- what a trainer adds ------------------------------------------------------------
    def own_state(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """The trainer's own checkpoint entries (model, optimizer, RNG, …)."""
        raise NotImplementedError

    def load_own_state(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        """Take the own entries back; raises KeyError, TypeError, ValueError or
        RuntimeError for a state of another configuration."""
        raise NotImplementedError

    # -- written once -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole training state (a collective in a multi-process world where
        :meth:`own_state` gathers)."""
        return {
            "step": self.step,
            "seconds": self.seconds,
            **self.own_state(),
            "guard": self.guard.state_dict(),
        }

    def encode(self) -> bytes | None:
        """The checkpoint file's bytes on rank 0, None elsewhere (a collective)."""
        return main_only(self.world, encode_checkpoint, self.state_dict())

    def load_state_dict(self, state: dict[str, Any], source: str = "the checkpoint") -> None:
        """Continue from ``state``.

        Raises:
            ValueError: ``state`` does not belong to a run of this configuration.
        """
        try:
            self.load_own_state(state)
            step, seconds = int(state["step"]), float(state["seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{source} does not fit this configuration ({brief(err)}); "
                "resume with the config the run was started with, or start a new run"
            ) from None
        self.step, self.seconds = step, seconds
        self.guard.load_state_dict(state.get("guard", {}))

    def rollback(self, path: Path) -> None:
        """Go back to the checkpoint at ``path`` (rank 0 reads it), keeping the fault
        counts, the lowered learning rate and :attr:`kept_on_rollback`."""
        guard = self.guard.state_dict()
        kept = {name: getattr(self, name) for name in self.kept_on_rollback}
        state = on_main(self.world, load_checkpoint, path)
        self.load_state_dict(state, f"checkpoint {str(path)!r}")
        self.guard.load_state_dict(guard)
        for name, value in kept.items():
            setattr(self, name, value)
