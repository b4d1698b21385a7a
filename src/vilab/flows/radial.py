"""Radial flows (Rezende & Mohamed 2015, §4.1 and Appendix A.2).

    f(z) = z + β h(α, r) (z − z₀),   r = ‖z − z₀‖,   h(α, r) = 1 / (α + r),
    log |det ∂f/∂z| = (D − 1) log(1 + β h) + log(1 + β h + β h'(α, r) r)
                    = (D − 1) log(1 + β h) + log(1 + β α h²).

Invertibility needs β ≥ −α with α > 0. We set α = softplus(α̃) and
β = −α + softplus(β̃), so both log arguments are positive for every z.

Inverse, in closed form: z' − z₀ = (1 + β h)(z − z₀) with 1 + β h = (α + β + r)/(α + r) > 0,
so z − z₀ points the same way and r' = ‖z' − z₀‖ = r (α + β + r)/(α + r), i.e.

    r² + p r − α r' = 0,   p = α + β − r',   r = (−p + √(p² + 4 α r')) / 2 ≥ 0,

evaluated as 2 α r' / (p + √·) where p > 0 (no cancellation); then
z = z₀ + (z' − z₀)(α + r)/(α + β + r) and log |det ∂f⁻¹/∂z'| = −log |det ∂f/∂z| at z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vilab.core.params import check_dims, make_params
from vilab.flows.base import Flow


class Radial(Flow):
    """``num_layers`` radial layers; free or amortized from a context.

    Args:
        dim: dimension D of z.
        num_layers: number K of stacked radial layers in this module.
        context_dim: None for free parameters, else the size of the amortizing context.
        init_scale: standard deviation of the initial centres z₀.

    Parameters: ``z0`` of shape ``(K, D)``, ``alpha`` and ``beta`` (unconstrained) of
    shape ``(K,)``.
    """

    def __init__(
        self, dim: int, num_layers: int = 1, context_dim: int | None = None, init_scale: float = 1.0
    ) -> None:
        super().__init__()
        check_dims(dim, num_layers)
        self.dim, self.num_layers = dim, num_layers
        init = {
            "z0": init_scale * torch.randn(num_layers, dim),
            "alpha": torch.zeros(num_layers),
            "beta": torch.zeros(num_layers),  # β = softplus(0) − α = 0: the identity
        }
        self.params = make_params(init, context_dim)

    def constrained(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(z0, α, β)`` with ``α > 0`` and ``β > −α``."""
        p = self.params(context)
        alpha = F.softplus(p["alpha"])
        beta = F.softplus(p["beta"]) - alpha
        return p["z0"], alpha, beta

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self.constrained(context)
        logdet = z.new_zeros(z.shape[:-1])
        for z0_k, a, bt in zip(z0.unbind(-2), alpha.unbind(-1), beta.unbind(-1), strict=True):
            diff = z - z0_k
            r = diff.norm(dim=-1)
            h = 1.0 / (a + r)
            bh = bt * h
            z = z + bh.unsqueeze(-1) * diff
            logdet = logdet + (self.dim - 1) * torch.log1p(bh) + torch.log1p(bh * a * h)
            if trace is not None:
                trace.append(z)
        return z, logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = f⁻¹(z)`` through the layers in reverse order, and ``log |det ∂f⁻¹/∂z|``.

        Shapes as :meth:`forward`: ``z (..., D)`` (``(S, B, D)`` with a context ``(B, C)``).
        """
        z0, alpha, beta = self.constrained(context)
        logdet = z.new_zeros(z.shape[:-1])
        layers = zip(z0.unbind(-2), alpha.unbind(-1), beta.unbind(-1), strict=True)
        for z0_k, a, bt in reversed(list(layers)):
            diff = z - z0_k
            r_out = diff.norm(dim=-1)
            p = a + bt - r_out
            s = p.abs() + torch.sqrt(p * p + 4.0 * a * r_out)
            r = torch.where(
                p > 0, 2.0 * a * r_out / s.clamp_min(torch.finfo(s.dtype).tiny), 0.5 * s
            )
            h = 1.0 / (a + r)
            bh = bt * h
            z = z0_k + diff / (1.0 + bh).unsqueeze(-1)
            logdet = logdet - (self.dim - 1) * torch.log1p(bh) - torch.log1p(bh * a * h)
        return z, logdet
