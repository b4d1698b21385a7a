"""Inverse autoregressive flow with the gated update (Kingma et al., NeurIPS 2016).

    (m, s) = MADE(z [, h]),   σ = sigmoid(s),
    f(z) = σ ⊙ z + (1 − σ) ⊙ m,
    log |det ∂f/∂z| = Σᵢ log σᵢ,

because ∂fᵢ/∂zⱼ = 0 for j after i in the order and the diagonal is σᵢ. The bias of s
starts at +2 (σ ≈ 0.88): each step begins close to the identity. Free or amortized is the
context h (the encoder's extra output): IAF's own weights are always free parameters.
The inverse exists but needs D sequential passes; it is used for scoring only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vilab.core.params import check_dims
from vilab.flows.base import Flow
from vilab.flows.made import MADE


class IAF(Flow):
    """One IAF step.

    Args:
        dim: dimension D of z.
        hidden: MADE hidden widths.
        context_dim: size of the context h (None for a free flow).
        reverse: use the reversed autoregressive order (alternate it between steps).
        gate_bias: initial bias of s.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        reverse: bool = False,
        gate_bias: float = 2.0,
    ) -> None:
        super().__init__()
        check_dims(dim)
        self.dim = dim
        order = list(range(dim))[::-1] if reverse else list(range(dim))
        self.made = MADE(dim, hidden, n_out=2, context_dim=context_dim, order=order)
        with torch.no_grad():
            self.made.out.weight.mul_(0.1)
            self.made.out.bias.zero_()
            self.made.out.bias[dim:].fill_(gate_bias)
        self.order = order

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        ms = self.made(z, context)
        m, s = ms[..., 0, :], ms[..., 1, :]
        gate = torch.sigmoid(s)
        z = gate * z + (1.0 - gate) * m
        if trace is not None:
            trace.append(z)
        return z, F.logsigmoid(s).sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(z)
        for i in self.order:  # position i is determined once all earlier ones are
            ms = self.made(x, context)
            m, s = ms[..., 0, i], ms[..., 1, i]
            x = x.clone()
            gate = torch.sigmoid(s)
            x[..., i] = (z[..., i] - (1.0 - gate) * m) / gate
        ms = self.made(x, context)
        return x, -F.logsigmoid(ms[..., 1, :]).sum(-1)
