"""Inverse autoregressive flow with the gated update (Kingma et al., NeurIPS 2016), the
gated affine map as the element-wise transform of :class:`~vilab.flows.autoregressive.
Autoregressive`:

    (m, s) = MADE(z [, h]),   σ = sigmoid(s),
    f(z) = σ ⊙ z + (1 − σ) ⊙ m,
    log |det ∂f/∂z| = Σᵢ log σᵢ,

because ∂fᵢ/∂zⱼ = 0 for j after i in the order and the diagonal is σᵢ; the inverse is
x = (y − (1 − σ) ⊙ m) / σ, in D sequential passes (used for scoring only). The bias of s
starts at +2 (σ ≈ 0.88): each step begins close to the identity. Free or amortized is the
context h (the encoder's extra output), which enters the MADE's first hidden layer only:
IAF's own weights are always free parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vilab.flows.autoregressive import Autoregressive


class IAF(Autoregressive):
    """One IAF step: θ = (m, s) per coordinate, from a MADE with ELU.

    Args:
        dim: dimension D of z.
        hidden: MADE hidden widths.
        context_dim: size of the context h (None for a free flow).
        reverse: use the reversed autoregressive order (alternate it between steps).
        gate_bias: initial bias of s.
    """

    n_params = 2
    context_to_output = False  # Kingma et al.'s IAF: the context reaches the MADE only

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        reverse: bool = False,
        gate_bias: float = 2.0,
    ) -> None:
        super().__init__(dim, hidden, context_dim, reverse)
        with torch.no_grad():
            self.made.out.bias[dim:].fill_(gate_bias)  # the s half (MADE's (n_params, D))

    def transform(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        m, s = theta.unbind(-1)
        gate = torch.sigmoid(s)
        if inverse:
            return (x - (1.0 - gate) * m) / gate, -F.logsigmoid(s)
        return gate * x + (1.0 - gate) * m, F.logsigmoid(s)
