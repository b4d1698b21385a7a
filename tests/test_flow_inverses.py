"""Every flow scores any z: the inverses of planar, radial and Sylvester flows, in float64.

* inverse(forward(z)) = z and forward(inverse(z')) = z', with the inverse's log-determinant
  equal to −logdet, free and amortized, one and several layers per module;
* planar at the edge of its constraint (wᵀû = −1 + 1e-6, points on the flat ridge);
* the scalar root solver against known roots, its tolerance and its refusals;
* ``FlowFamily.log_prob(rsample) = log q`` for every kind and for the default mixed stack
  (16 Sylvester-O + 3 spline AR + 2 IAF) built from the config, free and amortized;
* densities integrate to one on a 2-D box through ``log_prob`` on a grid;
* gradients through the inverse reach every parameter and agree with finite differences
  (``gradcheck``), so sticking-the-landing works for these families.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vilab.build import build_family, family_from_config
from vilab.config.family import FamilyConfig, default_stack
from vilab.core.params import FreeParams
from vilab.families import MeanFieldGaussian, StandardNormal
from vilab.families.base import AtContext
from vilab.flows import IAF, Flow, FlowFamily, Planar, Radial, Sylvester
from vilab.flows.base import solve_tanh_root

DT = torch.float64
C = 4  # context width of amortized flows
S, B = 3, 2  # amortized: S samples for each of B context rows
N = 8  # free: number of points

KINDS = [
    "planar",
    "radial",
    "sylvester-orthogonal",
    "sylvester-thin",  # orthogonal with M < D columns
    "sylvester-householder",
    "sylvester-triangular",
]
AMORTIZED = pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized"])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- helpers


def make_flow(kind: str, dim: int, num_layers: int = 1, context_dim: int | None = None):
    """A float64 flow far from the identity: raw parameters N(0, 1), heads perturbed."""
    if kind == "planar":
        flow = Planar(dim, num_layers, context_dim=context_dim)
    elif kind == "radial":
        flow = Radial(dim, num_layers, context_dim=context_dim)
    elif kind == "sylvester-thin":
        flow = Sylvester(dim, num_layers, "orthogonal", num_ortho=dim // 2, context_dim=context_dim)
    else:
        flow = Sylvester(dim, num_layers, kind.split("-")[1], context_dim=context_dim)
    flow = flow.double()
    with torch.no_grad():
        for name, p in flow.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name.endswith("head.weight") else 1.0))
    if kind == "planar":  # wᵀu = ±2: wᵀû ∈ {1.13, −0.87}, clearly away from 0 (the identity)
        u, w = torch.randn(2, num_layers, dim, dtype=DT)
        target = 4.0 * torch.randint(0, 2, (num_layers,), dtype=DT) - 2.0
        set_raw(flow, "u", u + ((target - (w * u).sum(-1)) / (w * w).sum(-1)).unsqueeze(-1) * w)
        set_raw(flow, "w", w)
    if kind == "radial":  # β̃ = ±2: β ≈ 2.1 − α (expanding) or 0.13 − α (contracting)
        set_raw(flow, "beta", 4.0 * torch.randint(0, 2, (num_layers,), dtype=DT) - 2.0)
    return flow


def set_raw(flow, name: str, value: torch.Tensor) -> None:
    """Set an unconstrained parameter: the free value or the amortized head's bias for it."""
    src = flow.params
    with torch.no_grad():
        if isinstance(src, FreeParams):
            src.values[name].copy_(value)
        else:
            i = src.names.index(name)
            start = sum(src.sizes[:i])
            src.head.bias[start : start + src.sizes[i]].copy_(value.reshape(-1))


def points(dim: int, amortized: bool, scale: float = 2.0):
    """``(z, context)``: z (N, D) free, or (S, B, D) with a context (B, C)."""
    if amortized:
        return scale * torch.randn(S, B, dim, dtype=DT), torch.randn(B, C, dtype=DT)
    return scale * torch.randn(N, dim, dtype=DT), None


def grid(half_width: float, n: int) -> tuple[torch.Tensor, float]:
    """Midpoints of an n × n grid on [−L, L]², shape (n², 2), and the cell area."""
    h = 2.0 * half_width / n
    t = -half_width + h * (torch.arange(n, dtype=DT) + 0.5)
    xy = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 2)
    return xy, h * h


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------- 1. inverse ∘ forward


