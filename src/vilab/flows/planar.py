"""Planar flows (Rezende & Mohamed 2015, §4.1 and Appendix A.1).

    f(z) = z + û h(wᵀz + b),   h = tanh,
    log |det ∂f/∂z| = log |1 + h'(wᵀz + b) wᵀû|.

Invertibility needs wᵀû ≥ −1. Following the paper's Appendix A.1 (and pyro),

    û = u + (m(wᵀu) − wᵀu) w / ‖w‖²,   m(x) = −1 + softplus(x),

so that wᵀû = m(wᵀu) > −1 for any (u, w): the map is a bijection and the log-determinant
argument 1 + h'·wᵀû lies in (0, ∞) since h' ∈ (0, 1].

Inverse (one scalar root per layer): with α = wᵀz, taking wᵀ of f gives

    wᵀz' = α + wᵀû h(α + b),

strictly increasing in α (derivative 1 + h'·wᵀû > 0), so α is its unique root
(:func:`~vilab.flows.base.solve_tanh_root`, to machine precision, near wᵀû → −1 too), then
z = z' − û h(α + b), and log |det ∂f⁻¹/∂z'| = −log |1 + h'(α + b) wᵀû|.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vilab.core.params import check_dims, make_params, rowdot
from vilab.flows.base import Flow, check_inverse_tol, solve_tanh_root


class Planar(Flow):
    """``num_layers`` planar layers; free or amortized from a context.

    Args:
        dim: dimension D of z.
        num_layers: number K of stacked planar layers in this module.
        context_dim: None for free parameters, else the size of the context that an
            amortized head maps to (u, w, b) of every layer.
        init_scale: standard deviation of the initial u (w starts as N(0, I)).
        inverse_tol: the largest relative residual the inverse accepts (None: by dtype,
            1e-10 in float64, 1e-6 in float32).

    Parameters: ``u, w`` of shape ``(K, D)`` and ``b`` of shape ``(K,)`` (with a leading
    batch dimension when amortized).
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 1,
        context_dim: int | None = None,
        init_scale: float = 0.1,
        inverse_tol: float | None = None,
    ) -> None:
        super().__init__()
        check_dims(dim, num_layers)
        self.inverse_tol = check_inverse_tol(inverse_tol)
        self.dim, self.num_layers = dim, num_layers
        # Start every layer volume-preserving: wᵀu = log(e − 1) makes wᵀû = m(wᵀu) = 0,
        # so û is the part of u orthogonal to w (a small shear). Random (u, w) would give
        # wᵀû ≈ m(0) = −0.31 and K layers would shrink q by about 0.69^K.
        w = torch.randn(num_layers, dim)
        u = init_scale * torch.randn(num_layers, dim)
        wu_target = math.log(math.e - 1.0)
        u = u + ((wu_target - (w * u).sum(-1)) / (w * w).sum(-1)).unsqueeze(-1) * w
        init = {"u": u, "w": w, "b": torch.zeros(num_layers)}
        self.params = make_params(init, context_dim)

    def constrained(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns ``(û, w, b, wᵀû)`` with ``wᵀû > −1`` for every layer."""
        p = self.params(context)
        u, w, b = p["u"], p["w"], p["b"]
        wu = (w * u).sum(-1)
        wtu_hat = F.softplus(wu) - 1.0
        u_hat = u + ((wtu_hat - wu) / (w * w).sum(-1).clamp_min(1e-12)).unsqueeze(-1) * w
        return u_hat, w, b, wtu_hat

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        u_hat, w, b, wtu_hat = self.constrained(context)
        fused = z.dim() == 2 and w.dim() == 2  # free parameters, z (N, D): BLAS-2 calls
        # one unbind per tensor instead of K selects (whose backward allocates K zeros)
        layers = zip(u_hat.unbind(-2), w.unbind(-2), b.unbind(-1), strict=True)
        hs = []
        for u_k, w_k, b_k in layers:
            if fused:
                h = torch.tanh(torch.addmv(b_k, z, w_k))
                z = torch.addr(z, h, u_k)
            else:
                h = torch.tanh(rowdot(z, w_k) + b_k)
                z = z + h.unsqueeze(-1) * u_k
            hs.append(h)
            if trace is not None:
                trace.append(z)
        h = torch.stack(hs, dim=-1)  # (..., K)
        # 1 + (1 − h²) wᵀû = h² + (1 − h²) softplus(wᵀu): no cancellation when wᵀû → −1
        h2 = h * h
        logdet = torch.log(torch.addcmul(h2, 1.0 - h2, wtu_hat + 1.0)).sum(-1)
        return z, logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = f⁻¹(z)`` through the layers in reverse order, and ``log |det ∂f⁻¹/∂z|``.

        Shapes as :meth:`forward`: ``z (..., D)`` (``(S, B, D)`` with a context ``(B, C)``).
        """
        u_hat, w, b, wtu_hat = self.constrained(context)
        layers = zip(u_hat.unbind(-2), w.unbind(-2), b.unbind(-1), wtu_hat.unbind(-1), strict=True)
        hs, residuals = [], []
        one = torch.ones((), dtype=z.dtype, device=z.device)
        for u_k, w_k, b_k, c_k in reversed(list(layers)):
            alpha, res = solve_tanh_root(rowdot(z, w_k), c_k, one, b_k, c_k + 1.0)
            h = torch.tanh(alpha + b_k)
            z = z - h.unsqueeze(-1) * u_k
            hs.append(h)
            residuals.append(res)
        self.check_residual(torch.stack(residuals).max(), z.dtype)
        h2 = torch.stack(hs[::-1], dim=-1).square()  # (..., K), layer order
        logdet = torch.log(torch.addcmul(h2, 1.0 - h2, wtu_hat + 1.0)).sum(-1)
        return z, -logdet
