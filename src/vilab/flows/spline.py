"""Rational-quadratic neural spline flows (Durkan et al., "Neural Spline Flows", NeurIPS 2019).

The transform, elementwise: a monotone rational-quadratic (RQ) spline on [−B, B] with K
bins, the identity outside (linear tails). Knots (x_k, y_k), k = 0..K, with
x_0 = y_0 = −B, x_K = y_K = B, and derivatives d_k > 0 with d_0 = d_K = 1 (so the spline
meets the identity tails with a continuous derivative). In bin k, with w = x_{k+1} − x_k,
h = y_{k+1} − y_k, s = h / w, ξ = (x − x_k) / w ∈ [0, 1] (Durkan et al., section 3.1):

    y  = y_k + h [s ξ² + d_k ξ(1−ξ)] / [s + (d_{k+1} + d_k − 2s) ξ(1−ξ)],
    dy/dx = s² [d_{k+1} ξ² + 2s ξ(1−ξ) + d_k (1−ξ)²] / [s + (d_{k+1} + d_k − 2s) ξ(1−ξ)]²,

and the inverse solves a ξ² + b ξ + c = 0 (u = y − y_k, δ = d_{k+1} + d_k − 2s),

    a = h (s − d_k) + u δ,   b = h d_k − u δ,   c = −s u,   ξ = 2c / (−b − √(b² − 4ac)),

the root in [0, 1], in the form without cancellation (their appendix A); the code writes
it as ξ = 2su / (b + √(b² + 4a·su)). Outside [−B, B] the log-derivative is exactly 0.

Parameters: 3K − 1 unconstrained numbers per coordinate, ``[K widths, K heights, K − 1
interior derivatives]``. Widths and heights are a softmax mixed with a minimum bin size,
``2B (m + (1 − K m) softmax)``; derivatives ``m_d + softplus(·)``, shifted so that all-zero
parameters give the identity (uniform bins, d = 1). :func:`spline_knots` turns the
parameters into knots, :func:`rq_spline` applies the spline (forward or inverse) to a batch:
both are vectorized over every leading dimension (the bin of each point by one comparison
with the interior knots and one ``gather``; no loop over dims or bins).

Two flows use it (both free or amortized through a context h, the conditioner's weights
always free):

* :class:`SplineAutoregressive`: θ = MADE(z [, h]), ``3K − 1`` outputs per coordinate, in the
  IAF direction (θ computed from the flow's input, the noise side), so sampling and scoring
  a sample (``rsample_and_log_prob``, what training needs) is one pass; ``log_prob`` of an
  arbitrary z needs D sequential passes (the inverse), which only scoring pays. (MAF's
  direction would make training pay the D passes instead.)
* :class:`SplineCoupling`: half the coordinates splined, θ from an MLP on the other half
  (:class:`~vilab.flows.coupling.Coupling`); forward and inverse one pass each.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from vilab.flows.autoregressive import Autoregressive
from vilab.flows.coupling import Coupling

#: default minimum bin width and height, as a fraction of 2B, and minimum knot derivative
#: (those of nflows and of Durkan et al.'s code)
MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3


def check_spline_options(bins: int, tail_bound: float, min_bin: float = MIN_BIN) -> None:
    """Refuse ``bins < 2``, a non-positive or non-finite ``tail_bound``, and a minimum bin
    size that leaves no room (``bins · min_bin ≥ 1``), naming the value."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer ≥ 2, got {bins!r}")
    if isinstance(tail_bound, bool) or not (
        isinstance(tail_bound, int | float) and math.isfinite(tail_bound) and tail_bound > 0
    ):
        raise ValueError(f"tail_bound must be a finite number > 0, got {tail_bound!r}")
    if not 0 <= min_bin * bins < 1:
        raise ValueError(f"min_bin · bins must be in [0, 1), got {min_bin} · {bins}")


def spline_params(bins: int) -> int:
    """Unconstrained parameters per coordinate of a K-bin spline: ``3K − 1``."""
    return 3 * bins - 1


