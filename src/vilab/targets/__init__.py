"""Targets: what p is — unnormalized log-densities, optionally conditioned on a context."""

from vilab.targets.base import Target, default_eval_contexts
from vilab.targets.energies import BUILTIN_TARGETS, Banana, BananaFamily, Energy2D
from vilab.targets.resolve import resolve_target

__all__ = [
    "BUILTIN_TARGETS",
    "Banana",
    "BananaFamily",
    "Energy2D",
    "Target",
    "default_eval_contexts",
    "resolve_target",
]
