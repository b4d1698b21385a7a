"""Finding a target by name: a built-in one, or a user's log-density in a module or file.

``resolve_target`` sits above :mod:`vilab.targets.base` (the contract),
:mod:`vilab.targets.energies` (the 2-D energies) and :mod:`vilab.targets.suite` (the
posteriors with known answers), so that none of them imports another back;
:data:`BUILTIN_TARGETS` here is the union of their name → factory tables.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from vilab.targets.base import Box, Target
from vilab.targets.energies import BUILTIN_TARGETS as ENERGY_TARGETS
from vilab.targets.suite import SUITE_TARGETS
from vilab.targets.user import CallableTarget

#: Every built-in target by name: the 2-D energies and the suite.
BUILTIN_TARGETS: dict[str, Callable[[], Target]] = {**ENERGY_TARGETS, **SUITE_TARGETS}


def load_callable(spec: str) -> Callable[..., Tensor]:
    """``package.module:function`` or ``path/to/file.py:function`` -> the function."""
    if ":" not in spec:
        raise ValueError(
            f"target {spec!r} is neither a built-in target nor 'module:function' / "
            "'file.py:function'"
        )
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"target file {where!r} does not exist")
        mod_name = f"vilab_user_target_{abs(hash(path.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot import {where!r} as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"cannot import module {where!r} for target {spec!r}: {err}") from err
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"{where!r} has no callable named {attr!r}")
    return fn


def resolve_target(
    spec: str | Callable[..., Tensor],
    dim: int | None = None,
    box: Box | None = None,
    log_z: float | None = None,
    context_dim: int | None = None,
    context_range: tuple[float, float] = (0.0, 1.0),
    support: object = None,
) -> Target:
    """A built-in target by name (``U1``…``U4``, ``banana``, ``banana_family``, or one of
    the suite :data:`vilab.targets.suite.SUITE`), a user
    callable named ``module:function`` / ``file.py:function``, or the callable itself
    (``logp(z)``, or ``logp(z, c)`` for a target family), checked as it is loaded — inside
    ``support`` where one is given (:func:`vilab.core.support.parse_support`)."""
    if callable(spec):
        name = getattr(spec, "__name__", "custom")
        return _callable_target(spec, name, dim, box, log_z, context_dim, context_range, support)
    if spec in BUILTIN_TARGETS:
        target = BUILTIN_TARGETS[spec]()
        if dim is not None and dim != target.dim:
            raise ValueError(f"target {spec!r} has dim {target.dim}, got dim={dim}")
        return target
    if ":" not in spec:
        raise ValueError(
            f"unknown target {spec!r}: use one of {', '.join(BUILTIN_TARGETS)}, or a "
            "log-density 'module:function' / 'path/file.py:function'"
        )
    fn = load_callable(spec)
    return _callable_target(fn, spec, dim, box, log_z, context_dim, context_range, support)


def _callable_target(
    fn: Callable[..., Tensor],
    spec: str,
    dim: int | None,
    box: Box | None,
    log_z: float | None,
    context_dim: int | None,
    context_range: tuple[float, float],
    support: object = None,
) -> Target:
    if dim is None:
        dim = 2
    if context_dim is None and len(inspect.signature(fn).parameters) >= 2:
        params = list(inspect.signature(fn).parameters.values())
        if params[1].default is inspect.Parameter.empty:
            raise ValueError(
                f"{spec!r} takes a second argument without a default: a target family "
                "needs context_dim (--context-dim) and a context range"
            )
    name = spec.rpartition(":")[2]
    lo, hi = context_range
    return CallableTarget(fn, dim, name, box, log_z, context_dim, lo, hi, support=support)
