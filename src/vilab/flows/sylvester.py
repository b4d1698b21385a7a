"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling, UAI 2018).

    f(z) = z + Q R h(R̃ Qᵀ z + b),   h = tanh,
    log |det ∂f/∂z| = Σᵢ log |1 + R_ii R̃_ii h'((R̃ Qᵀ z + b)ᵢ)|,

by Sylvester's determinant identity, with Q ∈ ℝ^{D×M} of orthonormal columns and R, R̃
upper triangular M × M. The map is invertible when R_ii R̃_ii > −1/‖h'‖∞ = −1; we set
R_ii = tanh(ρᵢ) and R̃_ii = tanh(ρ̃ᵢ), so the product lies in (−1, 1).

Three ways to get Q (the three families of the paper):

* ``orthogonal`` (O-SNF): Q (D × M, M ≤ D) from the QR decomposition of a free or amortized
  D × M matrix (the paper orthogonalizes iteratively; QR gives the same set exactly);
* ``householder`` (H-SNF): Q = H₁ ⋯ H_H, Hᵢ = I − 2 vᵢvᵢᵀ/‖vᵢ‖², M = D;
* ``triangular`` (T-SNF): Q is the identity on even layers and the reversal permutation on
  odd layers, M = D.

Inverse, exact by back-substitution (no fixed point): with v = Qᵀz the map acts on v only,

    v' = Qᵀz' = v + R h(R̃ v + b),   (I − QQᵀ) z' = (I − QQᵀ) z,

and since R and R̃ are upper triangular, v'ᵢ depends on v_{≥i} alone. From i = M down to 1,
with v_{>i} known, vᵢ is the root of the scalar equation

    vᵢ + R_ii h(R̃_ii vᵢ + cᵢ) = v'ᵢ − Σ_{j>i} R_ij h((R̃v + b)_j),   cᵢ = b_i + Σ_{j>i} R̃_ij v_j,

