"""The run lifecycle, written once for ``vilab fit``, ``vilab train`` and every command that
trains (DESIGN.md §8): trainers only step.

:func:`execute` takes a trainer, a job (the command's hooks, description and finish) and a
run directory, and does, in order:

1. refuse a directory that would lose work or cannot be written, and on resume a config
   that would change the run (:mod:`vilab.train.rundir`) — before any file is written;
2. resume: load the checkpoint (rank 0 reads it, every rank restores it);
3. prepare the directory: remove temporary files a killed process left, write
   ``config.yaml``, open ``metrics.jsonl``, TensorBoard and the progress bar;
4. run the step loop (:func:`vilab.train.steps.run_steps`: skip/rollback of non-finite
   steps, checkpoints held until a later step is finite, budget, signals): SIGINT or
   SIGTERM stops at the step boundary with a checkpoint; a second one stops at once;
5. finish: the job's final evaluation and figures (skipped after a second signal);
6. write ``metrics.json`` (rank 0), with ``"interrupted"`` and the signal if one stopped it.

In a multi-process world only rank 0 writes, and an error while it writes is raised on
every rank.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from vilab.config import dump_config
from vilab.core.checkpoint import load_checkpoint
from vilab.core.io import atomic_write_bytes, atomic_write_text, remove_stale_temps
from vilab.distributed import SINGLE, World, main_only, on_main
from vilab.train.guard import GoodCheckpoints
from vilab.train.interrupt import stop_signals
from vilab.train.logging import RunLogger
from vilab.train.rundir import (
    check_out_dir,
    check_resume_config,
    check_resume_steps,
    clear_run,
    finished,
)
from vilab.train.runs import read_json
from vilab.train.steps import Hooks, Stepper, run_steps


class Trainer(Stepper, Protocol):
    """What the lifecycle steps: a :class:`~vilab.train.steps.Stepper` (one step, its
    state; :class:`~vilab.train.state.TrainerState`). The config's ``threads``, if set, is
    applied when the trainer is built."""

    config: Any  # a FitConfig or TrainConfig: steps, log_every, checkpoint_every, ...
    world: World

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Continue from a checkpoint's state (on every rank)."""


class Job(Protocol):
    """What a command adds to a trainer's run: where the records go, what is reported and
    how the run finishes (evaluation and figures). Its methods take the trainer."""

    def hooks(self, trainer: Any, run_dir: Path, logger: RunLogger) -> Hooks:
        """Where the loop's records go, and what runs after each step."""

    def describe(self, trainer: Any) -> dict[str, Any]:
        """The first entries of ``metrics.json``: what was trained."""

    def finish(
        self, trainer: Any, run_dir: Path, interrupted: bool, progress: bool
    ) -> dict[str, Any]:
        """Final evaluation and figures; the entries it adds to ``metrics.json``."""


def prepare_out_dir(run_dir: Path, resume: bool, overwrite: bool, world: World = SINGLE) -> None:
    """Step 1's directory checks on rank 0 (raised on every rank); with ``overwrite`` the
    old run's files are removed."""

    def check() -> None:
        check_out_dir(run_dir, resume, overwrite)
        if overwrite:
            clear_run(run_dir)

    on_main(world, check)


