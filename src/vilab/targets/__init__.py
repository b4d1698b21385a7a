"""Targets: what p is — unnormalized log-densities, optionally conditioned on a context."""

from vilab.targets.base import Target, resolve_target
from vilab.targets.energies import BUILTIN_TARGETS, Banana, BananaFamily, Energy2D

__all__ = ["BUILTIN_TARGETS", "Banana", "BananaFamily", "Energy2D", "Target", "resolve_target"]
