"""The 2-D energies of Rezende & Mohamed (2015, Table 1) and the banana of Titsias & Ruiz
(2019), exactly as in REFERENCE.md §1.

    w1(z) = sin(2π z1 / 4),  w2(z) = 3 exp(−½((z1 − 1)/0.6)²),  w3(z) = 3 σ((z1 − 1)/0.3)
    U1(z) = ½((‖z‖ − 2)/0.4)² − log(e^{−½((z1−2)/0.6)²} + e^{−½((z1+2)/0.6)²})
    U2(z) = ½((z2 − w1)/0.4)²
    U3(z) = −log(e^{−½((z2−w1)/0.35)²} + e^{−½((z2−w1+w2)/0.35)²})
    U4(z) = −log(e^{−½((z2−w1)/0.4)²}  + e^{−½((z2−w1+w3)/0.35)²})

U2–U4 are improper along z1; vilab adds the smooth wall ``softplus(10(|z1| − 4))`` so that
they have finite mass (log Z in REFERENCE.md). p̃(z) = exp(−U(z)).

Banana: x = (z1, z2 + c (z1² + 1)) with x ~ N(0, [[1, 0.9], [0.9, 1]]); the map z ↦ x has
unit Jacobian for every curvature c, so the density is normalized (log Z = 0). c = 1 is
the UIVI paper's banana; :class:`BananaFamily` makes c a context for amortized fitting.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vilab.targets.base import Box, Target
from vilab.targets.reference import Reference


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(0.5 * math.pi * z1)


def _w2(z1: Tensor) -> Tensor:
    return 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1: Tensor) -> Tensor:
    return 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)


def _wall(z1: Tensor) -> Tensor:
    return F.softplus(10.0 * (z1.abs() - 4.0))


def u1(z: Tensor) -> Tensor:
    z1 = z[..., 0]
    ring = 0.5 * ((z.norm(dim=-1) - 2.0) / 0.4) ** 2
    modes = torch.logaddexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2)
    return ring - modes


def u2(z: Tensor) -> Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2 + _wall(z1)


def u3(z: Tensor) -> Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    d = z2 - _w1(z1)
    u = -torch.logaddexp(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + _w2(z1)) / 0.35) ** 2)
    return u + _wall(z1)


def u4(z: Tensor) -> Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    d = z2 - _w1(z1)
    u = -torch.logaddexp(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + _w3(z1)) / 0.35) ** 2)
    return u + _wall(z1)


class Energy2D(Target):
    """p̃(z) = exp(−U(z)) for a 2-D energy U.

    Args:
        name: display name.
        energy: U, mapping ``(..., 2) -> (...)``.
        log_z: the log-normalizer (REFERENCE.md §1), computed by quadrature.
        plot_box: the box of the figures.
        quad_box: a box holding all but < 1e-13 of the mass, for quadrature.
    """

    dim = 2

    def __init__(
        self,
        name: str,
        energy: Callable[[Tensor], Tensor],
        log_z: float,
        plot_box: Box,
        quad_box: Box,
    ) -> None:
        self.name, self.energy, self.log_z = name, energy, log_z
        self.plot_box, self.quad_box = plot_box, quad_box

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return -self.energy(z)


_BANANA_RHO = 0.9
_BANANA_LOGNORM = -math.log(2.0 * math.pi) - 0.5 * math.log(1.0 - _BANANA_RHO**2)


def banana_log_prob(z: Tensor, curvature: Tensor | float = 1.0) -> Tensor:
    """log N(x; 0, [[1, ρ], [ρ, 1]]) at x = (z1, z2 + c (z1² + 1)), ρ = 0.9; normalized."""
    x1 = z[..., 0]
    x2 = z[..., 1] + curvature * (x1 * x1 + 1.0)
    quad = (x1 * x1 - 2.0 * _BANANA_RHO * x1 * x2 + x2 * x2) / (1.0 - _BANANA_RHO**2)
    return _BANANA_LOGNORM - 0.5 * quad


class Banana(Target):
    """The UIVI banana (Titsias & Ruiz 2019) with curvature c (default 1); log Z = 0.

    Exact draws: x ~ N(0, [[1, ρ], [ρ, 1]]), z1 = x1, z2 = x2 − c (x1² + 1).

    Reference, in closed form: E z1 = 0, sd(z1) = 1; E z2 = −c (E x1² + 1) = −2c and,
    as E[x2 x1²] = 0 (odd Gaussian moment) and Var(x1²) = 2,
    Var(z2) = Var(x2) + c² Var(x1²) = 1 + 2c², so sd(z2) = sqrt(1 + 2c²) (ρ drops out).
    """

    dim = 2
    log_z = 0.0
    plot_box = (-2.5, 2.5, -8.0, 2.0)

    def __init__(self, curvature: float = 1.0) -> None:
        self.curvature = float(curvature)
        self.name = "banana" if curvature == 1.0 else f"banana[c={curvature:g}]"
        # z1 ~ N(0, 1); z2 = x2 − c (z1² + 1), x2 ~ N(0, 1): 7.5 sd in each holds all but 1e-13
        lo = -7.5 - abs(self.curvature) * (1.0 + 7.5**2) if curvature > 0 else -7.5
        hi = 7.5 - abs(self.curvature) * 1.0 if curvature > 0 else 7.5 + abs(curvature) * 57.25
        self.quad_box = (-7.5, 7.5, lo, hi)
        c = self.curvature
        self.reference = Reference(
            mean=(0.0, -2.0 * c),
            sd=(1.0, math.sqrt(1.0 + 2.0 * c * c)),
            source="closed form: mean (0, −2c), sd (1, sqrt(1 + 2c²))",
        )

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return banana_log_prob(z, self.curvature)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws, ``(n, 2)`` float64 (see the class docstring)."""
        eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x1 = eps[:, 0]
        x2 = _BANANA_RHO * x1 + math.sqrt(1.0 - _BANANA_RHO**2) * eps[:, 1]
        return torch.stack([x1, x2 - self.curvature * (x1 * x1 + 1.0)], dim=-1)