@AMORTIZED
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_inverse_undoes_forward(kind, num_layers, amortized):
    """x = f⁻¹(f(z)) = z and f(f⁻¹(z)) = z, log |det ∂f⁻¹| = −log |det ∂f| at the preimage;
    layers stacked in one module invert in reverse order."""
    dim = 4
    flow = make_flow(kind, dim, num_layers, C if amortized else None)
    assert flow.has_inverse
    z, context = points(dim, amortized)
    y, logdet = flow(z, context)
    assert (y - z).abs().max() > 0.1 and logdet.abs().max() > 0.05  # not the identity
    x, logdet_inv = flow.inverse(y, context)
    assert x.shape == z.shape and logdet_inv.shape == z.shape[:-1]
    close(x, z, 1e-9)
    close(logdet_inv, -logdet, 1e-9)
    # the other way round: any z' (not only images of samples)
    x2, logdet_inv2 = flow.inverse(z, context)
    y2, logdet2 = flow(x2, context)
    close(y2, z, 1e-9)
    close(logdet_inv2, -logdet2, 1e-9)
    if not kind == "radial":  # iterative: the achieved residual is reported and within tol
        assert flow.last_inverse_residual is not None
        assert flow.last_inverse_residual <= flow.tolerance(DT) == 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_inverse_logdet_is_the_autograd_jacobian(kind):
    """log |det ∂f⁻¹/∂z'| against ``jacobian`` + ``slogdet`` of the inverse itself."""
    flow = make_flow(kind, 3, 2)
    y = 2.0 * torch.randn(5, 3, dtype=DT)
    _, logdet_inv = flow.inverse(y)
    for n in range(y.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda t: flow.inverse(t)[0], y[n])
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign > 0
        close(logdet_inv[n], logabs, 1e-9)


@AMORTIZED
def test_planar_inverts_at_the_constraint_boundary(amortized):
    """wᵀû = −1 + 1e-6: f is almost flat across the ridge wᵀz + b = 0 (derivative 1e-6
    along w there); the inverse still recovers z to 1e-6, on and around the ridge."""
    dim, ctx = 2, C if amortized else None
    flow = make_flow("planar", dim, 1, ctx)
    w = torch.tensor([[0.8, -0.6]], dtype=DT)
    u = torch.randn(1, dim, dtype=DT)
    wu_target = math.log(math.expm1(1e-6))  # softplus(wᵀu) = 1e-6, i.e. wᵀû = −1 + 1e-6
    u = u + ((wu_target - (w * u).sum(-1)) / (w * w).sum(-1)).unsqueeze(-1) * w
    set_raw(flow, "u", u)
    set_raw(flow, "w", w)
    z_ridge, context = points(dim, amortized)
    u_hat, w_out, b, wtu_hat = flow.constrained(context)
    if not amortized:  # the head's weight moves the amortized one slightly off the edge
        close(wtu_hat + 1.0, torch.full_like(wtu_hat, 1e-6), 1e-9)
    # put points on the ridge and at 1e-8 … 1e-1 from it along w
    offsets = torch.tensor([0.0, 1e-8, -1e-6, 1e-4, -1e-3, 1e-2, -1e-1, 0.5], dtype=DT)
    w_unit = w_out[..., 0, :] / w_out[..., 0, :].norm(dim=-1, keepdim=True)
    s = (z_ridge * w_out[..., 0, :]).sum(-1) + b[..., 0]  # wᵀz + b
    shift = (offsets[: z_ridge.shape[0]].reshape(-1, *([1] * (z_ridge.dim() - 2))) - s) / (
        w_out[..., 0, :].norm(dim=-1)
    )
    z = z_ridge + shift.unsqueeze(-1) * w_unit
    y, logdet = flow(z, context)
    assert logdet.min() < math.log(1e-5)  # on the ridge the map nearly collapses
    x, logdet_inv = flow.inverse(y, context)
    close(x, z, 1e-6)
    close(logdet_inv, -logdet, 1e-6)
    assert flow.last_inverse_residual <= 1e-10


# --------------------------------------------------------------------- 2. the root solver


def signed_uniform(lo: float, hi: float, n: int) -> torch.Tensor:
    sign = torch.randint(0, 2, (n,), dtype=DT).mul(2).sub(1)
    return (lo + (hi - lo) * torch.rand(n, dtype=DT)) * sign


