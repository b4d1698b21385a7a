"""Neural autoregressive flow with the deep sigmoidal transform (Huang et al., "Neural
Autoregressive Flows", ICML 2018, eq. 8 with one hidden layer of M sigmoid units).

Per coordinate, with pseudo-parameters (ã, b, w̃) ∈ R^{3M} from a MADE:

    a = m + softplus(ã + c) > 0,   w = softmax(w̃),   C_j = a_j x + b_j,
    S = Σ_j w_j σ(C_j) ∈ (0, 1),
    y = σ⁻¹(S) = log S − log(1 − S),
    dy/dx = Σ_j w_j a_j σ(C_j) σ(−C_j) / (S (1 − S)),

all in log space: log S = logsumexp(log w + log σ(C)), log(1 − S) = logsumexp(log w +
log σ(−C)), and log dy/dx = logsumexp(log w + log a + log σ(C) + log σ(−C)) − log S −
log(1 − S). y is strictly increasing and maps R onto R (slope → min a ≥ m as x → ±∞). The
slopes a grow like softplus (Huang et al.'s choice; an exponential makes near-steps whose
inverse no float resolves), above a minimum m = 1e-3, shifted by c = log(e^{1−m} − 1) so
that all-zero parameters (a = 1, b = 0, equal w) give the identity, y = σ⁻¹(σ(x)) = x.

:class:`NeuralAutoregressive` runs it in IAF's direction, θ = MADE(z [, h]), so drawing and
scoring a sample is one pass. The inverse (``log_prob`` of any z) takes D passes, each
solving the monotone scalar equations y(x) = z elementwise by safeguarded Newton
(:func:`sigmoidal_inverse`) to a few ulps; its gradient comes by the implicit function
theorem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from vilab.flows.autoregressive import Autoregressive


def check_units(units: int) -> None:
    """Refuse a number of sigmoid units below 1, naming the value."""
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ValueError(f"units must be a positive integer, got {units!r}")


#: minimum slope m of every sigmoid unit, and the shift c with m + softplus(c) = 1
MIN_SLOPE = 1e-3
_SHIFT = math.log(math.expm1(1.0 - MIN_SLOPE))


def _slopes(raw_a: Tensor) -> Tensor:
    """``a = m + softplus(ã + c)``: positive, 1 at ã = 0."""
    return F.softplus(raw_a + _SHIFT) + MIN_SLOPE


def _parts(x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(log a, log w, log σ(C), log σ(−C))`` and ``C``, each ``(..., M)``."""
    raw_a, b, raw_w = theta.unflatten(-1, (3, -1)).unbind(-2)
    a = _slopes(raw_a)
    c = torch.addcmul(b, a, x.unsqueeze(-1))
    ls = F.logsigmoid(c)
    return torch.log(a), torch.log_softmax(raw_w, dim=-1), ls, ls - c, c


