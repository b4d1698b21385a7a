"""The pilot that preconditions a fit: Gaussian approximations along an optimizer's path to
the mode, the best of them by its ELBO (``family.precondition: laplace_path``).

From x₀ = 0 and from seven random starts (:func:`starts`), L-BFGS
(:func:`vilab.train.lbfgs.lbfgs_paths`)
climbs log p̃ and leaves iterates x₀, x₁, …, x_T. At up to ``candidates`` of them on each
path, spread evenly along it (the last always among them), the Hessian H = ∇² log p̃(x_t) is taken by central differences of the
gradient (2D gradients in one batch, symmetrized), and where −H is positive definite the
iterate proposes the Laplace approximation

    q_t = N(x_t, Σ_t),   Σ_t = (−H)⁻¹ = L_t L_tᵀ,
    ELBO(q_t) ≈ (1/M) Σ_m [log p̃(x_t + L_t ε_m) − log N(ε_m; 0, I) + Σᵢ log (L_t)ᵢᵢ],

each scored on the same M draws ε_m ~ N(0, I). The proposal of highest ELBO wins, the
start N(0, I) among them (a pilot never leaves a fit worse off by its own measure). This is
Pathfinder's rule (Zhang, Carpenter, Gelman & Vehtari 2022, JMLR 23(306), §2): choosing
by ELBO rather than taking the mode is what keeps it sound where the mode is a
pole of the density, as in hierarchical funnels (eight schools centred: log p̃ → ∞ as
τ → 0), where the path's early Gaussians win; the Hessians are exact (up to the difference
quotient) instead of Pathfinder's L-BFGS estimate, which D ≤ :data:`MAX_DIM` affords.

The winner (m, L) is set on the family's :class:`~vilab.flows.affine.FixedAffine`, the
flows before it then start near N(0, I) in coordinates where p is near N(0, I) too.

Cost per path: T + line-search evaluations of one point, plus ``candidates`` × (2D + M)
points; on posteriordb's posteriors 0.1–8 s for all eight paths.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import Tensor

from vilab.families.base import Family
from vilab.families.gaussian import std_normal_log_prob
from vilab.flows.affine import FixedAffine
from vilab.flows.base import Flow
from vilab.targets.base import Target
from vilab.train.lbfgs import LogDensity, lbfgs_paths

#: The largest dimension the pilot serves (a dense D × D Hessian from 2D gradients).
MAX_DIM = 1000


@dataclass(frozen=True)
class PilotResult:
    """The Gaussian N(``shift``, ``scale_tril`` ``scale_tril``ᵀ) a pilot chose, float64.

    Attributes:
        elbo: its ELBO estimate; ``start_elbo`` that of N(0, I) on the same draws.
        path, chosen: the L-BFGS path (0: the one from 0; :func:`starts`) and its iterate
            it is centred on (−1, −1: N(0, I), nothing better found).
        iterations: L-BFGS iterations run, all paths; ``candidates``: Laplace approximations tried,
            ``proper``: those with −H positive definite and finite log p̃ at every draw.
        evaluations: points at which log p̃ (and its gradient) was evaluated.
        seconds: wall time of the pilot.
    """

    shift: Tensor
    scale_tril: Tensor
    elbo: float
    start_elbo: float
    path: int
    chosen: int
    iterations: int
    candidates: int
    proper: int
    evaluations: int
    seconds: float

    def summary(self) -> dict[str, float | int]:
        """The scalars, for ``metrics.json``."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, Tensor)}


class _Counted:
    """``f`` with a count of the points it was evaluated at. A point where ``f`` raises
    (a Pyro model's distribution refusing a scale that underflowed to 0 as the path runs
    down a funnel's neck) counts as log p̃ = −inf: a batch that raises is evaluated again
    point by point. The fit itself still raises there: only the pilot looks so far out."""

    def __init__(self, f: LogDensity) -> None:
        self.f, self.points = f, 0

    def __call__(self, x: Tensor) -> Tensor:
        self.points += x.shape[0]
        try:
            return self.f(x)
        except (ValueError, RuntimeError, FloatingPointError):
            if x.shape[0] == 1:
                return x.sum(-1) * 0 - math.inf  # (connected to x: its gradient is 0)
            return torch.cat([self(row.unsqueeze(0)) for row in x])


