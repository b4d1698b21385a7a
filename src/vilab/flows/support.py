"""Bijections from R^D onto a target's support, as flows (the last flow of a family).

A target with a bounded support (log p̃ = −inf outside) cannot be fitted by a flow on all
of R^D: q puts mass where p is zero and KL(q‖p) = ∞. As in Stan (reference manual,
"Constraint transforms") and Pyro (``biject_to``), q is built unconstrained and followed
by a fixed bijection T onto the support, coordinate by coordinate:

    real          z = x                        log |dz/dx| = 0
    (lo, ∞)       z = lo + softplus(x)         log |dz/dx| = log σ(x)
                  (or z = lo + exp(x),          log |dz/dx| = x)
    (−∞, hi)      z = hi − softplus(−x)        log |dz/dx| = log σ(−x)
    (lo, hi)      z = lo + (hi − lo) σ(x)      log |dz/dx| = log(hi − lo) + log σ(x) + log σ(−x)

so log q(z) = log q_x(x) − Σ_i log |dz_i/dx_i| (the flow contract, :mod:`vilab.flows.base`).
Every map is increasing. The inverses are

    (lo, ∞)     x = s + log(−expm1(−s)),  s = z − lo      (x = log s for exp)
    (−∞, hi)    x = −(s + log(−expm1(−s))),  s = hi − z
    (lo, hi)    x = log(z − lo) − log(hi − z),
                log |dx/dz| = log(hi − lo) − log(z − lo) − log(hi − z);

outside the open support (and on its boundary) ``inverse`` returns x = 0 with
log |dx/dz| = −inf, so that ``FlowFamily.log_prob`` is −inf there (q has no mass).

Finite precision: σ(x) rounds to 1 for x ≳ 17 in float32 and lo + softplus(x) rounds to lo
when softplus(x) < ulp(lo); a sample on the boundary, where a target is often −inf, would
then look like a fault of the target. The forward map therefore keeps its values strictly
inside, clamped to the neighbouring floats of the bounds (value only; the gradient and the
log-determinant stay those of the unclamped map). The inverse of such a clamped value is
not the original x far in the tails; nothing else changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vilab.flows.base import Flow

#: A support in normal form: one ``(lo, hi)`` per coordinate, ``±inf`` for no bound.
Bounds = tuple[tuple[float, float], ...]

#: The support names accepted by :func:`parse_support`.
SUPPORT_NAMES = ("real", "positive")


def parse_support(support: object, dim: int) -> Bounds | None:
    """A support spec in normal form, or None where every coordinate is unbounded.

    Args:
        support: None or ``"real"`` (all of R^D), ``"positive"`` ((0, ∞)^D), or one
            ``(lo, hi)`` pair per coordinate with None (or ∓inf) for no bound, e.g.
            ``[[0, None], [None, None], [-1, 1]]``.
        dim: D.

    Raises:
        ValueError: a spec of another form, a pair with lo ≥ hi or a NaN, or a number of
            pairs other than ``dim``; the message names the bad value.
    """
    if support is None or support == "real":
        return None
    if support == "positive":
        return ((0.0, math.inf),) * dim
    if isinstance(support, str) or not isinstance(support, Sequence):
        raise ValueError(
            f"support must be None, 'real', 'positive' or one [lo, hi] pair per coordinate "
            f"(null for no bound), got {support!r}"
        )
    if len(support) != dim:
        raise ValueError(
            f"support has {len(support)} [lo, hi] pair(s) but the target has dim {dim}: "
            f"give one pair per coordinate, got {support!r}"
        )
    bounds = []
    for i, pair in enumerate(support):
        lo, hi = _pair(pair, i)
        bounds.append((lo, hi))
    if all(lo == -math.inf and hi == math.inf for lo, hi in bounds):
        return None
    return tuple(bounds)


def _pair(pair: object, i: int) -> tuple[float, float]:
    bad = ValueError(
        f"support[{i}] must be a pair [lo, hi] of numbers or null (no bound) with lo < hi, "
        f"got {pair!r}"
    )
    if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise bad
    try:
        lo = -math.inf if pair[0] is None else float(pair[0])
        hi = math.inf if pair[1] is None else float(pair[1])
    except (TypeError, ValueError):
        raise bad from None
    if math.isnan(lo) or math.isnan(hi) or lo == math.inf or hi == -math.inf or not lo < hi:
        raise bad
    return lo, hi


def describe_support(bounds: Bounds | None) -> str:
    """``"(0, ∞) × (−∞, ∞)"``-style text for messages."""
    if bounds is None:
        return "all of R^D"

    def num(v: float) -> str:
        return "∞" if v == math.inf else "−∞" if v == -math.inf else f"{v:g}"

    return " × ".join(f"({num(lo)}, {num(hi)})" for lo, hi in bounds)


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x); F.softplus's default switch to x above 20 is 2e-9 off in float64."""
    return F.softplus(x, threshold=40.0)


def _log_sigmoid(x: Tensor) -> Tensor:
    """log σ(x) = −softplus(−x), with :func:`_softplus`'s float64-exact threshold."""
    return -_softplus(-x)