def spline_knots(
    theta: Tensor,
    bound: float,
    min_bin: float = MIN_BIN,
    min_derivative: float = MIN_DERIVATIVE,
) -> Tensor:
    """Knots of RQ splines from unconstrained parameters.

    Args:
        theta: ``(..., 3K − 1)``: K widths, K heights, K − 1 interior derivatives.
        bound: B; the spline maps [−B, B] onto itself.
        min_bin: minimum bin width and height as a fraction of 2B.
        min_derivative: minimum interior derivative.

    Returns:
        ``(..., 3, K + 1)``: rows x_k, y_k (from −B to B, increasing) and d_k (with
        d_0 = d_K = 1). All-zero ``theta`` gives the identity.
    """
    n = theta.shape[-1]
    bins = (n + 1) // 3
    if n != 3 * bins - 1 or bins < 2:
        raise ValueError(f"theta must have 3K − 1 entries (K ≥ 2 bins) last, got {n}")
    raw_wh, raw_d = theta.split((2 * bins, bins - 1), dim=-1)  # one backward node
    wh = torch.softmax(raw_wh.unflatten(-1, (2, bins)), dim=-1)
    # cumsum(2B(m + (1 − Km) p)) − B = 2B(1 − Km) cumsum(p) + (2Bm k − B): one affine map
    ramp = _ramp(bins, float(bound), float(min_bin), theta.dtype, theta.device)
    xy = torch.add(
        ramp, F.pad(torch.cumsum(wh, dim=-1), (1, 0)), alpha=2.0 * bound * (1.0 - bins * min_bin)
    )
    shift = math.log(math.expm1(1.0 - min_derivative))  # softplus(shift) + m_d = 1
    d = F.pad(F.softplus(raw_d + shift) + min_derivative, (1, 1), value=1.0)
    return torch.cat((xy, d.unsqueeze(-2)), dim=-2)


@functools.lru_cache(maxsize=64)
def _ramp(bins: int, bound: float, min_bin: float, dtype: torch.dtype, device: torch.device):
    """``2B m k − B`` for k = 0..K (a constant, made once per setting; a normal tensor even
    when first asked for under ``torch.inference_mode``)."""
    with torch.inference_mode(False):
        k = torch.arange(bins + 1, dtype=torch.float64)
        return (k * (2.0 * bound * min_bin) - bound).to(dtype=dtype, device=device)


def _bin(v: Tensor, knots: Tensor, row: int) -> Tensor:
    """``(..., 3, 2)``: the knots at both ends of the bin of each ``v`` (searched in knot row
    ``row``: 0 for x, 1 for y); values beyond the ends get the first or last bin."""
    bins = knots.shape[-1] - 1
    inner = knots[..., row, 1:bins]  # (..., K − 1)
    k = (v.unsqueeze(-1) >= inner).sum(-1, keepdim=True)  # (..., 1), in [0, K − 1]
    k = k + torch.arange(2, device=k.device)  # (..., 2): k and k + 1
    return knots.gather(-1, k.unsqueeze(-2).expand(*k.shape[:-1], 3, 2))


def _log_slope(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor, delta: Tensor) -> Tensor:
    """``log dy/dx`` at ξ, with δ = d₀ + d₁ − 2s and τ = ξ(1−ξ):

        dy/dx = s² [d₁ξ² + 2sτ + d₀(1−ξ)²] / (s + δτ)² = [d₀ + (d₁ − d₀)ξ − δτ] (s / (s + δτ))²,

    the bracket rewritten with ξ² = ξ − τ and (1−ξ)² = 1 − ξ − τ (fewer operations; one log).
    """
    dt = delta * (xi * (1.0 - xi))
    ratio = s / (s + dt)
    return torch.log((torch.addcmul(d0, d1 - d0, xi) - dt) * ratio * ratio)