def sigmoidal_transform(x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """The deep sigmoidal transform and its log-derivative, elementwise.

    Args:
        x: ``(...)``.
        theta: ``(..., 3M)``: M values of ã (the slopes' parameters), then M of b, then M
            of w̃ (unnormalized log-weights), one transform per entry of ``x``.

    Returns:
        ``(y, log dy/dx)``, both shaped like ``x``.
    """
    log_a, log_w, ls, lsn, _ = _parts(x, theta)
    log_s = torch.logsumexp(log_w + ls, dim=-1)
    log_1ms = torch.logsumexp(log_w + lsn, dim=-1)
    log_d = torch.logsumexp(log_w + log_a + ls + lsn, dim=-1) - log_s - log_1ms
    return log_s - log_1ms, log_d


def sigmoidal_inverse(y: Tensor, theta: Tensor, max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Solve ``sigmoidal_transform(x, θ) = y`` for x, elementwise.

    The map is strictly increasing from −∞ to ∞: a bracket [lo, hi] around the start
    x = y (the root of the identity) is found by doubling its radius from 1 on each side
    that misses; then Newton steps that stay inside the bracket, else bisection (``rtsafe``,
    Press et al., Numerical Recipes §9.4), until every residual is at its rounding level
    or the bracket or the step is a few ulps wide. The iterations run on detached tensors
    with S and 1 − S summed directly (Σ w σ(C) and Σ w σ(−C): no cancellation, no
    logsumexp); the root then gets its gradient by the implicit function theorem,
    ``x* = x − (f(x; θ) − f̄ − (y − ȳ)) / f'(x)`` with x, f̄ and ȳ detached (the value is x).

    Args:
        y: ``(...)``, targets.
        theta: ``(..., 3M)`` as for :func:`sigmoidal_transform`.
        max_iter: cap on the Newton / bisection iterations.

    Returns:
        ``(x, residual)``: the root and the largest relative residual over the finite
        entries (a 0-d detached tensor): |f(x) − y| / (1 + |y| + |x| f'(x)), the scale of
        f's rounding error, a few ε at convergence.
    """
    y_ = y.detach()
    raw_a, b, raw_w = theta.detach().unflatten(-1, (3, -1)).unbind(-2)
    a, w = _slopes(raw_a), torch.softmax(raw_w, dim=-1)
    aw = a * w
    eps = torch.finfo(y.dtype).eps

    def f(x: Tensor) -> tuple[Tensor, Tensor]:
        """The transform and its derivative, by direct sums."""
        c = torch.addcmul(b, a, x.unsqueeze(-1))
        up, down = torch.sigmoid(c), torch.sigmoid(-c)
        s, one_minus_s = (w * up).sum(-1), (w * down).sum(-1)
        return torch.log(s / one_minus_s), (aw * up * down).sum(-1) / (s * one_minus_s)

    finite = torch.isfinite(y_)
    lo, hi, radius = y_ - 1.0, y_ + 1.0, torch.ones_like(y_)
    for _ in range(1100):  # 2^1024 overflows float64: the bracket is found long before
        low, high = (f(lo)[0] > y_) & finite, (f(hi)[0] < y_) & finite
        if not bool((low | high).any()):
            break
        radius = torch.where(low | high, 2.0 * radius, radius)
        lo = torch.where(low, y_ - radius, lo)
        hi = torch.where(high, y_ + radius, hi)
    x = torch.where(finite, y_, y_.new_zeros(()))
    settled = ~finite
    for _ in range(max_iter):
        fx, dfx = f(x)
        g = fx - y_
        done = settled | (g.abs() <= 4.0 * eps * (1.0 + y_.abs() + x.abs() * dfx))
        if bool(done.all()):
            break
        lo = torch.where(g < 0, x, lo)
        hi = torch.where(g > 0, x, hi)
        newton = x - g / dfx
        ok = (newton > lo) & (newton < hi)
        x_new = torch.where(done, x, torch.where(ok, newton, 0.5 * (lo + hi)))
        tiny = 2.0 * eps * (1.0 + x.abs())
        settled = done | ((hi - lo) <= 2.0 * tiny) | ((x_new - x).abs() <= tiny)
        x = x_new
    x = torch.where(finite, x, y_)  # NaN or ±inf in, out
    fx, log_d = sigmoidal_transform(x, theta)
    f_fixed, slope = fx.detach(), torch.exp(log_d.detach())
    scale = 1.0 + y_.abs() + x.abs() * slope  # neighbouring floats x differ by ~ulp·f'
    rel = ((f_fixed - y_).abs() / scale).nan_to_num(0.0, 0.0, 0.0)
    residual = rel.max() if rel.numel() else rel.new_zeros(())
    return x - ((fx - f_fixed) - (y - y_)) / slope, residual


class NeuralAutoregressive(Autoregressive):
    """Neural autoregressive flow (deep sigmoidal, Huang et al. 2018) in IAF's direction
    (:class:`~vilab.flows.autoregressive.Autoregressive`):

        θ = MADE(z [, h]) ∈ R^{D × 3M},   z'_i = DSF(z_i; θ_i(z_{<i} [, h])),
        log |det ∂z'/∂z| = Σ_i log DSF'(z_i; θ_i).

    Each of the inverse's D passes solves by :func:`sigmoidal_inverse`; a residual above
    ``inverse_tol`` raises ``RuntimeError`` (``last_inverse_residual`` keeps the last).

    Args:
        dim, hidden, context_dim, reverse: see :class:`~vilab.flows.autoregressive.Autoregressive`.
        units: M sigmoid units per coordinate.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        reverse: bool = False,
        units: int = 8,
    ) -> None:
        check_units(units)
        self.n_params = 3 * units
        super().__init__(dim, hidden, context_dim, reverse)
        self.units = units

    def transform(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        if not inverse:
            return sigmoidal_transform(x, theta)
        root, residual = sigmoidal_inverse(x, theta)
        self.check_residual(residual, x.dtype)
        return root, -sigmoidal_transform(root, theta)[1]
