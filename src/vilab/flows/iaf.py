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

import math
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


class AffineAutoregressive(Autoregressive):
    """The affine autoregressive transform of MAF (Papamakarios et al., NeurIPS 2017) and
    zuko's ``MAF``, in IAF's direction (:class:`~vilab.flows.autoregressive.Autoregressive`:
    drawing and scoring a sample is one MADE pass):

        (m, s) = MADE(z [, h]),   a = clip(s),
        f(z) = exp(a) ⊙ z + m,   log |det ∂f/∂z| = Σᵢ aᵢ,

    the log-scale a softly clipped into (−L₋, L₊): a = s / (1 + s / L₊) for s ≥ 0 and
    s / (1 − s / L₋) below (slope 1 at 0). A layer may narrow a coordinate by up to
    L₋ = log 1000 (zuko's bound) and widen it by up to L₊ = log 4 (IAF's gated σ ∈ (0, 1)
    only narrows). The bound on widening keeps a β-annealed fit (:mod:`vilab.estimators.
    elbo`) from following the flat tempered target out to points where a Stan model's
    density overflows: with L₊ = log 1000, three layers reached z ≈ 4000 within 25 steps on
    eight schools; the mean-field base carries the overall scale. The MADE uses ReLU, as
    zuko's does; it starts near the identity (a ≈ 0, m ≈ 0). The inverse is
    x = (y − m) e^{−a}, in D sequential passes (scoring only).

    Args:
        dim, hidden, context_dim, reverse: see :class:`~vilab.flows.autoregressive.Autoregressive`.
    """

    n_params = 2
    activation = "relu"
    #: L₋ and L₊: the log-scale a lies in (−L₋, L₊)
    max_narrowing = math.log(1000.0)
    max_widening = math.log(4.0)

    def transform(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        m, s = theta.unbind(-1)
        bound = torch.where(s >= 0, self.max_widening, self.max_narrowing)
        a = s / (1.0 + s.abs() / bound)
        if inverse:
            return (x - m) * torch.exp(-a), -a
        return x * torch.exp(a) + m, a
