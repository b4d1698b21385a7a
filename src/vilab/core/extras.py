"""Optional dependencies (the extras of ``pyproject.toml``): imported where they are used,
and a clear error naming the extra to install where one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed (an ImportError, and a ValueError so that
    the command line reports it like any other bad input)."""


def require(module: str, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """``import module``, or a :class:`MissingDependencyError` saying that ``purpose``
    needs ``package`` (the distribution's name; default: the module's top level) and which
    extra installs it (``pip install 'vilab[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{purpose} needs {package or module.partition('.')[0]}: pip install 'vilab[{extra}]'"
        ) from None
