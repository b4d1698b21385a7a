"""Atomic, resumable checkpoints: the file format shared by training, evaluation and resume.

A checkpoint holds everything a run needs to continue exactly: model and optimizer state,
scheduler state, the step, and the RNG state. It is written to a temporary file in the
same directory, flushed and fsync'ed, then renamed over the old one (``os.replace`` is
atomic on POSIX), so a crash or a full disk leaves the previous checkpoint intact. It is
read with ``torch.load(weights_only=True)``: no code is executed from the file. A SHA-256
digest of the contents, stored in the file, catches a corrupted tensor that would load.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from vilab.core.io import atomic_write_bytes

__all__ = ["brief", "encode_checkpoint", "load_checkpoint", "save_checkpoint", "state_digest"]

DIGEST_KEY = "sha256"


def brief(err: BaseException, lines: int = 2, limit: int = 300) -> str:
    """``Type: first lines`` of an exception from a library, for a one-line message."""
    text = " ".join(x.strip() for x in str(err).strip().splitlines()[:lines] if x.strip())
    return f"{type(err).__name__}: {text[:limit] or repr(err)}"


def state_digest(state: Any) -> str:
    """SHA-256 of a nested state: every tensor's dtype, shape and bytes, every other
    value's type and ``repr``, in order. A zip checksum does not cover what ``torch.load``
    reads: a flipped bit in a tensor loads silently without this."""
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(b"{")
            for k, v in x.items():
                visit(k)
                visit(v)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                visit(v)
            h.update(b"]")
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    visit(state)
    return h.hexdigest()


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file: ``state`` (tensors, numbers, strings, nested
    dicts/lists) with its :func:`state_digest` under ``"sha256"``, in ``torch.save``'s
    format (a plain ``torch.load`` reads it too)."""
    buffer = io.BytesIO()
    torch.save({**state, DIGEST_KEY: state_digest(state)}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save ``state`` to ``path`` (:func:`encode_checkpoint`)."""
    atomic_write_bytes(path, encode_checkpoint(state))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without executing code
    (``weights_only``), and check its digest.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt, or not a vilab checkpoint.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with warnings.catch_warnings():  # a damaged file makes torch warn before it fails
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(
            f"checkpoint {str(path)!r} is unreadable or corrupt ({brief(err, 1, 200)}); "
            "delete it to start over"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(
            f"checkpoint {str(path)!r} is not a vilab checkpoint (a dict with an integer "
            "'step' and the run's state)"
        )
    digest = state.pop(DIGEST_KEY, None)
    if digest != state_digest(state):
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt: "
            + (
                "it has no digest (not written by vilab's save_checkpoint, or damaged)"
                if digest is None
                else "its contents do not match its digest"
            )
            + "; delete it to start over"
        )
    return state
