"""Gradient estimators whose value differs from the bound they serve (DESIGN.md §5).

Sticking the landing (Roeder, Wu & Duvenaud, NeurIPS 2017): the reparameterized ELBO
gradient is a path term plus a score term E_q[∂_θ log q_θ(z)] whose expectation is zero;
dropping it (scoring z with the parameters held fixed) lowers the variance and gives zero
variance when q = p. Needs ``family.log_prob`` (Gaussians, invertible flows).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vilab.families.base import Family


class _LogProb(nn.Module):
    def __init__(self, family: Family) -> None:
        super().__init__()
        self.family = family

    def forward(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self.family.log_prob(z, context)


def log_prob_stop_params(family: Family, z: Tensor, context: Tensor | None = None) -> Tensor:
    """``log q_θ(z)`` with θ detached: gradients reach z (the path) but not θ directly."""
    if not family.has_log_prob:
        raise ValueError(
            f"sticking-the-landing needs a family that can score any z; "
            f"{type(family).__name__} with these flows cannot (use mean_field, full_rank or iaf)"
        )
    params = {f"family.{k}": v.detach() for k, v in family.named_parameters()}
    return torch.func.functional_call(_LogProb(family), params, (z, context), strict=False)
