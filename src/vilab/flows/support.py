"""The bijection from R^D onto a target's support, as a flow (the last flow of a family).

A target with a bounded support (log p̃ = −inf outside) cannot be fitted by a flow on all
of R^D: q puts mass where p is zero and KL(q‖p) = ∞. As in Stan (reference manual,
"Constraint transforms") and Pyro (``biject_to``), q is built unconstrained and followed
by a fixed bijection T onto the support, coordinate by coordinate: the map and its
log-derivative are :func:`vilab.core.support.to_support` (its docstring has the table),
so log q(z) = log q_x(x) − Σ_i log |dz_i/dx_i| (the flow contract, :mod:`vilab.flows.base`).
Every map is increasing. The inverses are

    (lo, ∞)     x = s + log(−expm1(−s)),  s = z − lo      (x = log s for exp)
    (−∞, hi)    x = −(s + log(−expm1(−s))),  s = hi − z
    (lo, hi)    x = log(z − lo) − log(hi − z),
                log |dx/dz| = log(hi − lo) − log(z − lo) − log(hi − z);

outside the open support (and on its boundary) ``inverse`` returns x = 0 with
log |dx/dz| = −inf, so that ``FlowFamily.log_prob`` is −inf there (q has no mass). The
forward map keeps its values strictly inside the support (clamped to the neighbouring
floats of the bounds, value only); the inverse of such a clamped value is not the original
x far in the tails; nothing else changes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vilab.core.support import (
    Bounds,
    BoundTensors,
    Lower,
    describe_support,
    log_sigmoid,
    softplus_inv,
    to_support,
)
from vilab.flows.base import Flow


class SupportTransform(Flow):
    """The fixed bijection T from R^D onto a box-shaped support (see the module docstring).

    Args:
        bounds: one ``(lo, hi)`` per coordinate (``±inf`` for no bound), e.g. from
            :func:`parse_support`.
        lower: the map of a one-sided bound, ``"softplus"`` (default: z grows like x, so
            a flow's Gaussian tails stay light and nothing overflows) or ``"exp"``
            (Stan's and Pyro's log transform: lognormal tails).

    No parameters; the context of an amortized family is ignored (T is the same for
    every context). Shapes: ``z (..., D) -> (z' (..., D), logdet (...))``.
    """

    def __init__(self, bounds: Bounds, lower: Lower = "softplus") -> None:
        super().__init__()
        if lower not in ("softplus", "exp"):
            raise ValueError(f"lower must be 'softplus' or 'exp', got {lower!r}")
        if not isinstance(bounds, tuple):
            raise TypeError(
                f"bounds must be a support in normal form (vilab.core.support.parse_support"
                f"), got {bounds!r}"
            )
        self.dim, self.bounds, self.lower = len(bounds), bounds, lower
        b = BoundTensors.of(bounds)
        for name, value in b._asdict().items():
            self.register_buffer(name, value, persistent=False)

    def extra_repr(self) -> str:
        return f"{describe_support(self.bounds)}, lower={self.lower!r}"

    def _bounds(self, like: Tensor) -> BoundTensors:
        return BoundTensors(
            self.lo.to(like.dtype), self.hi.to(like.dtype), self.has_lo, self.has_hi
        )

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        out, ld = to_support(z, self._bounds(z), self.lower)
        if trace is not None:
            trace.append(out)
        return out, ld.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = T⁻¹(z)`` and ``log |det ∂T⁻¹/∂z|``; x = 0 and −inf outside the open support
        (NaN stays NaN)."""
        b = self._bounds(z)
        lo, hi = b.lo, b.hi
        inside = (~b.has_lo | (z > lo)) & (~b.has_hi | (z < hi))
        # evaluate every branch at a point inside, so no branch makes an inf or a NaN
        # (in the value or in the gradient through torch.where)
        mid = torch.where(b.has_lo, lo + 1.0, hi - 1.0)
        mid = torch.where(b.is_interval, 0.5 * (lo + hi), mid)
        zs = torch.where(inside, z, mid)
        s_lo = torch.where(b.has_lo, zs - lo, 1.0)  # > 0 where it is used
        s_hi = torch.where(b.has_hi, hi - zs, 1.0)
        if self.lower == "exp":
            x_lo, x_hi = s_lo.log(), -s_hi.log()
            ld_lo, ld_hi = -x_lo, x_hi  # log |dx/dz| = −log g'(x)
        else:
            x_lo, x_hi = softplus_inv(s_lo), -softplus_inv(s_hi)
            ld_lo, ld_hi = -log_sigmoid(x_lo), -log_sigmoid(-x_hi)
        width = torch.where(b.is_interval, hi - lo, 1.0)
        x_int = s_lo.log() - s_hi.log()
        ld_int = width.log() - s_lo.log() - s_hi.log()
        x = torch.where(b.is_lower, x_lo, zs)
        x = torch.where(b.is_upper, x_hi, x)
        x = torch.where(b.is_interval, x_int, x)
        ld = torch.where(b.is_lower, ld_lo, 0.0)
        ld = torch.where(b.is_upper, ld_hi, ld)
        ld = torch.where(b.is_interval, ld_int, ld)
        ld = torch.where(inside, ld, -math.inf)
        ld = torch.where(torch.isnan(z), math.nan, ld)
        x = torch.where(inside, x, 0.0)
        x = torch.where(torch.isnan(z), z, x)
        return x, ld.sum(-1)


def support_flow(bounds: Bounds | None, lower: Lower = "softplus") -> SupportTransform | None:
    """The :class:`SupportTransform` onto ``bounds`` (a normal form, e.g. a target's
    ``support``), or None for all of R^D."""
    return None if bounds is None else SupportTransform(bounds, lower)
