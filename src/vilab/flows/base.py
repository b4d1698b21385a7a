"""The flow contract: bijections in the sampling direction (noise -> sample).

``forward(z, context=None, trace=None) -> (z', logdet)`` with

    z' = f(z),   logdet = log |det ∂f/∂z|,   log q(z') = log q(z) − logdet,

and ``inverse(z', context=None) -> (z, log |det ∂f⁻¹/∂z'|)``, the log-determinant of the
inverse being ``−logdet`` at ``z = f⁻¹(z')``.

Shapes: ``z`` is ``(..., D)``; ``logdet`` is ``z.shape[:-1]``. With an amortized flow the
context is ``(B, C)`` and ``z`` is ``(S, B, D)``. Training scores a sample on the way out
and never inverts (DESIGN.md, separations 2 and 3); the inverse serves ``log_prob`` of an
arbitrary z (STL, DReG, plots). Every flow of vilab has one: radial in closed form, IAF by
D passes, planar and Sylvester by scalar monotone root solves (:func:`solve_tanh_root`) to
machine precision, checked against ``inverse_tol``. A flow without an inverse (a user's)
keeps the default, which raises ``NotImplementedError``.

A flow module may hold several layers of one kind (``num_layers``) whose parameters are
stacked on a leading axis: the parameter maths runs once for all of them and the layer
loop stays tight (the inverse runs it backwards). ``trace``, when a list, receives ``z``
after every layer (for plots).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: default ``inverse_tol`` by dtype: the largest relative residual an iterative inverse
#: accepts (the solves reach a few ulps; these leave room for the rounding of f itself)
DEFAULT_INVERSE_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-6,
    torch.float16: 3e-3,
    torch.bfloat16: 3e-2,
}


class Flow(nn.Module):
    """Base class of every flow. Subclasses set ``dim`` and ``num_layers``.

    Iterative inverses (planar, Sylvester) read ``inverse_tol`` (None: by dtype, see
    :data:`DEFAULT_INVERSE_TOL`) and leave the largest relative residual of their last call
    in ``last_inverse_residual`` (:func:`solve_tanh_root`); they raise ``RuntimeError``
    when a finite input misses the tolerance.
    """

    dim: int
    num_layers: int = 1
    #: whether the flow waits for a fit's pilot to set it (:class:`~vilab.flows.affine.
    #: FixedAffine` before :mod:`vilab.train.pilot` has run)
    awaits_pilot: bool = False
    inverse_tol: float | None = None
    last_inverse_residual: float | None = None

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

    def tolerance(self, dtype: torch.dtype) -> float:
        """The residual an iterative inverse accepts: ``inverse_tol`` or the dtype's default."""
        if self.inverse_tol is not None:
            return self.inverse_tol
        return DEFAULT_INVERSE_TOL.get(dtype, 1e-6)

    def check_residual(self, residual: Tensor, dtype: torch.dtype) -> None:
        """Record ``residual`` (the largest relative residual of all solves of this call) in
        ``last_inverse_residual`` and refuse it above :meth:`tolerance`."""
        value = float(residual)
        self.last_inverse_residual = value
        tol = self.tolerance(dtype)
        if value > tol:
            raise RuntimeError(
                f"{type(self).__name__}.inverse did not converge: relative residual "
                f"{value:.3g} > inverse_tol {tol:.3g}"
            )


def check_inverse_tol(inverse_tol: float | None) -> float | None:
    """Refuse a non-positive tolerance with a message naming it."""
    if inverse_tol is not None and not (isinstance(inverse_tol, int | float) and inverse_tol > 0):
        raise ValueError(f"inverse_tol must be a positive number or None, got {inverse_tol!r}")
    return inverse_tol