def _softplus_inv(s: Tensor) -> Tensor:
    """x with softplus(x) = s > 0: s + log(1 − e^{−s}), stable for small and large s."""
    return s + torch.log(-torch.expm1(-s))


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

    def __init__(self, bounds: Bounds, lower: Literal["softplus", "exp"] = "softplus") -> None:
        super().__init__()
        if lower not in ("softplus", "exp"):
            raise ValueError(f"lower must be 'softplus' or 'exp', got {lower!r}")
        bounds = parse_support(list(bounds), len(bounds)) or tuple(
            (-math.inf, math.inf) for _ in bounds
        )
        self.dim, self.bounds, self.lower = len(bounds), bounds, lower
        lo = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
        hi = torch.tensor([b[1] for b in bounds], dtype=torch.float64)
        has_lo, has_hi = torch.isfinite(lo), torch.isfinite(hi)
        self.register_buffer("lo", torch.where(has_lo, lo, 0.0), persistent=False)
        self.register_buffer("hi", torch.where(has_hi, hi, 0.0), persistent=False)
        self.register_buffer("is_lower", has_lo & ~has_hi, persistent=False)
        self.register_buffer("is_upper", ~has_lo & has_hi, persistent=False)
        self.register_buffer("is_interval", has_lo & has_hi, persistent=False)
        self.register_buffer("has_lo", has_lo, persistent=False)
        self.register_buffer("has_hi", has_hi, persistent=False)

    def extra_repr(self) -> str:
        return f"{describe_support(self.bounds)}, lower={self.lower!r}"

    def _one_sided(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(x), log g'(x))`` of the map onto (0, ∞)."""
        if self.lower == "exp":
            return x.exp(), x
        return _softplus(x), _log_sigmoid(x)

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        lo, hi = self.lo.to(z.dtype), self.hi.to(z.dtype)
        up, ld_up = self._one_sided(z)  # lower bound: lo + g(x)
        down, ld_down = self._one_sided(-z)  # upper bound: hi − g(−x)
        width = torch.where(self.is_interval, hi - lo, 1.0)
        out = torch.where(self.is_lower, lo + up, z)
        out = torch.where(self.is_upper, hi - down, out)
        out = torch.where(self.is_interval, lo + width * torch.sigmoid(z), out)
        ld = torch.where(self.is_lower, ld_up, 0.0)
        ld = torch.where(self.is_upper, ld_down, ld)
        ld_interval = width.log() + _log_sigmoid(z) + _log_sigmoid(-z)
        ld = torch.where(self.is_interval, ld_interval, ld)
        # strictly inside the support in this dtype (value only, see the module docstring)
        inf = torch.tensor(math.inf, dtype=z.dtype, device=z.device)
        floor = torch.where(self.has_lo, torch.nextafter(lo, inf), -inf)
        ceil = torch.where(self.has_hi, torch.nextafter(hi, -inf), inf)
        inside = torch.minimum(torch.maximum(out, floor), ceil)
        out = torch.where(inside != out, out + (inside - out).detach(), out)
        if trace is not None:
            trace.append(out)
        return out, ld.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = T⁻¹(z)`` and ``log |det ∂T⁻¹/∂z|``; x = 0 and −inf outside the open support
        (NaN stays NaN)."""
        lo, hi = self.lo.to(z.dtype), self.hi.to(z.dtype)
        inside = (~self.has_lo | (z > lo)) & (~self.has_hi | (z < hi))
        # evaluate every branch at a point inside, so no branch makes an inf or a NaN
        # (in the value or in the gradient through torch.where)
        mid = torch.where(self.has_lo, lo + 1.0, hi - 1.0)
        mid = torch.where(self.is_interval, 0.5 * (lo + hi), mid)
        zs = torch.where(inside, z, mid)
        s_lo = torch.where(self.has_lo, zs - lo, 1.0)  # > 0 where it is used
        s_hi = torch.where(self.has_hi, hi - zs, 1.0)
        if self.lower == "exp":
            x_lo, x_hi = s_lo.log(), -s_hi.log()
            ld_lo, ld_hi = -x_lo, x_hi  # log |dx/dz| = −log g'(x)
        else:
            x_lo, x_hi = _softplus_inv(s_lo), -_softplus_inv(s_hi)
            ld_lo, ld_hi = -_log_sigmoid(x_lo), -_log_sigmoid(-x_hi)
        width = torch.where(self.is_interval, hi - lo, 1.0)
        x_int = s_lo.log() - s_hi.log()
        ld_int = width.log() - s_lo.log() - s_hi.log()
        x = torch.where(self.is_lower, x_lo, zs)
        x = torch.where(self.is_upper, x_hi, x)
        x = torch.where(self.is_interval, x_int, x)
        ld = torch.where(self.is_lower, ld_lo, 0.0)
        ld = torch.where(self.is_upper, ld_hi, ld)
        ld = torch.where(self.is_interval, ld_int, ld)
        ld = torch.where(inside, ld, -math.inf)
        ld = torch.where(torch.isnan(z), math.nan, ld)
        x = torch.where(inside, x, 0.0)
        x = torch.where(torch.isnan(z), z, x)
        return x, ld.sum(-1)


def support_flow(
    support: object, dim: int, lower: Literal["softplus", "exp"] = "softplus"
) -> SupportTransform | None:
    """The :class:`SupportTransform` onto ``support`` (any form :func:`parse_support`
    accepts), or None for all of R^D."""
    bounds = parse_support(support, dim)
    return None if bounds is None else SupportTransform(bounds, lower)