strictly increasing in vᵢ (derivative 1 + R_ii R̃_ii h' > 0), solved to machine precision
by :func:`~vilab.flows.base.solve_tanh_root`. Then z = z' − QR h(R̃v + b), and the relative
residuals of the scalar solves are checked against ``inverse_tol``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from vilab.core.params import check_dims, make_params, rowmat
from vilab.flows.base import Flow, check_inverse_tol, solve_tanh_root

QKind = Literal["orthogonal", "householder", "triangular"]


class Sylvester(Flow):
    """``num_layers`` Sylvester layers of one kind; free or amortized from a context.

    Args:
        dim: dimension D of z.
        num_layers: number K of stacked layers.
        kind: how Q is built: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        num_ortho: M, the number of orthonormal columns (orthogonal kind only; default D).
        num_householder: number of reflections per layer (householder kind only).
        context_dim: None for free parameters, else the size of the amortizing context.
        init_scale: standard deviation of the initial off-diagonal entries and b.
        inverse_tol: the largest relative residual the inverse accepts (None: by dtype,
            1e-10 in float64, 1e-6 in float32).
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 1,
        kind: QKind = "orthogonal",
        num_ortho: int | None = None,
        num_householder: int = 2,
        context_dim: int | None = None,
        init_scale: float = 0.1,
        inverse_tol: float | None = None,
    ) -> None:
        super().__init__()
        check_dims(dim, num_layers)
        self.inverse_tol = check_inverse_tol(inverse_tol)
        if kind not in ("orthogonal", "householder", "triangular"):
            raise ValueError(
                f"kind must be 'orthogonal', 'householder' or 'triangular', got {kind!r}"
            )
        m = dim if num_ortho is None else num_ortho
        if kind == "orthogonal" and not 1 <= m <= dim:
            raise ValueError(f"num_ortho must be in [1, dim={dim}], got {num_ortho}")
        if kind == "householder" and num_householder < 1:
            raise ValueError(f"num_householder must be ≥ 1, got {num_householder}")
        if kind != "orthogonal":
            m = dim
        self.dim, self.num_layers, self.kind, self.m = dim, num_layers, kind, m
        K = num_layers
        # Near the identity: A = QR starts small (R ≈ 0.05 I) so a deep stack starts close
        # to its base, while B = R̃Qᵀ starts at O(1) (diag R̃ = tanh(1)) so h is nonlinear.
        init = {
            "r": 0.1 * init_scale * torch.randn(K, m, m),
            "r_tilde": init_scale * torch.randn(K, m, m),
            "b": init_scale * torch.randn(K, m),
        }
        init["r"].diagonal(dim1=-2, dim2=-1).fill_(0.05)
        init["r_tilde"].diagonal(dim1=-2, dim2=-1).fill_(1.0)
        if kind == "orthogonal":
            init["q"] = torch.eye(dim, m).expand(K, dim, m) + init_scale * torch.randn(K, dim, m)
        elif kind == "householder":
            init["v"] = torch.randn(K, num_householder, dim)
        self.params = make_params(init, context_dim)
        self.register_buffer("triu_mask", torch.ones(m, m).triu(1), persistent=False)
        if kind == "triangular":
            flip = torch.eye(dim).flip(-1)
            q = torch.stack([torch.eye(dim) if k % 2 == 0 else flip for k in range(K)])
            self.register_buffer("q_fixed", q, persistent=False)

    def orthonormal(self, p: dict[str, Tensor]) -> Tensor:
        """Q of shape ``(*batch, K, D, M)`` with orthonormal columns."""
        if self.kind == "orthogonal":
            return torch.linalg.qr(p["q"]).Q
        if self.kind == "householder":
            v = p["v"]  # (*batch, K, H, D)
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            q = torch.eye(self.dim, dtype=v.dtype, device=v.device).expand(
                *v.shape[:-2], self.dim, self.dim
            )
            for i in range(v.shape[-2]):
                vi = v[..., i, :]  # (*batch, K, D)
                # q <- q (I − 2 v vᵀ)
                q = q - 2.0 * (q @ vi.unsqueeze(-1)) * vi.unsqueeze(-2)
            return q
        return self.q_fixed

    def qr_factors(
        self, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Returns ``(Q, R, R̃, b, d)``: Q ``(…, K, D, M)``, R and R̃ upper triangular
        ``(…, K, M, M)`` with diagonals tanh(ρ), tanh(ρ̃), b ``(…, K, M)`` and
        d = diag(R)·diag(R̃) ``(…, K, M)`` in (−1, 1)."""
        p = self.params(context)
        q = self.orthonormal(p)
        r_diag = torch.tanh(p["r"].diagonal(dim1=-2, dim2=-1))
        rt_diag = torch.tanh(p["r_tilde"].diagonal(dim1=-2, dim2=-1))
        r = p["r"] * self.triu_mask + torch.diag_embed(r_diag)
        rt = p["r_tilde"] * self.triu_mask + torch.diag_embed(rt_diag)
        return q, r, rt, p["b"], r_diag * rt_diag

    def factors(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns ``(A, Bm, b, d)``: A = QR ``(…, K, D, M)``, Bm = (R̃Qᵀ)ᵀ ``(…, K, D, M)``,
        b ``(…, K, M)`` and d = diag(R)·diag(R̃) ``(…, K, M)`` in (−1, 1)."""
        q, r, rt, b, d = self.qr_factors(context)
        return q @ r, q @ rt.transpose(-1, -2), b, d

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        a, bm, b, d = self.factors(context)
        fused = z.dim() == 2 and a.dim() == 3  # free parameters, z (N, D): one addmm each
        layers = zip(a.transpose(-1, -2).unbind(-3), bm.unbind(-3), b.unbind(-2), strict=True)
        hs = []
        for a_t, bm_k, b_k in layers:  # a_t = A_kᵀ (…, M, D)
            if fused:
                h = torch.tanh(torch.addmm(b_k, z, bm_k))
                z = torch.addmm(z, h, a_t)
            else:
                h = torch.tanh(rowmat(z, bm_k) + b_k)  # (..., M)
                z = z + rowmat(h, a_t)
            hs.append(h)
            if trace is not None:
                trace.append(z)
        h = torch.stack(hs, dim=-2)  # (..., K, M)
        return z, torch.log1p((1.0 - h * h) * d).sum((-2, -1))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = f⁻¹(z)`` through the layers in reverse order, and ``log |det ∂f⁻¹/∂z|``.

        Shapes as :meth:`forward`: ``z (..., D)`` (``(S, B, D)`` with a context ``(B, C)``).
        Exact up to the scalar solves' rounding; ``last_inverse_residual`` holds the largest
        relative residual, and ``RuntimeError`` is raised above ``inverse_tol``.
        """
        q, r, rt, b, d = self.qr_factors(context)
        a_t = (q @ r).transpose(-1, -2)  # Aᵀ = (QR)ᵀ, (…, K, M, D)
        if q.dim() < r.dim():  # fixed Q (triangular kind) with amortized R, R̃
            q = q.expand(*r.shape[:-2], *q.shape[-2:])
        layers = zip(q.unbind(-3), a_t.unbind(-3), r.unbind(-3), rt.unbind(-3), b.unbind(-2))
        hs, residuals = [], []
        for q_k, a_k, r_k, rt_k, b_k in reversed(list(layers)):
            m = self.m
            # right-hand sides yᵢ = v'ᵢ − Σ_{j>i} R_ij h_j and offsets cᵢ = bᵢ + Σ_{j>i} R̃_ij v_j,
            # completed as the v_j are solved, from the last coordinate to the first
            ys = list(rowmat(z, q_k).movedim(-1, 0).contiguous().unbind(0))  # Qᵀz'
            cs = list(b_k.movedim(-1, 0).unbind(0))
            hv: list[Tensor] = [z] * m  # placeholders, all set below
            for i in range(m - 1, -1, -1):
                a_i, k_i = r_k[..., i, i], rt_k[..., i, i]
                v_i, res = solve_tanh_root(ys[i], a_i, k_i, cs[i], 1.0 + a_i * k_i)
                residuals.append(res)
                hv[i] = torch.tanh(torch.addcmul(cs[i], k_i, v_i))
                for j in range(i):
                    ys[j] = ys[j] - r_k[..., j, i] * hv[i]
                    cs[j] = cs[j] + rt_k[..., j, i] * v_i
            h = torch.stack(hv, dim=-1)  # h(R̃v + b), (..., M)
            z = z - rowmat(h, a_k)
            hs.append(h)
        self.check_residual(torch.stack(residuals).max(), z.dtype)
        h = torch.stack(hs[::-1], dim=-2)  # (..., K, M), layer order
        return z, -torch.log1p((1.0 - h * h) * d).sum((-2, -1))