def execute(
    make_trainer: Callable[[], Trainer],
    job: Job,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    world: World = SINGLE,
) -> dict[str, Any]:
    """Train, finish and record one run in ``run_dir``; returns the final metrics (the
    content of ``metrics.json``, the same on every rank). See the module docstring.

    Args:
        make_trainer: builds the trainer (after the directory checks, so a refused
            directory costs nothing).
        job: the command's hooks, description and finish.
        resume: continue the checkpoint in ``run_dir`` (its config must match, see
            :func:`vilab.train.rundir.check_resume_config`).
        overwrite: replace the run in ``run_dir``.

    Raises:
        ValueError: a directory, config or checkpoint that is refused, with the reason.
    """
    run_dir = Path(run_dir)
    prepare_out_dir(run_dir, resume, overwrite, world)
    trainer = make_trainer()
    if trainer.config.threads:
        torch.set_num_threads(trainer.config.threads)
    ckpt = run_dir / "checkpoint.pt"
    if resume:
        _resume(trainer, run_dir, ckpt, world)
    logger = _open_run(trainer, run_dir, resume, progress, tensorboard, world)
    ckpts = GoodCheckpoints(ckpt, partial(main_only, world, atomic_write_bytes))
    at_once = False
    with stop_signals(at_step_boundary=not world.distributed) as stop:
        with contextlib.closing(logger):
            if not resume:  # what a rollback before the first checkpoint finds
                ckpts.write(trainer.encode())
            try:
                hooks = job.hooks(trainer, run_dir, logger)
                run_steps(trainer, trainer.config, ckpts, hooks, stop)
            except KeyboardInterrupt:  # a second signal: the last checkpoint written stands
                at_once = True
        stop.at_once = True  # the checkpoint is whole: a signal now interrupts at once
        metrics: dict[str, Any] = {
            **job.describe(trainer),
            "steps": trainer.step,
            "seconds": trainer.seconds,
            **trainer.guard.metrics(),
        }
        if not at_once:
            try:
                metrics.update(job.finish(trainer, run_dir, stop.requested, progress))
            except KeyboardInterrupt:
                at_once = True
    metrics["interrupted"] = stop.requested or at_once
    if metrics["interrupted"]:
        metrics["signal"] = stop.signal or "SIGINT"
    if world.is_main:
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _resume(trainer: Trainer, run_dir: Path, ckpt: Path, world: World) -> None:
    """Step 2: check the run's config, load its checkpoint, check the steps."""
    on_main(world, check_resume_config, run_dir, trainer.config)
    state = on_main(world, load_checkpoint, ckpt)
    trainer.load_state_dict(state, f"checkpoint {str(ckpt)!r}")
    on_main(world, check_resume_steps, run_dir, trainer.config.steps, trainer.step)
    if trainer.stop_reason is not None and on_main(world, finished, run_dir):
        raise ValueError(
            f"{str(run_dir)!r} is a finished run ({trainer.stop_reason}); to train on, "
            "resume with --set stop.auto=false and --steps N"
        )


def _open_run(
    trainer: Trainer, run_dir: Path, resume: bool, progress: bool, tensorboard: bool, world: World
) -> RunLogger:
    """Step 3 on rank 0 (a disabled logger elsewhere): clean, write ``config.yaml``, open
    the logs."""

    def prepare() -> RunLogger:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)
        if not resume:
            (run_dir / "best.pt").unlink(missing_ok=True)  # never evaluate an earlier run's
        atomic_write_text(run_dir / "config.yaml", dump_config(trainer.config))
        return RunLogger(run_dir, trainer.config.steps, trainer.step, progress, tensorboard)

    try:
        return main_only(world, prepare) or RunLogger(run_dir, 0, enabled=False)
    except OSError as err:
        raise ValueError(f"cannot write run directory {str(run_dir)!r}: {err}") from None


def record(run_dir: Path, key: str, result: dict[str, Any], world: World = SINGLE) -> None:
    """Merge ``result`` into the run's ``metrics.json`` under ``key`` (rank 0, atomically):
    how a command that evaluates a finished run records what it found."""
    if not world.is_main:
        return
    path = run_dir / "metrics.json"
    metrics = read_json(path) if path.exists() else {}
    metrics[key] = result
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")


def exit_code(metrics: dict[str, Any]) -> int:
    """The exit status of an interrupted run: 128 + the signal's number (130 for Ctrl-C,
    143 for SIGTERM), the shell's convention."""
    return 128 + signal.Signals[metrics.get("signal", "SIGINT")].value


def resume_hint(command: str, run_dir: Path, metrics: dict[str, Any]) -> str:
    """The line an interrupted run prints: where it stopped and the command that resumes it."""
    return (
        f"vilab: interrupted by {metrics.get('signal', 'SIGINT')} at step {metrics['steps']}; "
        f"the last checkpoint is in {str(run_dir)!r}. Resume with:\n"
        f"  vilab {command} --out {run_dir} --resume"
    )