def hessian(f: LogDensity, x: Tensor, computed_in: torch.dtype | None = None) -> Tensor:
    """∇² f at ``x (D,)`` by central differences of the gradient, step
    h_i = ε^{1/3} max(1, |x_i|) (ε: the machine epsilon of ``computed_in``, the dtype f
    computes in; default x's), symmetrized: ``(D, D)``."""
    d = x.shape[0]
    h = torch.finfo(computed_in or x.dtype).eps ** (1 / 3) * x.abs().clamp(min=1.0)
    steps = torch.diag(h)
    points = torch.cat([x + steps, x - steps]).requires_grad_(True)
    (grad,) = torch.autograd.grad(f(points).sum(), points)
    cols = (grad[:d] - grad[d:]) / (2 * h[:, None])  # row i: ∂∇f/∂x_i
    return 0.5 * (cols + cols.T)


def laplace(f: LogDensity, x: Tensor, computed_in: torch.dtype | None = None) -> Tensor | None:
    """L with L Lᵀ = (−∇² f(x))⁻¹, or None where −∇² f(x) is not positive definite
    (``computed_in``: see :func:`hessian`)."""
    precision = -hessian(f, x, computed_in)
    if not bool(torch.isfinite(precision).all()):
        return None
    chol, info = torch.linalg.cholesky_ex(precision)
    if int(info) != 0:
        return None
    scale, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol))
    return scale if int(info) == 0 and bool(torch.isfinite(scale).all()) else None


def gaussian_elbo(
    f: LogDensity, m: Tensor, scale_tril: Tensor, eps: Tensor, rejects: bool
) -> float:
    """The ELBO of N(m, L Lᵀ) on the draws ``eps (M, D)``: −inf where log p̃ is not finite at
    some draw (for a target that ``rejects``, at more than a tenth of them; the rest are
    averaged)."""
    with torch.no_grad():
        log_p = f(m + eps @ scale_tril.T)
    log_q = std_normal_log_prob(eps) - scale_tril.diagonal().log().sum()
    w = log_p - log_q
    finite = torch.isfinite(w)
    if not bool(finite.all()) and not (rejects and float(finite.double().mean()) >= 0.9):
        return -math.inf
    return float(w[finite].mean())


def laplace_path(
    f: LogDensity,
    dim: int,
    *,
    dtype: torch.dtype = torch.float64,
    paths: int = 8,
    max_iter: int = 1000,
    candidates: int = 6,
    draws: int = 64,
    rejects: bool = False,
    generator: torch.Generator | None = None,
) -> PilotResult:
    """The pilot of the module docstring for ``f`` ``(N, D) -> (N,)`` on R^``dim``,
    evaluated in ``dtype`` (the pilot's own arithmetic is float64): ``paths`` L-BFGS paths
    (:func:`starts`), ``candidates`` Laplace approximations along each, scored on the
    same ``draws`` draws.

    Raises:
        ValueError: ``dim`` above :data:`MAX_DIM`.
    """
    if dim > MAX_DIM:
        raise ValueError(
            f"family.precondition=laplace_path needs D ≤ {MAX_DIM} (a dense Hessian), got "
            f"D = {dim}: set family.precondition=none"
        )
    start, counted = time.perf_counter(), _Counted(lambda x: f(x.to(dtype)).double())
    eps = torch.randn(draws, dim, generator=generator, dtype=torch.float64)
    zero, eye = torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)
    start_elbo = gaussian_elbo(counted, zero, eye, eps, rejects)
    best = (start_elbo, -1, -1, zero, eye)  # (ELBO, path, iterate, m, L)
    iterations = tried = proper = 0
    for p, path in enumerate(
        lbfgs_paths(counted, starts(counted, dim, paths, generator), max_iter)
    ):
        iterations += len(path) - 1
        picks = sorted({round(i) for i in torch.linspace(0, len(path) - 1, candidates).tolist()})
        tried += len(picks)
        for t in picks:
            scale = laplace(counted, path[t], dtype)
            value = (
                -math.inf if scale is None else gaussian_elbo(counted, path[t], scale, eps, rejects)
            )
            proper += math.isfinite(value)
            if value > best[0]:
                best = (value, p, t, path[t], cast(Tensor, scale))
    return PilotResult(
        shift=best[3],
        scale_tril=best[4],
        elbo=best[0],
        start_elbo=start_elbo,
        path=best[1],
        chosen=best[2],
        iterations=iterations,
        candidates=tried,
        proper=proper,
        evaluations=counted.points,
        seconds=time.perf_counter() - start,
    )


