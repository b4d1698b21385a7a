"""Devices and numeric precision: the one place that chooses where a run computes.

DESIGN.md §9: a tensor is created on the device and dtype of the tensors it is computed
from; the only place that chooses a device is the run's ``device`` setting, resolved here
by :func:`resolve_device`:

- ``"auto"``: the current CUDA device when one is present, else the CPU;
- ``"cpu"``; ``"cuda"`` (the current CUDA device); ``"cuda:N"`` (GPU N).

Asking for a GPU that is not there is an error that says what is (never a silent fall back
to the CPU: a run that was meant for a GPU should not take a hundred times longer unseen).

The random state of a run covers every device it draws on: :func:`rng_state` holds the
CPU generator and, on a CUDA device, that device's generator; :func:`set_rng_state`
restores what it can and returns whether that was every stream the run draws from (a
state saved on a GPU restores the CPU stream on a CPU; a run resumes with the same
streams on the same kind of device).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DEVICE_CHOICES",
    "PRECISIONS",
    "autocast",
    "cuda_count",
    "fork_rng",
    "resolve_device",
    "rng_state",
    "set_matmul_precision",
    "set_rng_state",
]

#: What a ``device`` setting accepts (``cuda:N`` for any N).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
#: ``float32``: everything in float32; ``bf16``: the networks under bfloat16 autocast,
#: every log-density, log-determinant, log-sum-exp and the bound in float32.
PRECISIONS = ("float32", "bf16")

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def cuda_count() -> int:
    """CUDA devices this process can use (0 on a CPU-only build or machine)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device_spec(spec: str) -> str:
    """``spec`` if it is a well-formed device setting (see the module docstring), with no
    look at the hardware: config validation on a machine that is not the one that runs.

    Raises:
        ValueError: names the bad value and the accepted forms.
    """
    m = _SPEC.match(spec.strip().lower()) if isinstance(spec, str) else None
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ValueError(f"device {spec!r}: accepted {', '.join(DEVICE_CHOICES)}")
    return spec.strip().lower()


def resolve_device(
    spec: str | torch.device = "auto", local_rank: int | None = None
) -> torch.device:
    """The ``torch.device`` of a device setting, checked against this machine.

    ``local_rank``: this process's index on its machine in a multi-process job (torchrun's
    ``LOCAL_RANK``), None for a single process. One process per GPU: ``auto`` and
    ``cuda`` then mean ``cuda:local_rank``.

    Raises:
        ValueError: a malformed setting, a CUDA device on a machine or torch build without
            CUDA, a GPU index beyond the GPUs present (the message says which are), or in a
            multi-process job a fixed ``cuda:N`` or more processes than GPUs.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = check_device_spec(spec)
    n = cuda_count()
    if spec == "cpu" or (spec == "auto" and n == 0):
        return torch.device("cpu")
    if local_rank is not None:
        if spec.startswith("cuda:"):
            raise ValueError(
                f"device {spec!r} in a multi-process job: each process takes the GPU of its "
                "LOCAL_RANK; use device=cuda (or auto), and CUDA_VISIBLE_DEVICES to choose GPUs"
            )
        if n and local_rank >= n:
            raise ValueError(
                f"process LOCAL_RANK={local_rank} has no GPU of its own: this machine has {n} "
                f"CUDA device(s); start at most {n} processes per machine (--nproc {n})"
            )
    if spec == "auto":
        return torch.device(
            "cuda", torch.cuda.current_device() if local_rank is None else local_rank
        )
    if n == 0:
        why = (
            "this torch build has no CUDA"
            if torch.version.cuda is None
            else "no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)"
        )
        raise ValueError(f"device {spec!r}: {why}; use device=cpu or device=auto")
    if spec == "cuda":
        index = torch.cuda.current_device() if local_rank is None else local_rank
    else:
        index = int(spec.split(":")[1])
    if index >= n:
        raise ValueError(
            f"device {spec!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
        )
    return torch.device("cuda", index)


def set_matmul_precision(tf32: bool) -> None:
    """TF32 tensor-core matmuls and convolutions (10-bit mantissa inputs, float32
    accumulation) on Ampere and newer GPUs, or full float32. A process-wide setting of
    torch; no effect on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The context in which a network runs at ``precision``: bfloat16 autocast for
    ``"bf16"`` (on the CPU too, where it is slow but numerically the same as on a GPU),
    nothing for ``"float32"``. Callers cast the network's output back to float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision {precision!r}: accepted {', '.join(PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The random state a run on ``device`` draws from: ``{"cpu": …}`` and, on a CUDA
    device, ``{"cuda": …}`` of that device (both ``uint8`` CPU tensors)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Tensor | dict[str, Tensor], device: torch.device) -> bool:
    """Restore :func:`rng_state` (or a bare CPU state of an older checkpoint) for a run
    on ``device``; True if every stream the run draws from was restored (an exact resume),
    False if a CUDA stream had no saved state (a checkpoint of a CPU run resumed on a GPU:
    that stream is left as seeded)."""
    if isinstance(state, Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if device.type != "cuda":
        return True
    if "cuda" not in state:
        return False
    torch.cuda.set_rng_state(state["cuda"], device)
    return True


@contextlib.contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """Run a block with its own random numbers and give the run's streams back as they
    were: the CPU generator and, on a CUDA device, that device's (``torch.random.
    fork_rng`` over the devices the run uses, without its warning on many GPUs)."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def move_tensors(data: Any, device: torch.device) -> Any:
    """``data`` with every tensor inside it (nested tuples, lists and dicts) moved to
    ``device``; anything else as it is."""
    if isinstance(data, Tensor):
        return data.to(device)
    if isinstance(data, (tuple, list)):
        return type(data)(move_tensors(v, device) for v in data)
    if isinstance(data, dict):
        return {k: move_tensors(v, device) for k, v in data.items()}
    return data
