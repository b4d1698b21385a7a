"""The flow contract: bijections in the sampling direction (noise -> sample).

``forward(z, context=None, trace=None) -> (z', logdet)`` with

    z' = f(z),   logdet = log |det ∂f/∂z|,   log q(z') = log q(z) − logdet.

Shapes: ``z`` is ``(..., D)``; ``logdet`` is ``z.shape[:-1]``. With an amortized flow the
context is ``(B, C)`` and ``z`` is ``(S, B, D)``. Planar, radial and Sylvester flows have no
usable inverse, so a sample is scored on the way out (DESIGN.md, separations 2 and 3);
``inverse`` raises ``NotImplementedError`` unless a flow has one.

A flow module may hold several layers of one kind (``num_layers``) whose parameters are
stacked on a leading axis: the parameter maths runs once for all of them and the layer
loop stays tight. ``trace``, when a list, receives ``z`` after every layer (for plots).
"""

from __future__ import annotations

from torch import Tensor, nn


class Flow(nn.Module):
    """Base class of every flow. Subclasses set ``dim`` and ``num_layers``."""

    dim: int
    num_layers: int = 1

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = f⁻¹(z)`` and ``log |det ∂f⁻¹/∂z|``; only where the flow has an inverse."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable inverse")

    @property
    def has_inverse(self) -> bool:
        return type(self).inverse is not Flow.inverse
