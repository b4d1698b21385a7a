"""A support in its normal form, and the map from R^D onto it, as tensor arithmetic.

A target states where its density is positive (``target.support``); the spec a user writes
(``"positive"``, one ``[lo, hi]`` per coordinate with null for no bound, …) is parsed once,
by :func:`parse_support`, into :data:`Bounds`, and trusted from then on by the targets (to
probe inside the support) and by the flows (:class:`vilab.flows.support.SupportTransform`,
the last flow of a family fitted to it). The map, coordinate by coordinate (Stan reference
manual, "Constraint transforms"; Pyro's ``biject_to``):

    real          z = x                        log |dz/dx| = 0
    (lo, ∞)       z = lo + softplus(x)         log |dz/dx| = log σ(x)
                  (or z = lo + exp(x),          log |dz/dx| = x)
    (−∞, hi)      z = hi − softplus(−x)        log |dz/dx| = log σ(−x)
    (lo, hi)      z = lo + (hi − lo) σ(x)      log |dz/dx| = log(hi − lo) + log σ(x) + log σ(−x)

Finite precision: σ(x) rounds to 1 for x ≳ 17 in float32 and lo + softplus(x) rounds to lo
when softplus(x) < ulp(lo); a sample on the boundary, where a target is often −inf, would
then look like a fault of the target. :func:`to_support` therefore keeps its values strictly
inside, clamped to the neighbouring floats of the bounds (value only; the gradient and the
log-determinant stay those of the unclamped map).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

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


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x); F.softplus's default switch to x above 20 is 2e-9 off in float64."""
    return F.softplus(x, threshold=40.0)


def log_sigmoid(x: Tensor) -> Tensor:
    """log σ(x) = −softplus(−x), with :func:`softplus`'s float64-exact threshold."""
    return -softplus(-x)


def softplus_inv(s: Tensor) -> Tensor:
    """x with softplus(x) = s > 0: s + log(1 − e^{−s}), stable for small and large s."""
    return s + torch.log(-torch.expm1(-s))


#: How a one-sided bound is reached: softplus (z grows like x) or exp (Stan's and Pyro's).
Lower = Literal["softplus", "exp"]


class BoundTensors(NamedTuple):
    """:data:`Bounds` as tensors of shape ``(D,)``: the bounds (0 where there is none) and
    which exist."""

    lo: Tensor
    hi: Tensor
    has_lo: Tensor
    has_hi: Tensor

    @staticmethod
    def of(bounds: Bounds, dtype: torch.dtype = torch.float64) -> BoundTensors:
        """The tensors of ``bounds`` (a normal form, trusted), the bounds in ``dtype``."""
        lo = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
        hi = torch.tensor([b[1] for b in bounds], dtype=torch.float64)
        has_lo, has_hi = torch.isfinite(lo), torch.isfinite(hi)
        lo, hi = torch.where(has_lo, lo, 0.0).to(dtype), torch.where(has_hi, hi, 0.0).to(dtype)
        return BoundTensors(lo, hi, has_lo, has_hi)

    @property
    def is_lower(self) -> Tensor:
        """Coordinates bounded below only."""
        return self.has_lo & ~self.has_hi

    @property
    def is_upper(self) -> Tensor:
        """Coordinates bounded above only."""
        return ~self.has_lo & self.has_hi

    @property
    def is_interval(self) -> Tensor:
        """Coordinates bounded on both sides."""
        return self.has_lo & self.has_hi


def one_sided(x: Tensor, lower: Lower) -> tuple[Tensor, Tensor]:
    """``(g(x), log g'(x))`` of the increasing map g of R onto (0, ∞)."""
    if lower == "exp":
        return x.exp(), x
    return softplus(x), log_sigmoid(x)


def to_support(x: Tensor, b: BoundTensors, lower: Lower = "softplus") -> tuple[Tensor, Tensor]:
    """``z = T(x)`` onto the support and ``log |dz_i/dx_i|`` per coordinate (the module
    docstring's table), z kept strictly inside. Shapes: ``x (..., D) -> ((..., D), (..., D))``;
    ``b``'s tensors in x's dtype and on its device."""
    lo, hi = b.lo, b.hi
    is_interval, is_lower, is_upper = b.is_interval, b.is_lower, b.is_upper
    up, ld_up = one_sided(x, lower)  # lower bound: lo + g(x)
    down, ld_down = one_sided(-x, lower)  # upper bound: hi − g(−x)
    width = torch.where(is_interval, hi - lo, 1.0)
    out = torch.where(is_lower, lo + up, x)
    out = torch.where(is_upper, hi - down, out)
    out = torch.where(is_interval, lo + width * torch.sigmoid(x), out)
    ld = torch.where(is_lower, ld_up, 0.0)
    ld = torch.where(is_upper, ld_down, ld)
    ld = torch.where(is_interval, width.log() + log_sigmoid(x) + log_sigmoid(-x), ld)
    # strictly inside the support in this dtype (value only, see the module docstring)
    inf = torch.tensor(math.inf, dtype=x.dtype, device=x.device)
    floor = torch.where(b.has_lo, torch.nextafter(lo, inf), -inf)
    ceil = torch.where(b.has_hi, torch.nextafter(hi, -inf), inf)
    inside = torch.minimum(torch.maximum(out, floor), ceil)
    return torch.where(inside != out, out + (inside - out).detach(), out), ld