def rq_spline(
    x: Tensor, knots: Tensor, bound: float, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """The RQ spline (or its inverse) and its log-derivative, elementwise.

    Inside [−B, B] the spline of the module docstring; outside the identity (``y = x``,
    log-derivative exactly 0), joined continuously (value and derivative) at ±B: the
    spline runs on x clamped to [−B, B] (so a tail point sits at an end knot) and the
    excess ``x − clamp(x)`` is added back.

    Args:
        x: ``(...)``: points (``y`` points when ``inverse``).
        knots: ``(..., 3, K + 1)`` from :func:`spline_knots`, one spline per point (leading
            dimensions broadcast against ``x``).
        bound: B, as given to :func:`spline_knots`.
        inverse: apply the inverse spline.

    Returns:
        ``(y, log |dy/dx|)``, both shaped like ``x``; with ``inverse``, ``(x, log |dx/dy|)``
        (the negated log-derivative of the forward map at the returned x).
    """
    if knots.shape[:-2] != x.shape:
        knots = knots.expand(*torch.broadcast_shapes(knots.shape[:-2], x.shape), *knots.shape[-2:])
        x = x.expand(knots.shape[:-2])
    # one gather, one unbind: a single backward node each
    x0, x1, y0, y1, d0, d1 = _bin(x, knots, 1 if inverse else 0).flatten(-2).unbind(-1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    delta = torch.add(d0 + d1, s, alpha=-2.0)
    xc = x.clamp(-bound, bound)
    inside = x == xc
    if not inverse:
        xi = ((xc - x0) / w).clamp(0.0, 1.0)
        tau = xi * (1.0 - xi)
        # y = y_k + h [sξ² + d_k τ] / (s + δτ), with sξ² + d_k τ = sξ + (d_k − s) τ
        y = torch.addcdiv(y0, h * torch.addcmul(s * xi, d0 - s, tau), torch.addcmul(s, delta, tau))
        return y + (x - xc), torch.where(inside, _log_slope(xi, s, d0, d1, delta), 0.0)
    # a ξ² + b ξ + c = 0 with c = −su: ξ = 2c / (−b − √(b² − 4ac)) = 2su / (b + √(b² + 4a·su))
    u = xc - y0
    ud = u * delta
    a = torch.addcmul(ud, h, s - d0)
    b = h * d0 - ud
    su = s * u
    disc = torch.addcmul(b * b, a, su, value=4.0).clamp_min(0.0)
    xi = 2.0 * su / (b + torch.sqrt(disc))
    out = torch.addcmul(x0, xi, w)
    return out + (x - xc), torch.where(inside, -_log_slope(xi, s, d0, d1, delta), 0.0)


def rational_quadratic_spline(
    x: Tensor,
    theta: Tensor,
    bound: float = 5.0,
    inverse: bool = False,
    min_bin: float = MIN_BIN,
    min_derivative: float = MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """:func:`rq_spline` of the spline with unconstrained parameters ``theta``
    ``(..., 3K − 1)`` (:func:`spline_knots`): ``(y, log |dy/dx|)`` shaped like ``x``."""
    knots = spline_knots(theta, bound, min_bin, min_derivative)
    return rq_spline(x, knots, bound, inverse)


class _Splined:
    """What both spline flows share: K bins on [−B, B] and the elementwise RQ spline as
    their ``transform`` (the flow base classes call it with the conditioner's θ)."""

    n_params: int
    bins: int
    tail_bound: float

    def _spline_options(self, bins: int, tail_bound: float) -> None:
        """Check and keep K and B, and the 3K − 1 parameters per coordinate they need
        (before the base class builds its conditioner from ``n_params``)."""
        check_spline_options(bins, tail_bound)
        self.n_params = spline_params(bins)
        self.bins, self.tail_bound = bins, float(tail_bound)

    def transform(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return rq_spline(x, spline_knots(theta, self.tail_bound), self.tail_bound, inverse)


class SplineCoupling(_Splined, Coupling):
    """Neural spline coupling layer (Durkan et al. 2019, section 3.2): the transformed part
    goes through RQ splines whose 3K − 1 parameters per coordinate come from an MLP on the
    kept part (and the context h):

        y_b = RQS(x_b; θ),   θ = NN(x_a [, h]),   log |det ∂y/∂x| = Σ_b log RQS'(x_b; θ).

    Args:
        dim, hidden, context_dim, flip: see :class:`~vilab.flows.coupling.Coupling`.
        bins: K ≥ 2.
        tail_bound: B > 0; the identity outside [−B, B].
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        flip: bool = False,
        bins: int = 8,
        tail_bound: float = 5.0,
    ) -> None:
        self._spline_options(bins, tail_bound)
        super().__init__(dim, hidden, context_dim, flip)


class SplineAutoregressive(_Splined, Autoregressive):
    """Autoregressive neural spline flow (Durkan et al. 2019, section 3.2) in IAF's
    direction (:class:`~vilab.flows.autoregressive.Autoregressive`):

        θ = MADE(z [, h]) ∈ R^{D × (3K−1)},   z'_i = RQS(z_i; θ_i(z_{<i} [, h])),
        log |det ∂z'/∂z| = Σ_i log RQS'(z_i; θ_i).

    The MADE uses ReLU, as zuko's does: with ELU the same flow trained U2 to KL 0.10 where
    ReLU reaches 0.012 at equal steps (400 steps, 3 layers; 0.008 at 20 s, zuko 0.014).

    Args:
        dim, hidden, context_dim, reverse: see :class:`~vilab.flows.autoregressive.Autoregressive`.
        bins: K ≥ 2.
        tail_bound: B > 0; the identity outside [−B, B].
    """

    activation = "relu"

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        reverse: bool = False,
        bins: int = 8,
        tail_bound: float = 5.0,
    ) -> None:
        self._spline_options(bins, tail_bound)
        super().__init__(dim, hidden, context_dim, reverse)
