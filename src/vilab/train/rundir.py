"""What a run directory holds, and the rules that keep it from losing work.

A run directory is *new* (absent, empty, or holding only what a run killed before its
first checkpoint left), *unfinished* (a checkpoint, and no ``metrics.json`` saying the run
ended), or *finished*. The rules, applied before any file is written:

- a run that would write into a directory holding a checkpoint or ``metrics.json`` is
  refused unless it resumes it (``resume``) or replaces it (``overwrite``: the directory is
  emptied first, and only if it holds nothing but a run's own files);
- a directory that holds anything else, a path that is a file, or one that cannot be
  created or written is refused with the reason;
- resuming reads the run's own ``config.yaml``; a setting that would change the model,
  the data or the optimization is refused with the difference. What may change on resume
  is listed in :data:`RESUMABLE_KEYS` (budgets, logging, evaluation, paths). ``steps`` may
  change, but not below the checkpoint's step: the learning-rate schedule and β-annealing
  follow progress = step / steps, so from the resumed step on they follow the new total
  (the run is then not identical to an uninterrupted run of either length);
- a finished run resumed with nothing left to do is refused (raise ``steps`` to train on).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

#: Keys (dotted; a prefix covers its section) that may differ on resume: they change
#: budgets, logging, paths or evaluation, not what is trained.
RESUMABLE_KEYS = (
    "steps",
    "stop.",
    "max_seconds",
    "threads",
    "device",
    "tf32",
    "compile",
    "log_every",
    "checkpoint_every",
    "eval_every",
    "figures",
    "final_eval",
    "eval_samples",
    "report_samples",
    "kl.",
    "report.",
    "eval_contexts",
    "family.log_q_stderr",
    "family.max_log_q_samples",
    "posterior.log_q_stderr",
    "posterior.max_log_q_samples",
    "eval.",
    "data.data_dir",
    "faults.",
)

#: Files and folders a run writes (``*.png`` and ``*.gif`` figures besides).
RUN_FILES = frozenset(
    {
        "config.yaml",
        "metrics.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "best.pt",
        "tensorboard",
    }
)


def _is_run_file(p: Path) -> bool:
    return p.name in RUN_FILES or p.suffix in (".png", ".gif") or p.name.endswith(".tmp")


def read_run_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a run directory, or None if absent or unreadable."""
    try:
        value = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def holds_work(run_dir: Path) -> bool:
    """The directory holds a checkpoint or final metrics: writing a new run there would
    lose them."""
    return (run_dir / "checkpoint.pt").exists() or (run_dir / "metrics.json").exists()


def finished(run_dir: Path) -> bool:
    """The run ended (not interrupted): its ``metrics.json`` says so."""
    m = read_run_metrics(run_dir)
    return m is not None and m.get("interrupted") is False


def check_out_dir(run_dir: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse a run directory that would lose work or cannot be written (see the module
    docstring). Writes nothing.

    Raises:
        ValueError: the reason, and what to do instead.
    """
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} is a file; give a directory path")
    if resume:
        if not (run_dir / "checkpoint.pt").is_file():
            raise ValueError(f"--resume: no checkpoint.pt in {str(run_dir)!r}")
        _check_writable(run_dir)
        return
    others = (
        sorted(p.name for p in run_dir.iterdir() if not _is_run_file(p)) if run_dir.is_dir() else []
    )
    if run_dir.is_dir() and holds_work(run_dir) and not overwrite:
        state = "a finished run" if finished(run_dir) else "an unfinished run (checkpoint.pt)"
        raise ValueError(
            f"{str(run_dir)!r} already holds {state}; nothing was written. Continue it with "
            "--resume, write to another --out, or replace it with --overwrite"
            + (f" (it also holds {', '.join(others[:5])})" if others else "")
        )
    if others:
        raise ValueError(
            f"{str(run_dir)!r} is not empty and is not a vilab run directory (it holds "
            f"{', '.join(others[:5])}); give a new or empty directory"
        )
    _check_writable(run_dir)


def clear_run(run_dir: Path) -> None:
    """Empty a run directory for ``overwrite``, after :func:`check_out_dir` has found
    nothing in it but a run's own files."""
    if not run_dir.is_dir():
        return
    for p in run_dir.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def unique_dir(base: Path) -> Path:
    """``base``, or ``base_2``, ``base_3``, … : the first that does not exist (a default
    run directory never lands on an earlier run)."""
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}_{k}"), k + 1
    return out


def _check_writable(run_dir: Path) -> None:
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create run directory {str(run_dir)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"cannot write run directory {str(run_dir)!r}: {str(parent)!r} is not writable "
            "(permission denied); choose a path you can write"
        )


def stored_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.yaml`` of a run directory as a mapping.

    Raises:
        ValueError: missing or not a mapping.
    """
    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{str(run_dir)!r} has no config.yaml: it is not a vilab run") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{str(path)!r} is unreadable ({err}); repair or delete it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} does not hold a mapping")
    return data


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_changes(stored: dict[str, Any], config: BaseModel) -> list[str]:
    """The settings of ``config`` that differ from the ``stored`` ones and may not change
    on resume, as ``key: old → new`` lines."""
    old, new = _flatten(stored), _flatten(config.model_dump(mode="json"))
    out = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS):
            continue
        out.append(f"{key}: {old.get(key, '(unset)')!r} → {new.get(key, '(unset)')!r}")
    return out


def check_resume_config(run_dir: Path, config: BaseModel) -> None:
    """Refuse to resume ``run_dir`` with a ``config`` that would change what is trained.

    Raises:
        ValueError: the differences, ``key: old → new``.
    """
    changes = config_changes(stored_config(run_dir), config)
    if changes:
        raise ValueError(
            f"--resume: these settings differ from {str(run_dir / 'config.yaml')!r} and would "
            "change the run: " + "; ".join(changes) + ". Resume without them, or start a "
            "new run (another --out)"
        )


def check_resume_steps(run_dir: Path, steps: int, checkpoint_step: int) -> None:
    """Refuse ``steps`` below the checkpoint's step, and a finished run with nothing left
    to do.

    Raises:
        ValueError: the reason and what is accepted.
    """
    if steps < checkpoint_step:
        raise ValueError(
            f"--resume: steps={steps} is below the checkpoint's step {checkpoint_step}; "
            f"accepted: steps ≥ {checkpoint_step}"
        )
    if steps == checkpoint_step and finished(run_dir):
        raise ValueError(
            f"{str(run_dir)!r} is a finished run (step {checkpoint_step} of {steps}); to "
            "train on, resume with more steps (--steps N or --set steps=N)"
        )
