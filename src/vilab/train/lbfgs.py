"""L-BFGS paths for the pilot (:mod:`vilab.train.pilot`): several starting points climbed
at once, one batched evaluation of log p̃ and its gradient per line-search trial, every
iterate kept (the pilot scores Gaussians along the paths, not only at their ends).

torch.optim.LBFGS climbs one point, and its strong-Wolfe search does not recover from a
trial point where log p̃ is −inf: on posteriordb's earnings its first trial (gradient 3.6
× 10⁶ at 0) overflowed and x never left the start. This one backtracks until p̃ is
finite, and moves P paths in each call of ``f``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

LogDensity = Callable[[Tensor], Tensor]


def lbfgs_paths(
    f: LogDensity, x0: Tensor, max_iter: int = 1000, tol: float = 1e-9, history: int = 10
) -> list[list[Tensor]]:
    """The iterates ``[x₀, …, x_T]`` of each of the P paths of L-BFGS (Nocedal & Wright
    2006, Algorithm 7.4: the two-loop recursion over the last ``history`` pairs,
    H₀ = sᵀy / yᵀy) maximizing ``f`` ``(N, D) -> (N,)`` from the rows of ``x0 (P, D)``,
    all paths evaluated in one batch per trial. The line search backtracks: the step
    halves until log p̃ is finite and rises by at least 10⁻⁴ of the step's first-order
    gain (a path's first step is at most 1 in ℓ₂, so a gradient of 10⁶ at the start does
    not throw x where p̃ overflows). A path stops after ``max_iter`` iterations, when log p̃
    rises by less than ``tol`` (relative), or when no step is accepted; a start where
    log p̃ is not finite is a path of one point."""
    x = x0.clone()
    value, grad = _values_grads(f, x)
    paths = [[row] for row in x0]
    active = torch.isfinite(value)
    pairs: list[tuple[Tensor, Tensor, Tensor]] = []  # (s, y, kept) for all paths, oldest first
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        step = _directions(grad, pairs)
        t = torch.ones_like(value)
        gain = (grad * step).sum(-1)
        searching, new_value, new_grad = active.clone(), value.clone(), grad.clone()
        for _ in range(60):
            idx = searching.nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            v, g = _values_grads(f, x[idx] + t[idx, None] * step[idx])
            ok = torch.isfinite(v) & (v >= value[idx] + 1e-4 * t[idx] * gain[idx])
            new_value[idx[ok]], new_grad[idx[ok]] = v[ok], g[ok]
            searching[idx[ok]] = False
            t[idx[~ok]] *= 0.5
        moved = active & ~searching
        s_ = torch.where(moved[:, None], t[:, None] * step, 0.0)
        y_ = torch.where(moved[:, None], grad - new_grad, 0.0)  # the change of ∇(−log p̃)
        kept = moved & ((s_ * y_).sum(-1) > 1e-12 * (y_ * y_).sum(-1))  # curvature
        pairs = [*pairs[-(history - 1) :], (s_, y_, kept)]
        rise = new_value - value
        x, value, grad = x + s_, new_value, new_grad
        for p in moved.nonzero().squeeze(-1).tolist():
            paths[p].append(x[p].clone())
        active = moved & (rise > tol * value.abs().clamp(min=1.0))
    return paths


def lbfgs_path(f: LogDensity, x0: Tensor, max_iter: int = 1000) -> list[Tensor]:
    """The iterates of one path from ``x0 (D,)`` (:func:`lbfgs_paths`)."""
    return lbfgs_paths(f, x0.unsqueeze(0), max_iter)[0]


def _values_grads(f: LogDensity, x: Tensor) -> tuple[Tensor, Tensor]:
    """log p̃ ``(N,)`` and its gradients ``(N, D)``; −inf where either is not finite."""
    x = x.detach().requires_grad_(True)
    value = f(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    finite = torch.isfinite(value) & torch.isfinite(grad).all(-1)
    return torch.where(finite, value.detach(), -math.inf), torch.where(finite[:, None], grad, 0.0)


def _directions(grad: Tensor, pairs: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """Each path's ascent step H ∇log p̃ ``(P, D)`` by the two-loop recursion over its kept
    pairs (a path with none: its gradient scaled to length at most 1)."""
    q, alphas = -grad, []
    for s, y, kept in reversed(pairs):
        rho = torch.where(kept, 1.0 / (y * s).sum(-1).where(kept, 1.0), 0.0)
        alpha = rho * (s * q).sum(-1)
        q = q - alpha[:, None] * y
        alphas.append(alpha)
    gamma, have = torch.ones_like(grad[:, 0]), torch.zeros_like(grad[:, 0], dtype=torch.bool)
    for s, y, kept in reversed(pairs):  # H₀ from each path's newest kept pair
        newest = kept & ~have
        gamma = torch.where(newest, (s * y).sum(-1) / (y * y).sum(-1).where(newest, 1.0), gamma)
        have = have | kept
    r = gamma[:, None] * q
    for (s, y, kept), alpha in zip(pairs, reversed(alphas), strict=True):
        rho = torch.where(kept, 1.0 / (y * s).sum(-1).where(kept, 1.0), 0.0)
        r = r + s * (alpha - rho * (y * r).sum(-1))[:, None]
    first = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1.0)
    return torch.where(have[:, None], -r, first)