class BananaFamily(Target):
    """Bananas p(z; c) with curvature c as a context ``(B, 1)``; log Z = 0 for every c.

    Training contexts are drawn uniformly from ``[low, high]`` (default [0.5, 1.5]); exact
    KL is then measured at values of c never seen in training.
    """

    dim = 2
    context_dim = 1
    log_z = 0.0
    plot_box = (-2.5, 2.5, -8.0, 2.0)
    name = "banana_family"

    def __init__(self, low: float = 0.5, high: float = 1.5) -> None:
        if not low < high:
            raise ValueError(f"curvature range must have low < high, got ({low}, {high})")
        self.low, self.high = float(low), float(high)
        self.quad_box = Banana(high).quad_box

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        if context is None:
            raise ValueError("banana_family needs a context: the curvature c, shape (B, 1)")
        return banana_log_prob(z, context[..., 0].to(z.dtype))

    def log_z_at(self, context: Tensor) -> float:
        return 0.0

    def sample_context(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, 1, generator=generator)
        return self.low + (self.high - self.low) * u


_BOX_RM = (-4.0, 4.0, -4.0, 4.0)
BUILTIN_TARGETS: dict[str, Callable[[], Target]] = {
    "U1": lambda: Energy2D("U1", u1, 1.877502, _BOX_RM, (-6.0, 6.0, -6.0, 6.0)),
    "U2": lambda: Energy2D("U2", u2, 2.082089, _BOX_RM, (-8.0, 8.0, -5.0, 5.0)),
    "U3": lambda: Energy2D("U3", u3, 2.641705, _BOX_RM, (-8.0, 8.0, -8.0, 5.0)),
    "U4": lambda: Energy2D("U4", u4, 2.710698, _BOX_RM, (-8.0, 8.0, -8.0, 5.0)),
    "banana": Banana,
    "banana_family": BananaFamily,
}
