"""Autoregressive flows in IAF's direction (Kingma et al., "Improving Variational Inference
with Inverse Autoregressive Flow", NeurIPS 2016): an elementwise bijection g whose
parameters for coordinate i come from a MADE (Germain et al. 2015) on the coordinates
before i in an order,

    θ = MADE(z [, h]) ∈ R^{D × n_params},   z'_i = g(z_i; θ_i(z_{<i} [, h])),
    log |det ∂z'/∂z| = Σ_i log g'(z_i; θ_i),

the Jacobian being triangular in the MADE's order with diagonal g'(z_i; θ_i). Shapes:
``z`` is ``(..., D)`` (``(S, B, D)`` with a context ``h`` of shape ``(B, C)``), θ is
``(..., D, n_params)``, the log-determinant ``z.shape[:-1]``.

Forward (drawing and scoring a sample, what training needs) is one MADE pass. The inverse
takes D passes from x = 0: pass p recomputes θ at the current x, whose first p − 1
coordinates in the order are exact, which fixes the p-th (θ_i depends on x_{<i} only);
the last pass gives every coordinate and the log-determinant exactly. MAF's direction
would make training pay the D passes instead.

The element-wise transforms g: IAF's gated affine map (:class:`~vilab.flows.iaf.IAF`), the
rational-quadratic spline (:class:`~vilab.flows.spline.SplineAutoregressive`) and the deep
sigmoidal transform (:class:`~vilab.flows.naf.NeuralAutoregressive`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vilab.core.params import check_dims
from vilab.flows.base import Flow
from vilab.flows.made import MADE


class Autoregressive(Flow):
    """An elementwise bijection ``g`` whose parameters come from a MADE, in IAF's direction
    (see the module docstring for the equations and shapes).

    The context h enters the MADE's first hidden layer, as in IAF. With
    ``context_to_output`` (the default) it also enters the output through a bias-free
    linear map (zero at first): the first coordinate in the order sees no hidden unit, so
    without it its transform could not depend on the context. The MADE's output layer
    starts at a tenth of its default weights and a zero bias, near g(·; 0), the identity
    for vilab's spline and sigmoidal transforms.

    Subclasses set ``n_params`` before calling ``__init__`` and implement
    :meth:`transform`; ``activation`` picks the MADE's (ELU here, Kingma et al.'s).

    Args:
        dim: D.
        hidden: MADE hidden widths.
        context_dim: size of the context h (None for a free flow).
        reverse: reversed autoregressive order (alternate it between layers).
    """

    n_params: int
    #: The MADE's activation (see :class:`~vilab.flows.made.MADE`).
    activation = "elu"
    #: Whether an amortized flow also maps the context straight to θ (``context_out``).
    context_to_output = True

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        reverse: bool = False,
    ) -> None:
        super().__init__()
        check_dims(dim)
        self.dim, p = dim, self.n_params
        self.order = list(range(dim))[::-1] if reverse else list(range(dim))
        self.made = MADE(dim, hidden, p, context_dim, order=self.order, activation=self.activation)
        with torch.no_grad():
            self.made.out.weight.mul_(0.1)
            self.made.out.bias.zero_()
        self.context_out = None
        if context_dim is not None and self.context_to_output:
            self.context_out = nn.Linear(context_dim, dim * p, bias=False)
            nn.init.zeros_(self.context_out.weight)

    def theta(self, z: Tensor, context: Tensor | None) -> Tensor:
        """Parameters ``(..., D, n_params)`` of every coordinate's transform at ``z``."""
        raw = self.made(z, context)  # (..., n_params, D)
        if self.context_out is not None:
            raw = raw + self.context_out(context).unflatten(-1, (self.n_params, self.dim))
        return raw.transpose(-1, -2)

    def transform(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """``g(x; θ)`` (or ``g⁻¹``) and the log-derivative of the map applied, elementwise:
        ``x`` is ``(..., D)``, ``θ`` is ``(..., D, n_params)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        out, logdet = self.transform(z, self.theta(z, context), inverse=False)
        if trace is not None:
            trace.append(out)
        return out, logdet.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(z)
        for _ in range(self.dim):  # after pass p the first p coordinates in the order are exact
            x, logdet = self.transform(z, self.theta(x, context), inverse=True)
        return x, logdet.sum(-1)