def solve_tanh_root(
    y: Tensor,
    a: Tensor,
    k: Tensor,
    c: Tensor,
    one_plus_ak: Tensor,
    max_iter: int = 100,
) -> tuple[Tensor, Tensor]:
    """Solve ``g(x) = x + a tanh(k x + c) − y = 0`` elementwise, for ``a k > −1``.

    ``g' = 1 + a k (1 − t²) = t² + (1 + a k)(1 − t²) > 0`` (t = tanh(kx + c)): g is
    strictly increasing, and its root lies in ``[y − |a|, y + |a|]`` since |tanh| ≤ 1.
    Safeguarded Newton (``rtsafe``, Press et al., Numerical Recipes §9.4): a Newton step
    where it stays inside the bracket and halves the previous step, else bisection; this
    converges near ``a k → −1`` too, where g' can approach 0 at ``kx + c = 0``. It runs on
    detached tensors until, everywhere, |g| is at its rounding level or the step is below
    a few ulps (or ``max_iter``); the root then gets its gradient by the implicit function
    theorem, ``dx = −(∂g/∂θ) / g'``, to every input (value unchanged).

    Args:
        y, a, k, c: broadcastable tensors; the output has their broadcast shape.
        one_plus_ak: ``1 + a k`` (> 0), passed by the caller where it has it without
            cancellation (planar: softplus).
        max_iter: iteration cap (bisection alone narrows the bracket 2^−max_iter).

    Returns:
        ``(x, residual)``: the root, and the largest relative residual over the finite
        entries (a 0-d detached tensor): |g(x)| over the scale of its rounding error (see
        ``scale`` below; about 1 + |x| + |y| + |a| times max(1, g')), a few ε at
        convergence whatever the conditioning.
    """
    y_, a_, k_, c_, p_ = (t.detach() for t in (y, a, k, c, one_plus_ak))
    shape = torch.broadcast_shapes(y.shape, a.shape, k.shape, c.shape, one_plus_ak.shape)
    eps = torch.finfo(y.dtype).eps
    eps2 = 2.0 * eps
    abs_a, abs_k, abs_c, base = a_.abs(), k_.abs(), c_.abs(), 1.0 + y_.abs()

    def scale(x: Tensor, t: Tensor, one_minus_t2: Tensor, dg: Tensor) -> Tensor:
        """What |g(x)| is measured against: the size of its rounding error, at least
        eps·(1 + |x| + |y| + |a|·(|t| + (1 − t²)(|k x| + |c|))), times max(1, g'), since
        neighbouring floats x differ by about g'·ulp(x) in g."""
        argument = torch.addcmul(abs_c, abs_k, x.abs())
        size = base + x.abs() + abs_a * torch.addcmul(t.abs(), one_minus_t2, argument)
        return size * dg.clamp_min(1.0)

    lo, hi = y_ - abs_a, y_ + abs_a
    x = y_ - a_ * torch.tanh(torch.addcmul(c_, k_, y_))  # a fixed-point step: in [lo, hi]
    x = x.expand(shape).contiguous()
    dx_old = hi - lo
    settled = ~torch.isfinite(x)  # NaN or inf in, NaN or inf out (as forward)
    for _ in range(max_iter):
        t = torch.tanh(torch.addcmul(c_, k_, x))
        g = torch.addcmul(x - y_, a_, t)
        ag = g.abs()
        s = 1.0 - t * t
        dg = torch.addcmul(1.0 - s, s, p_)  # t² + (1 + a k)(1 − t²)
        done = settled | (ag <= eps * scale(x, t, s, dg))  # done stays done: x stays put
        if bool(done.all()):
            break
        lo = torch.where(g < 0, x, lo)  # g increasing: the root is above x where g < 0
        hi = torch.where(g > 0, x, hi)
        newton = x - g / dg
        ok = (newton > lo) & (newton < hi) & (2.0 * ag <= dx_old * dg)
        x_new = torch.where(done, x, torch.where(ok, newton, 0.5 * (lo + hi)))
        dx_old = (x_new - x).abs()
        settled = done | (dx_old <= eps2 * (1.0 + x.abs()))
        x = x_new
    # the gradient, by the implicit function theorem: x* = x − (g − ḡ) / g' with x and
    # ḡ = g(x) detached is x in value (a Newton step would amplify rounding where g' → 0)
    # and has dx* = −(∂g/∂θ) / g' for every input θ
    t = torch.tanh(torch.addcmul(c, k, x))
    g = torch.addcmul(x - y, a, t)
    s = 1.0 - t * t
    dg = torch.addcmul(1.0 - s, s, one_plus_ak)
    g_fixed = g.detach()
    x_star = x - (g - g_fixed) / dg
    rel = g_fixed.abs() / scale(x, t.detach(), s.detach(), dg.detach())
    rel = rel.nan_to_num(0.0, 0.0, 0.0)
    residual = rel.max() if rel.numel() else rel.new_zeros(())
    return x_star, residual