def test_solver_finds_known_roots():
    """x + a tanh(k x + c) = y with a·k ∈ (−1 + 1e-6, 20): the root to 1e-8, the residual
    at rounding level."""
    n = 4000
    x, c = 3.0 * torch.randn(n, dtype=DT), torch.randn(n, dtype=DT)
    a = signed_uniform(0.2, 5.0, n)
    ak = torch.cat([-1.0 + torch.logspace(-6, 0, n // 2, dtype=DT), 20 * torch.rand(n // 2)])
    k = ak / a
    y = x + a * torch.tanh(k * x + c)
    root, residual = solve_tanh_root(y, a, k, c, 1.0 + ak)
    assert (root - x).abs().max() < 1e-8
    assert residual <= 4 * torch.finfo(DT).eps


def test_solver_at_the_flat_edge():
    """a·k = −1 + 10^(−12…−4) and points 1e-9 … 1e-1 from the flat point k x + c = 0, where
    g' = 1 + a k (1 − t²) falls to 1e-12: the error stays within a small multiple of what
    the conditioning allows, min(δg / g', (3 δg / |a k³|)^(1/3)) for rounding δg of g."""
    n = 4000
    x = 3.0 * torch.randn(n, dtype=DT)
    a = signed_uniform(0.2, 5.0, n)
    ak = -1.0 + torch.logspace(-12, -4, n, dtype=DT)
    k = ak / a
    c = (
        signed_uniform(0.0, 1.0, n).sign() * torch.logspace(-9, -1, n, dtype=DT)[torch.randperm(n)]
        - k * x
    )
    y = x + a * torch.tanh(k * x + c)
    root, residual = solve_tanh_root(y, a, k, c, 1.0 + ak)
    t = torch.tanh(k * x + c)
    slope = t * t + (1.0 + ak) * (1.0 - t * t)
    assert slope.min() < 1e-10  # really at the edge
    noise = torch.finfo(DT).eps * (1.0 + y.abs() + a.abs())
    allowed = torch.minimum(noise / slope, (3.0 * noise / (a * k**3).abs()) ** (1 / 3))
    assert ((root - x).abs() <= 16 * allowed).all()
    assert residual <= 4 * torch.finfo(DT).eps


def test_solver_passes_non_finite_values_through():
    y = torch.tensor([0.3, float("nan"), float("inf"), -2.0], dtype=DT)
    a, k, c = (torch.tensor(v, dtype=DT) for v in (0.5, 1.0, 0.1))
    root, residual = solve_tanh_root(y, a, k, c, 1.0 + a * k)
    assert torch.isfinite(root[[0, 3]]).all() and not torch.isfinite(root[[1, 2]]).any()
    assert residual < 1e-15


@pytest.mark.parametrize("kind", ["planar", "sylvester-orthogonal"])
def test_inverse_tolerance_is_checked_and_validated(kind):
    """A tolerance below what float64 can reach is refused with the residual named."""
    flow = make_flow(kind, 3, 3)
    flow.inverse_tol = 1e-300
    with pytest.raises(RuntimeError, match="did not converge: relative residual"):
        flow.inverse(2.0 * torch.randn(200, 3, dtype=DT))
    assert 0 < flow.last_inverse_residual < 1e-14
    cls = Planar if kind == "planar" else Sylvester
    for bad in (0.0, -1e-6, "1e-6"):
        with pytest.raises(ValueError, match="inverse_tol must be a positive number"):
            cls(3, inverse_tol=bad)
    assert cls(3, inverse_tol=1e-4).float().tolerance(torch.float32) == 1e-4
    assert cls(3).tolerance(torch.float32) == 1e-6


# ----------------------------------------------------------- 3. FlowFamily.log_prob


class _Shift(Flow):
    """A user's flow without an inverse."""

    dim = 2

    def forward(self, z, context=None, trace=None):
        return z + 1.0, z.new_zeros(z.shape[:-1])


def test_has_inverse_is_true_for_every_vilab_flow_and_false_for_one_without():
    flows = [make_flow(k, 2) for k in KINDS] + [IAF(2, hidden=(4,)).double()]
    assert all(f.has_inverse for f in flows)
    assert FlowFamily(StandardNormal(2), flows).has_log_prob
    family = FlowFamily(StandardNormal(2), [*flows, _Shift()])
    assert not _Shift().has_inverse and not family.has_log_prob
    with pytest.raises(NotImplementedError, match="no inverse for _Shift"):
        family.log_prob(torch.zeros(3, 2, dtype=DT))


def stack_of(kind: str, dim: int, ctx: int | None) -> list:
    return [make_flow(kind, dim, 2, ctx), make_flow(kind, dim, 1, ctx)]


@AMORTIZED
@pytest.mark.parametrize("kind", [*KINDS, "mixed"])
def test_family_log_prob_equals_sample_log_q(kind, amortized):
    """log_prob(z) through the inverses = the log q returned with the sample."""
    dim, ctx = 4, C if amortized else None
    base = MeanFieldGaussian(dim, ctx, init_loc_scale=0.5).double()
    if kind == "mixed":
        flows = [make_flow(k, dim, 2, ctx) for k in KINDS]
        flows.insert(3, IAF(dim, hidden=(8,), context_dim=ctx).double())
    else:
        flows = stack_of(kind, dim, ctx)
    family = FlowFamily(base, flows)
    assert family.has_log_prob
    context = torch.randn(B, C, dtype=DT) if amortized else None
    z, log_q = family.rsample_and_log_prob(5, context)
    close(family.log_prob(z, context), log_q, 1e-9)
    if amortized:  # one context row as a free family
        at = AtContext(family, context[:1])
        assert at.has_log_prob
        close(at.log_prob(z[:, 0]), log_q[:, 0], 1e-9)


def perturb(module: nn.Module, scale: float) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


@AMORTIZED
def test_default_stack_log_prob_equals_sample_log_q(amortized):
    """vilab's default family (16 Sylvester-O + 3 spline AR + 2 IAF) built from the config, and the same
    stack amortized through ``build_family``, score their own samples exactly."""
    ctx = C if amortized else None
    if amortized:
        specs = [s.model_dump() for s in default_stack(2)]
        family = build_family("stack", 2, ctx, stack=specs)
    else:
        family = family_from_config(FamilyConfig(), 2)
    family = perturb(family.double(), 0.1)
    assert [f.num_layers for f in family.flows] == [16, 1, 1, 1, 1, 1]
    assert family.has_log_prob
    context = torch.randn(B, C, dtype=DT) if amortized else None
    z, log_q = family.rsample_and_log_prob(50, context)
    close(family.log_prob(z, context), log_q, 1e-8)


# ------------------------------------------------------------ 4. densities integrate to 1


@pytest.mark.parametrize("kind", ["planar", "radial", "sylvester-orthogonal"])
def test_density_integrates_to_one(kind):
    """∫ q = 1 on [−9, 9]² by the midpoint rule on log_prob: only if every inverse and its
    log-determinant are right (a wrong Jacobian factor shows at once)."""
    base = StandardNormal(2).double()
    flows = [make_flow(kind, 2, 3)]
    with torch.no_grad():  # moderate maps, so all mass stays inside the box
        if kind == "planar":
            flows[0].params.values["u"].mul_(0.7)
        if kind == "sylvester-orthogonal":
            flows[0].params.values["r"].mul_(0.7)
    family = FlowFamily(base, flows)
    xy, area = grid(9.0, 240)
    with torch.no_grad():
        log_q = family.log_prob(xy)
        z, _ = family.rsample_and_log_prob(5000)
    assert (z.abs() < 7.0).float().mean() > 0.999  # the box holds the mass
    mass = log_q.exp().sum() * area
    assert abs(mass.item() - 1.0) < 2e-3
    # not vacuous: q is far from the base
    assert (log_q - base.log_prob(xy)).abs().max() > 1.0


# ------------------------------------------------------------------ 5. gradients


class _Inverse(nn.Module):
    def __init__(self, flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z, context):
        return self.flow.inverse(z, context)


@AMORTIZED
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_through_the_inverse(kind, amortized):
    """log_prob's gradient reaches every parameter and the context, and the inverse's
    gradients agree with finite differences (the solve is differentiated implicitly)."""
    dim, ctx = 2, C if amortized else None
    family = FlowFamily(MeanFieldGaussian(dim, ctx).double(), [make_flow(kind, dim, 2, ctx)])
    z, context = points(dim, amortized, scale=1.5)
    if amortized:
        context.requires_grad_(True)
    family.log_prob(z, context).sum().backward()
    for name, p in family.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
    if amortized:
        assert context.grad is not None and context.grad.abs().max() > 0

    flow = family.flows[0]
    names = [n for n, _ in flow.named_parameters() if not n.endswith("head.weight")]
    z = z[:2].clone().requires_grad_(True)
    ctx_in = None if context is None else context.detach()

    def f(z, *params):
        out = torch.func.functional_call(
            _Inverse(flow), {f"flow.{n}": p for n, p in zip(names, params)}, (z, ctx_in)
        )
        return out

    params = [dict(flow.named_parameters())[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, (z, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["planar", "radial", "sylvester-householder"])
def test_sticking_the_landing_is_allowed(kind):
    """STL needs log_prob: the surrogate equals log q in value, and its gradient reaches the
    parameters through z only (Roeder et al. 2017)."""
    family = FlowFamily(MeanFieldGaussian(2).double(), stack_of(kind, 2, None))
    s = family.training_sample(6, stl=True)
    assert s.has_surrogate
    close(s.log_q_surrogate, s.log_q, 1e-9)
    s.log_q_surrogate.sum().backward()
    grads = [p.grad for p in family.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)
