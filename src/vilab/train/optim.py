"""One optimizer table for fits and VAEs, with the flags each kind of device needs.

On a GPU: fused Adam (one kernel for all parameters; it skips a non-finite step on the
device itself) and ``capturable`` Adamax and RMSprop (their state on the GPU, so that
:func:`~vilab.train.guard.step_if_finite` can undo a step there); on the CPU torch's
defaults. A checkpoint written on one kind of device loads on another with this machine's
flags (:func:`load_optimizer_state`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

#: ``optim.name`` -> the optimizer class (RMSprop centered, as in seed 004).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamax": torch.optim.Adamax,
    "rmsprop": lambda p, **kw: torch.optim.RMSprop(p, centered=True, **kw),
}


def optimizer_options(name: str, device: torch.device) -> dict[str, bool]:
    """The device-dependent flags :func:`make_optimizer` sets."""
    if device.type != "cuda":
        return {}
    return {"fused": True} if name == "adam" else {"capturable": True}


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer ``name`` (a key of :data:`OPTIMIZERS`) for parameters on ``device``.

    Raises:
        ValueError: an unknown name.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r}; accepted: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr, **optimizer_options(name, device))


def sync_free(device: torch.device) -> bool:
    """Whether a trainer on ``device`` applies its steps conditionally on the device and
    reads the finite flags back only at the loop's sync points (a GPU; on the CPU a
    read-back costs nothing)."""
    return device.type == "cuda"


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a saved optimizer state with this optimizer's device flags (``fused``,
    ``capturable``, ``foreach``): a checkpoint written on a GPU resumes on a CPU and back,
    its step counts placed where this optimizer keeps them."""
    mine = optimizer.param_groups[0]
    flags = {k: mine[k] for k in ("fused", "capturable", "foreach") if k in mine}
    groups = [{**g, **flags} for g in saved["param_groups"]]
    optimizer.load_state_dict({**saved, "param_groups": groups})
