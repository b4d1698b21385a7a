"""Atomic, resumable checkpoints.

A checkpoint holds everything a run needs to continue exactly: model and optimizer state,
scheduler state, the step, and the RNG state. It is written to a temporary file in the
same directory, flushed and fsync'ed, then renamed over the old one (``os.replace`` is
atomic on POSIX), so a crash or a full disk leaves the previous checkpoint intact. It is
read with ``torch.load(weights_only=True)``: no code is executed from the file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save ``state`` (tensors, numbers, strings, nested dicts/lists)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without executing code; clear errors for missing/corrupt files."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(
            f"checkpoint {str(path)!r} is unreadable or corrupt ({type(err).__name__}: {err}); "
            "delete it to start over"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"checkpoint {str(path)!r} is not a vilab checkpoint")
    return state
