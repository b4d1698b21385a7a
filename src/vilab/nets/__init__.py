"""Plain networks that know nothing of probability."""

from vilab.nets.mlp import MLP

__all__ = ["MLP"]