def starts(
    f: LogDensity, dim: int, paths: int, generator: torch.Generator | None = None, tries: int = 100
) -> Tensor:
    """Where the paths start, ``(P, D)``: 0, then ``paths`` − 1 draws from U(−2, 2)^D
    (Stan's default initialization on the unconstrained space), each redrawn up to ``tries``
    times until log p̃ is finite there (a start that never is, is left out). Several paths
    are what find the mode of most mass where the density has several: on posteriordb's
    lotka_volterra the path from 0 ends at a local mode (log p̃ −49.5, its Laplace ELBO
    −58.5) and two of five random starts at the main one (−9.6 and −24.4). With 4 paths
    the pilot missed the main mode for 1 of 6 seeds, with 8 (the default) for none, at
    2.5–3.0 s against 1.5–2.3 s."""
    out = [torch.zeros(dim, dtype=torch.float64)]
    for _ in range(paths - 1):
        x = 4 * torch.rand(tries, dim, generator=generator, dtype=torch.float64) - 2
        finite = torch.isfinite(f(x)).nonzero()
        if finite.numel():
            out.append(x[int(finite[0, 0])])
    return torch.stack(out)


def pending(family: Family) -> tuple[FixedAffine, list[Flow]] | None:
    """The family's :class:`~vilab.flows.affine.FixedAffine` that no pilot has set yet and
    the flows after it (a support's bijection), or None."""
    flows = list(getattr(family, "flows", []))
    for i, flow in enumerate(flows):
        if flow.awaits_pilot:
            return cast(FixedAffine, flow), flows[i + 1 :]
    return None


def precondition(
    family: Family, target: Target, dtype: torch.dtype, device: torch.device, seed: int
) -> PilotResult | None:
    """Run :func:`laplace_path` on the density the family's pending
    :class:`~vilab.flows.affine.FixedAffine` sees, p̃(T(x)) |det ∂T/∂x| (T: the flows after
    it, a support's bijection) on ``device``, in float64 where the target computes in it
    (else the fit's ``dtype``), and set the map to the
    chosen Gaussian; None when nothing is pending. ``seed`` seeds the pilot's draws (its
    own generator: the fit's random stream is untouched)."""
    found = pending(family)
    if found is None:
        return None
    affine, tail = found

    def log_density(x: Tensor) -> Tensor:  # in x's dtype
        x = x.to(device=device)
        total = x.new_zeros(x.shape[:-1])
        for flow in tail:
            x, logdet = flow(x)
            total = total + logdet
        return (target.log_prob(x) + total).to(device="cpu", dtype=torch.float64)

    result = laplace_path(
        log_density,
        affine.dim,
        dtype=_precise(log_density, affine.dim, device.type, dtype),
        rejects=target.rejects,
        generator=torch.Generator().manual_seed(seed),
    )
    affine.set_(result.shift, result.scale_tril)
    return result


def _precise(f: LogDensity, dim: int, device_type: str, dtype: torch.dtype) -> torch.dtype:
    """float64 where ``f`` computes in it (the Hessian's differences need the digits), else
    the fit's ``dtype``."""
    if device_type == "mps":  # (no float64 there)
        return dtype
    try:
        f(torch.zeros(1, dim, dtype=torch.float64))
    except (RuntimeError, TypeError):
        return dtype
    return torch.float64
