"""Gradient estimators whose value differs from the bound they serve (DESIGN.md §5).

Sticking the landing (Roeder, Wu & Duvenaud, NeurIPS 2017): the reparameterized ELBO
gradient is a path term plus a score term E_q[∂_θ log q_θ(z)] whose expectation is zero;
dropping it (scoring z with the parameters held fixed) lowers the variance and gives zero
variance when q = p. Needs ``family.log_prob`` (Gaussians, invertible flows). Trainers get
it from :meth:`~vilab.families.base.Family.training_sample` with ``stl=True``; this
function is the same stopped log-density for code that already holds a z.
"""

from __future__ import annotations

from torch import Tensor

from vilab.families.base import Family


def log_prob_stop_params(family: Family, z: Tensor, context: Tensor | None = None) -> Tensor:
    """``log q_θ(z | c)`` with θ and c detached: gradients reach z (the path) only.

    Raises:
        ValueError: the family cannot score an arbitrary z.
    """
    return family.stopped_log_prob(z, context)
