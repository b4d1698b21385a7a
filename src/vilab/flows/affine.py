"""A fixed affine map as the last flow before a target's own coordinates: the
preconditioner a pilot chooses (:mod:`vilab.train.pilot`).

    z = m + L u,   log |det ∂z/∂u| = Σᵢ log Lᵢᵢ,   u = L⁻¹ (z − m),

with ``L`` lower triangular with a positive diagonal. A family ``q_u`` followed by it has
log q(z) = log q_u(u) − Σᵢ log Lᵢᵢ (the flow contract, :mod:`vilab.flows.base`): fitting
q_u to p̃(m + L u) |L| is fitting q to p̃, and every bound, KL and draw is unchanged in
meaning. With m and L from a Gaussian approximation N(m, L Lᵀ) of p, the flows before it
work in coordinates where p is close to N(0, I): scales of 10⁻⁵ and correlations near ±1
(a regression on unstandardized regressors) are taken out before the first step, so Adam's
steps of a fixed size mean the same thing in every direction.

``m`` and ``L`` are buffers, not parameters: the optimizer never moves them, a checkpoint
holds them, and ``ready`` (a buffer too) says whether a pilot has set them (at
construction m = 0, L = I: the identity).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vilab.flows.base import Flow


class FixedAffine(Flow):
    """``z = m + L u`` with buffers ``shift`` m ``(D,)`` and ``scale_tril`` L ``(D, D)``.

    Shapes: ``u (..., D) -> (z (..., D), logdet (...))``; the context of an amortized
    family is ignored (the map is the same for every context).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale_tril", torch.eye(dim))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def set_(self, shift: Tensor, scale_tril: Tensor) -> None:
        """Set m and L (L lower triangular with a positive diagonal) and mark the map
        ``ready``.

        Raises:
            ValueError: shapes other than ``(D,)`` and ``(D, D)``, non-finite values, or an
                L that is not lower triangular with a positive diagonal.
        """
        d = self.dim
        if tuple(shift.shape) != (d,) or tuple(scale_tril.shape) != (d, d):
            raise ValueError(
                f"FixedAffine of dim {d} needs shift ({d},) and scale_tril ({d}, {d}), got "
                f"{tuple(shift.shape)} and {tuple(scale_tril.shape)}"
            )
        ok = bool(torch.isfinite(shift).all() and torch.isfinite(scale_tril).all())
        ok = ok and bool((scale_tril.diagonal() > 0).all())
        if not ok or not torch.equal(scale_tril, scale_tril.tril()):
            raise ValueError(
                "FixedAffine needs a finite shift and a lower-triangular scale_tril with a "
                "positive diagonal"
            )
        with torch.no_grad():
            self.shift.copy_(shift)
            self.scale_tril.copy_(scale_tril)
            self.ready.fill_(True)

    @property
    def awaits_pilot(self) -> bool:  # type: ignore[override]
        return not bool(self.ready)

    def _log_det(self, like: Tensor) -> Tensor:
        return self.scale_tril.diagonal().log().sum().to(like.dtype)

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        scale = self.scale_tril.to(z.dtype)
        out = self.shift.to(z.dtype) + z @ scale.T
        if trace is not None:
            trace.append(out)
        return out, self._log_det(z).expand(z.shape[:-1])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        scale = self.scale_tril.to(z.dtype)
        centred = (z - self.shift.to(z.dtype)).reshape(-1, self.dim)
        u = torch.linalg.solve_triangular(scale, centred.T, upper=False).T
        return u.reshape(z.shape), (-self._log_det(z)).expand(z.shape[:-1])
