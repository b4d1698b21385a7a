"""Targets: what p is — unnormalized log-densities, optionally conditioned on a context."""

from vilab.targets.base import Target, default_eval_contexts
from vilab.targets.energies import Banana, BananaFamily, Energy2D
from vilab.targets.reference import Reference
from vilab.targets.resolve import BUILTIN_TARGETS, resolve_target
from vilab.targets.suite import SUITE, SUITE_TARGETS

__all__ = [
    "BUILTIN_TARGETS",
    "SUITE",
    "SUITE_TARGETS",
    "Banana",
    "BananaFamily",
    "Energy2D",
    "Reference",
    "Target",
    "default_eval_contexts",
    "resolve_target",
]
