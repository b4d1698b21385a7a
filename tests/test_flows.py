"""Maths tests of the flows (src/vilab/flows) and of FlowFamily, in float64.

* log-determinants against ``torch.autograd.functional.jacobian`` + ``slogdet``, free and
  amortized, typical and extreme parameters;
* the invertibility constraints (planar wᵀû > −1, radial α > 0 and β ≥ −α, Sylvester
  diag(R)·diag(R̃) ∈ (−1, 1) with orthonormal Q) and a positive Jacobian determinant;
* every parameter gets a gradient; IAF inverts; stacks integrate to one on a grid.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from vilab.core.params import FreeParams
from vilab.families import FullRankGaussian, MeanFieldGaussian, StandardNormal
from vilab.flows import IAF, FlowFamily, Planar, Radial, Sylvester

DT = torch.float64
C = 4  # context width of amortized flows
S, B = 2, 3  # amortized: S samples for each of B context rows
N = 4  # free: number of points

KINDS = [
    "planar",
    "radial",
    "sylvester-orthogonal",
    "sylvester-thin",  # orthogonal with M < D columns
    "sylvester-householder",
    "sylvester-triangular",
    "iaf",
    "iaf-reverse",
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- helpers


def make_flow(kind: str, dim: int, num_layers: int = 1, context_dim: int | None = None):
    """A float64 flow with non-trivial (randomized) parameters; IAF ignores num_layers."""
    if kind == "planar":
        flow = Planar(dim, num_layers, context_dim=context_dim, init_scale=1.0)
    elif kind == "radial":
        flow = Radial(dim, num_layers, context_dim=context_dim)
    elif kind == "sylvester-thin":
        flow = Sylvester(dim, num_layers, "orthogonal", num_ortho=dim // 2, context_dim=context_dim)
    elif kind.startswith("sylvester-"):
        flow = Sylvester(dim, num_layers, kind.split("-")[1], context_dim=context_dim)
    elif kind.startswith("iaf"):
        flow = IAF(dim, hidden=(8, 8), context_dim=context_dim, reverse=kind == "iaf-reverse")
    else:  # pragma: no cover
        raise AssertionError(kind)
    flow = flow.double()
    if not kind.startswith("iaf"):  # raw parameters N(0, 1), whatever the initialization
        for name in raw_names(flow):
            set_raw(flow, name, torch.randn(raw_shape(flow, name), dtype=DT))
    if kind == "planar":  # wᵀu = ±2: wᵀû ∈ {1.13, −0.87}, clearly away from 0 (the identity)
        u, w = torch.randn(2, num_layers, dim, dtype=DT)
        target = 2.0 * torch.randint(0, 2, (num_layers,), dtype=DT) * 2.0 - 2.0
        u = u + ((target - (w * u).sum(-1)) / (w * w).sum(-1)).unsqueeze(-1) * w
        set_raw(flow, "u", u)
        set_raw(flow, "w", w)
    randomize(flow)
    return flow


def randomize(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Perturb every parameter, so amortized heads really depend on the context and no
    flow sits at a symmetric initial point."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def raw_names(flow) -> list[str]:
    src = flow.params
    return list(src.values) if isinstance(src, FreeParams) else list(src.names)


def raw_shape(flow, name: str) -> tuple[int, ...]:
    src = flow.params
    if isinstance(src, FreeParams):
        return tuple(src.values[name].shape)
    return src.shapes[src.names.index(name)]


def set_raw(flow, name: str, value: torch.Tensor) -> None:
    """Set an unconstrained parameter: the free value, or the amortized head's bias for it
    (the context then only perturbs it through the head's weight)."""
    src = flow.params
    with torch.no_grad():
        if isinstance(src, FreeParams):
            src.values[name].copy_(value)
        else:
            i = src.names.index(name)
            start = sum(src.sizes[:i])
            src.head.bias[start : start + src.sizes[i]].copy_(value.reshape(-1))


def uniform(lo: float, hi: float, shape, signed: bool = True) -> torch.Tensor:
    x = lo + (hi - lo) * torch.rand(shape, dtype=DT)
    return x * torch.randint(0, 2, shape, dtype=DT).mul(2).sub(1) if signed else x


def make_extreme(flow, kind: str) -> None:
    """Push the raw parameters to the edge of the constraints."""
    if kind == "planar":
        w = uniform(5.0, 20.0, raw_shape(flow, "w"))
        # u ≈ −c·w: wᵀu very negative, so û is pulled hard to wᵀû ≈ −1
        u = -uniform(0.2, 1.0, raw_shape(flow, "u")[:-1], signed=False).unsqueeze(-1) * w
        set_raw(flow, "w", w)
        set_raw(flow, "u", u + torch.randn_like(u))
        set_raw(flow, "b", uniform(0.0, 5.0, raw_shape(flow, "b")))
    elif kind == "radial":
        k = raw_shape(flow, "alpha")[0]
        # layer-wise alternate: α large with β → −α (near-singular), and α → 0 with β large
        alpha = torch.tensor([20.0, -20.0], dtype=DT).repeat(k)[:k]
        beta = torch.tensor([-20.0, 20.0], dtype=DT).repeat(k)[:k]
        set_raw(flow, "alpha", alpha)
        set_raw(flow, "beta", beta)
    elif kind.startswith("sylvester"):
        for name, sign in (("r", 1.0), ("r_tilde", -1.0)):
            r = 5.0 * torch.randn(raw_shape(flow, name), dtype=DT)
            # diagonals of opposite signs, |raw| up to 20: tanh saturates, the product → −1
            diag = uniform(5.0, 20.0, r.shape[:-1], signed=False)
            r.diagonal(dim1=-2, dim2=-1).copy_(sign * diag)
            set_raw(flow, name, r)
        set_raw(flow, "b", 3.0 * torch.randn(raw_shape(flow, "b"), dtype=DT))
    elif kind.startswith("iaf"):
        out = flow.made.out
        with torch.no_grad():
            out.weight.normal_(0.0, 3.0)
            out.bias.copy_(uniform(3.0, 10.0, out.bias.shape))  # gates σ(s) from ~5e-5 to ~1
    else:  # pragma: no cover
        raise AssertionError(kind)


def points(
    dim: int, amortized: bool, scale: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``z`` of shape (N, D) and no context, or (S, B, D) and a context (B, C)."""
    if amortized:
        return scale * torch.randn(S, B, dim, dtype=DT), torch.randn(B, C, dtype=DT)
    return scale * torch.randn(N, dim, dtype=DT), None


def onto_first_planar_hyperplane(flow: Planar, z: torch.Tensor, context) -> torch.Tensor:
    """Move z along w₁ so that w₁ᵀz + b₁ ∈ (−1, 1): with |w| ~ 20 random points would all
    saturate tanh, and the first layer would be a plain translation there."""
    _, w, b, _ = flow.constrained(context)
    w0, b0 = w[..., 0, :], b[..., 0]
    target = 2.0 * torch.rand(z.shape[:-1], dtype=DT) - 1.0
    pre = (z * w0).sum(-1) + b0
    return z + ((target - pre) / (w0 * w0).sum(-1)).unsqueeze(-1) * w0


def rowwise_slogdet(fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign and log|det| of the Jacobian of ``fn: (..., D) -> (..., D)`` for every row of z.

    The Jacobian of the whole batch is taken and its off-diagonal blocks are checked to be
    zero: a flow maps each sample on its own.
    """
    d = z.shape[-1]
    flat = z.detach().reshape(-1, d)
    n = flat.shape[0]
    jac = jacobian(lambda x: fn(x.reshape(z.shape)).reshape(n, d), flat)  # (n, D, n, D)
    idx = torch.arange(n)
    blocks = jac[idx, :, idx, :]  # (n, D, D)
    off = jac.clone()
    off[idx, :, idx, :] = 0.0
    assert off.abs().max() == 0.0, "a flow mixes different samples"
    sign, logabs = torch.linalg.slogdet(blocks)
    return sign.reshape(z.shape[:-1]), logabs.reshape(z.shape[:-1])


def flow_cases():
    for kind in KINDS:
        for dim in (1, 2, 3, 5):
            if kind == "sylvester-thin" and dim < 2:
                continue
            for k in (1,) if kind.startswith("iaf") else (1, 3):
                yield pytest.param(kind, dim, k, id=f"{kind}-D{dim}-K{k}")


AMORTIZED = pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized"])


# ---------------------------------------------------------------- 1. log-determinants


@AMORTIZED
@pytest.mark.parametrize("extreme", [False, True], ids=["typical", "extreme"])
@pytest.mark.parametrize("kind, dim, num_layers", list(flow_cases()))
def test_logdet_matches_autograd_jacobian(kind, dim, num_layers, amortized, extreme):
    flow = make_flow(kind, dim, num_layers, C if amortized else None)
    if extreme:
        make_extreme(flow, kind)
    z, context = points(dim, amortized)
    if extreme and kind == "planar":
        z = onto_first_planar_hyperplane(flow, z, context)

    out, logdet = flow(z, context)
    assert out.shape == z.shape and logdet.shape == z.shape[:-1]
    assert torch.isfinite(out).all() and torch.isfinite(logdet).all()

    sign, expected = rowwise_slogdet(lambda x: flow(x, context)[0], z)
    # orientation: every flow here is an orientation-preserving bijection, det J > 0
    assert (sign > 0).all()
    assert logdet.abs().max() > 1e-3  # the flow is not the identity
    tol = 1e-6 if extreme else 1e-9
    torch.testing.assert_close(logdet, expected, rtol=tol, atol=tol)


def test_logdet_check_is_not_vacuous():
    """The Jacobian comparison tells the radial formula from a wrong one (without the
    (D − 1) log(1 + βh) term)."""
    flow = make_flow("radial", 3, 1)
    z, _ = points(3, False)
    _, expected = rowwise_slogdet(lambda x: flow(x)[0], z)
    z0, alpha, beta = flow.constrained()
    h = 1.0 / (alpha[0] + (z - z0[0]).norm(dim=-1))
    right = 2 * torch.log1p(beta[0] * h) + torch.log1p(beta[0] * alpha[0] * h * h)
    wrong = torch.log1p(beta[0] * alpha[0] * h * h)
    torch.testing.assert_close(right, expected)
    assert (wrong - expected).abs().min() > 1e-2


@AMORTIZED
@pytest.mark.parametrize("kind", KINDS)
def test_trace_records_every_layer(kind, amortized):
    flow = make_flow(kind, 3, 2, C if amortized else None)
    z, context = points(3, amortized)
    trace: list[torch.Tensor] = []
    out, _ = flow(z, context, trace)
    assert len(trace) == flow.num_layers
    torch.testing.assert_close(trace[-1], out)


@pytest.mark.parametrize("kind", KINDS)
def test_amortized_rows_use_their_own_parameters(kind):
    """Free or amortized is only a parameter source: row b of an amortized flow is the flow
    with the parameters of context row b (and not those of another row)."""
    dim = 3
    flow = make_flow(kind, dim, 2, C)
    _, context = points(dim, amortized=True)
    z = torch.randn(S, 1, dim, dtype=DT).expand(S, B, dim)  # the same z in every row
    out, logdet = flow(z, context)
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3  # so rows differ by their context only
    for b in range(B):
        out_b, logdet_b = flow(z[:, b : b + 1], context[b : b + 1])
        torch.testing.assert_close(out[:, b], out_b[:, 0])
        torch.testing.assert_close(logdet[:, b], logdet_b[:, 0])
        if kind.startswith("iaf"):  # IAF's context enters its MADE, not a parameter head
            continue
        free = make_flow(kind, dim, 2, None)
        with torch.no_grad():
            for name, value in flow.params(context).items():
                free.params.values[name].copy_(value[b])
        out_free, logdet_free = free(z[:, b])
        torch.testing.assert_close(out[:, b], out_free)
        torch.testing.assert_close(logdet[:, b], logdet_free)


# ------------------------------------------------------------ 2. invertibility constraints


@AMORTIZED
@pytest.mark.parametrize("c", [-3.0, 0.0, 0.5, 1.0, 2.0, 5.0])
def test_planar_constraint_wtu_hat_above_minus_one(c, amortized):
    """û = u + (m(wᵀu) − wᵀu) w/‖w‖², m = softplus − 1, so wᵀû = m(wᵀu) > −1, even for
    adversarial u = −c·w (wᵀu = −c‖w‖² down to −20 here, where −1 + softplus is still
    representable in float64)."""
    dim, k = 3, 4
    flow = Planar(dim, k, context_dim=C if amortized else None).double()
    randomize(flow, 0.05)
    w = torch.randn(k, dim, dtype=DT)
    w = w / w.norm(dim=-1, keepdim=True) * torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=DT)[:, None]
    set_raw(flow, "w", w)
    set_raw(flow, "u", -c * w)
    context = torch.randn(B, C, dtype=DT) if amortized else None

    raw = flow.params(context)
    u_hat, w_out, _, wtu_hat = flow.constrained(context)
    wtu = (raw["w"] * raw["u"]).sum(-1)
    torch.testing.assert_close(wtu_hat, F.softplus(wtu) - 1.0)
    torch.testing.assert_close((w_out * u_hat).sum(-1), wtu_hat)
    assert (wtu_hat > -1.0).all()
    if c >= 1.0:
        assert (wtu < -1.0).any()  # the raw parameters did violate the constraint
    # only the component of u along w changes
    delta = u_hat - raw["u"]
    along = (delta * raw["w"]).sum(-1, keepdim=True) / (raw["w"] ** 2).sum(-1, keepdim=True)
    torch.testing.assert_close(delta, along * raw["w"])


@AMORTIZED
def test_planar_constraint_at_huge_raw_values(amortized):
    """With |u|, |w| ~ 20 and u = −w, wᵀu ~ −10³: −1 + softplus(wᵀu) rounds to −1 in float64,
    so wᵀû ≥ −1 (not >), but the log-determinant stays finite off the hyperplane wᵀz + b = 0."""
    dim, k = 3, 3
    flow = Planar(dim, k, context_dim=C if amortized else None).double()
    w = uniform(5.0, 20.0, (k, dim))
    set_raw(flow, "w", w)
    set_raw(flow, "u", -w)
    z, context = points(dim, amortized)
    *_, wtu_hat = flow.constrained(context)
    assert (wtu_hat >= -1.0).all()
    _, logdet = flow(z, context)
    assert torch.isfinite(logdet).all()


@AMORTIZED
@pytest.mark.parametrize("raw_alpha", [-30.0, -5.0, 0.0, 5.0, 30.0])
@pytest.mark.parametrize("raw_beta", [-30.0, -5.0, 0.0, 5.0, 30.0])
def test_radial_constraint(raw_alpha, raw_beta, amortized):
    """α = softplus(α̃) > 0 and β = −α + softplus(β̃) ≥ −α, so 1 + βh > 0 everywhere."""
    dim, k = 3, 2
    flow = Radial(dim, k, context_dim=C if amortized else None).double()
    randomize(flow, 0.05)
    set_raw(flow, "alpha", torch.full((k,), raw_alpha, dtype=DT))
    set_raw(flow, "beta", torch.full((k,), raw_beta, dtype=DT))
    z, context = points(dim, amortized)

    raw = flow.params(context)
    z0, alpha, beta = flow.constrained(context)
    assert (alpha > 0).all()
    assert (beta >= -alpha).all()
    torch.testing.assert_close(alpha, F.softplus(raw["alpha"]))
    torch.testing.assert_close(beta + alpha, F.softplus(raw["beta"]), rtol=1e-12, atol=1e-12)
    r = (z.unsqueeze(-2) - z0).norm(dim=-1)  # (..., K)
    assert (1.0 + beta / (alpha + r) > 0).all()
    _, logdet = flow(z, context)
    assert torch.isfinite(logdet).all()


SYLVESTER_Q = [
    pytest.param("orthogonal", None, id="orthogonal"),
    pytest.param("orthogonal", 2, id="orthogonal-M2"),
    pytest.param("householder", None, id="householder"),
    pytest.param("triangular", None, id="triangular"),
]


@AMORTIZED
@pytest.mark.parametrize("kind, num_ortho", SYLVESTER_Q)
def test_sylvester_factors(kind, num_ortho, amortized):
    """Q has orthonormal columns (a permutation for T-SNF), R and R̃ are upper triangular
    and d = diag(R)·diag(R̃) ∈ (−1, 1) even for large raw diagonals of opposite signs."""
    dim, k = 4, 3
    flow = Sylvester(
        dim, k, kind, num_ortho=num_ortho, num_householder=3, context_dim=C if amortized else None
    ).double()
    randomize(flow)
    m = flow.m
    for name, sign in (("r", 1.0), ("r_tilde", -1.0)):
        r = torch.randn(raw_shape(flow, name), dtype=DT)
        r.diagonal(dim1=-2, dim2=-1).copy_(sign * uniform(4.0, 8.0, (k, m), signed=False))
        set_raw(flow, name, r)
    context = torch.randn(B, C, dtype=DT) if amortized else None

    q = flow.orthonormal(flow.params(context))
    a, bm, _, d = flow.factors(context)
    assert q.shape[-3:] == (k, dim, m)
    eye_m = torch.eye(m, dtype=DT)
    torch.testing.assert_close(q.transpose(-1, -2) @ q, eye_m.expand_as(q.transpose(-1, -2) @ q))
    if kind != "orthogonal":
        assert m == dim
        torch.testing.assert_close(q @ q.transpose(-1, -2), torch.eye(dim, dtype=DT).expand_as(q))
    if kind == "triangular":
        assert ((q == 0) | (q == 1)).all()
        assert (q.sum(-1) == 1).all() and (q.sum(-2) == 1).all()
        torch.testing.assert_close(q[0], torch.eye(dim, dtype=DT))
        torch.testing.assert_close(q[1], torch.eye(dim, dtype=DT).flip(-1))

    r = q.transpose(-1, -2) @ a  # A = QR
    r_tilde = (q.transpose(-1, -2) @ bm).transpose(-1, -2)  # Bm = Q R̃ᵀ
    torch.testing.assert_close(q @ r, a)  # A lies in the span of Q
    assert r.tril(-1).abs().max() < 1e-12 and r_tilde.tril(-1).abs().max() < 1e-12
    diag = r.diagonal(dim1=-2, dim2=-1) * r_tilde.diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(d, diag)
    assert (d > -1).all() and (d < 1).all()
    assert (d < -0.99).all()  # the test really sits near the edge


# ---------------------------------------------------------------------- 3. gradients


def assert_all_gradients(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@AMORTIZED
@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind, amortized):
    dim, ctx = 3, C if amortized else None
    family = FlowFamily(MeanFieldGaussian(dim, ctx).double(), [make_flow(kind, dim, 2, ctx)])
    context = torch.randn(B, C, dtype=DT, requires_grad=True) if amortized else None
    z, log_q = family.rsample_and_log_prob(5, context)
    (z.sum() + z.square().sum() + log_q.sum()).backward()
    assert_all_gradients(family)
    if amortized:
        assert torch.isfinite(context.grad).all() and context.grad.abs().sum() > 0


def mixed_stack(dim: int, context_dim: int | None) -> list:
    return [
        make_flow("planar", dim, 2, context_dim),
        make_flow("radial", dim, 2, context_dim),
        make_flow("sylvester-orthogonal", dim, 1, context_dim),
        make_flow("sylvester-householder", dim, 1, context_dim),
        make_flow("sylvester-triangular", dim, 2, context_dim),
        make_flow("iaf", dim, 1, context_dim),
    ]


@AMORTIZED
def test_every_parameter_of_a_mixed_stack_gets_a_gradient(amortized):
    dim, ctx = 3, C if amortized else None
    family = FlowFamily(FullRankGaussian(dim, ctx).double(), mixed_stack(dim, ctx))
    randomize(family.base)
    context = torch.randn(B, C, dtype=DT) if amortized else None
    z, log_q = family.rsample_and_log_prob(5, context)
    (z.sum() + z.square().sum() + log_q.sum()).backward()
    assert_all_gradients(family)


# --------------------------------------------------------------- FlowFamily bookkeeping


@AMORTIZED
def test_flow_family_log_q_is_base_minus_total_logdet(amortized):
    """log q(z_K) = log q₀(z₀) − log |det ∂z_K/∂z₀| for a stack of every kind of flow."""
    dim, ctx = 3, C if amortized else None
    base = FullRankGaussian(dim, ctx).double()
    randomize(base)
    flows = mixed_stack(dim, ctx)
    family = FlowFamily(base, flows)
    context = torch.randn(B, C, dtype=DT) if amortized else None

    torch.manual_seed(1)
    trace: list[torch.Tensor] = []
    z, log_q = family.rsample_and_log_prob(S, context, trace)
    torch.manual_seed(1)
    z0, log_q0 = base.rsample_and_log_prob(S, context)

    def push(x):
        for f in flows:
            x, _ = f(x, context)
        return x

    assert len(trace) == 1 + family.num_layers == 1 + 2 + 2 + 1 + 1 + 2 + 1
    torch.testing.assert_close(trace[0], z0)
    torch.testing.assert_close(push(z0), z)
    sign, logabs = rowwise_slogdet(push, z0)
    assert (sign > 0).all()
    torch.testing.assert_close(log_q, log_q0 - logabs, rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------------------------- 5. IAF


def strong_iaf(
    dim: int, context_dim: int | None, reverse: bool, scale: float = 0.5, perturb: bool = True
) -> IAF:
    """An IAF far from the identity: shifts of order one, gates spread over (0, 1)."""
    flow = IAF(dim, hidden=(16, 16), context_dim=context_dim, reverse=reverse).double()
    if perturb:
        randomize(flow)
    with torch.no_grad():
        flow.made.out.weight.normal_(0.0, scale)
        flow.made.out.bias.normal_(0.0, 1.0)
    return flow


@AMORTIZED
@pytest.mark.parametrize("reverse", [False, True], ids=["natural", "reversed"])
@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_iaf_inverse(dim, reverse, amortized):
    flow = strong_iaf(dim, C if amortized else None, reverse)
    z, context = points(dim, amortized)
    y, logdet = flow(z, context)
    x, logdet_inv = flow.inverse(y, context)
    torch.testing.assert_close(x, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=1e-10, atol=1e-10)
    if dim > 1:
        assert (y - z).abs().max() > 0.1  # not the identity
        assert logdet.abs().min() > 1e-3
    # and the other way round
    y2, _ = flow(flow.inverse(z, context)[0], context)
    torch.testing.assert_close(y2, z, rtol=1e-10, atol=1e-10)


BASES = {
    "standard": lambda dim, ctx: StandardNormal(dim, ctx),
    "mean-field": lambda dim, ctx: MeanFieldGaussian(dim, ctx, init_loc_scale=1.0),
    "full-rank": lambda dim, ctx: FullRankGaussian(dim, ctx),
}


@AMORTIZED
@pytest.mark.parametrize("base", list(BASES))
def test_iaf_family_log_prob_equals_sample_log_q(base, amortized):
    dim, ctx = 3, C if amortized else None
    base_family = BASES[base](dim, ctx).double()
    randomize(base_family)
    flows = [strong_iaf(dim, ctx, reverse=bool(i % 2)) for i in range(3)]
    family = FlowFamily(base_family, flows)
    assert family.has_log_prob
    context = torch.randn(B, C, dtype=DT) if amortized else None
    z, log_q = family.rsample_and_log_prob(5, context)
    assert z.shape == ((5, B, dim) if amortized else (5, dim))
    torch.testing.assert_close(family.log_prob(z, context), log_q, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------ 7. densities integrate to 1


def grid(half_width: float, n: int) -> tuple[torch.Tensor, float]:
    """Midpoints of an n × n grid on [−L, L]², shape (n², 2), and the cell area."""
    h = 2.0 * half_width / n
    t = -half_width + h * (torch.arange(n, dtype=DT) + 0.5)
    xy = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 2)
    return xy, h * h


@AMORTIZED
def test_iaf_family_integrates_to_one(amortized):
    ctx = C if amortized else None
    base = MeanFieldGaussian(2, ctx, init_loc_scale=0.5).double()
    # milder weights than elsewhere: s is unbounded in z (ELU), and far out on the box the
    # inverse of a strong IAF stack divides by gates σ(s) ~ 1e-7 twice and overflows
    flows = [strong_iaf(2, ctx, rev, scale=0.3, perturb=False) for rev in (False, True)]
    family = FlowFamily(base, flows)
    xy, area = grid(8.0, 200)
    with torch.no_grad():
        if amortized:
            context = torch.randn(B, C, dtype=DT)
            log_p = family.log_prob(xy.unsqueeze(1).expand(-1, B, -1), context)  # (n², B)
        else:
            log_p = family.log_prob(xy)
    mass = log_p.exp().sum(0) * area
    torch.testing.assert_close(mass, torch.ones_like(mass), rtol=0, atol=1e-2)
    # not vacuous: the stack is far from the base (whose log-density is the one integrated)
    base_log_p = (
        base.log_prob(xy.unsqueeze(1).expand(-1, B, -1), context)
        if amortized
        else base.log_prob(xy)
    )
    assert (log_p - base_log_p).abs().max() > 1.0


def invert_planar(flow: Planar, y: torch.Tensor, iters: int = 40) -> torch.Tensor:
    """Test-side inverse of a free planar stack: layer by layer, solve the monotone scalar
    equation a + (wᵀû) tanh(a + b) = wᵀy for a = wᵀz by bisection."""
    u_hat, w, b, wtu_hat = flow.constrained()
    for k in reversed(range(flow.num_layers)):
        target = y @ w[k]
        span = wtu_hat[k].abs() + 1.0
        lo, hi = target - span, target + span
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = mid + wtu_hat[k] * torch.tanh(mid + b[k]) > target
            lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        y = y - torch.tanh(0.5 * (lo + hi) + b[k]).unsqueeze(-1) * u_hat[k]
    return y


def invert_radial(flow: Radial, y: torch.Tensor) -> torch.Tensor:
    """Test-side inverse of a free radial stack: ‖y − z₀‖ = r (α + β + r)/(α + r) is a
    quadratic in r = ‖z − z₀‖; then z − z₀ = (y − z₀)/(1 + β/(α + r))."""
    z0, alpha, beta = flow.constrained()
    for k in reversed(range(flow.num_layers)):
        a, bt = alpha[k], beta[k]
        diff = y - z0[k]
        rho = diff.norm(dim=-1)
        p = a + bt - rho
        r = 0.5 * (-p + torch.sqrt(p * p + 4.0 * rho * a))
        y = z0[k] + diff / (1.0 + bt / (a + r)).unsqueeze(-1)
    return y


@pytest.mark.parametrize("kind, n", [("planar", 400), ("planar-adversarial", 400), ("radial", 400)])
def test_planar_radial_density_integrates_to_one(kind, n):
    """Planar and radial stacks have no inverse in the library; invert them here (bisection,
    quadratic), score the grid with log q₀(z₀) − logdet and integrate. The mass is 1 only if
    the map is a bijection and the log-determinant is right."""
    base = MeanFieldGaussian(2, init_loc_scale=0.5).double()
    randomize(base)
    if kind.startswith("planar"):
        flow = make_flow("planar", 2, 3)
        if kind == "planar-adversarial":
            # u = −w with ‖w‖ = 1.2: raw wᵀu = −1.44 breaks invertibility, the constraint
            # gives wᵀû = softplus(−1.44) − 1 ≈ −0.79; w at 0°, 60°, 120° so the ridges of
            # the three layers cross instead of piling up beyond the grid's resolution
            angle = torch.tensor([0.0, 1.0, 2.0], dtype=DT) * math.pi / 3
            w = 1.2 * torch.stack([angle.cos(), angle.sin()], dim=-1)
            set_raw(flow, "w", w)
            set_raw(flow, "u", -w)
        invert = invert_planar
    else:
        flow = make_flow("radial", 2, 3)
        invert = invert_radial
    xy, area = grid(8.0, n)
    with torch.no_grad():
        z0 = invert(flow, xy)
        y, logdet = flow(z0)
        torch.testing.assert_close(y, xy, rtol=1e-9, atol=1e-9)
        log_q = base.log_prob(z0) - logdet
    mass = log_q.exp().sum() * area
    assert abs(mass.item() - 1.0) < 1e-2
    assert logdet.abs().max() > 0.3  # the flow is not near the identity


# ------------------------------------------------------------------------ 6. bad input


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Planar(0), "dim must be a positive integer, got 0"),
        (lambda: Radial(0), "dim must be a positive integer, got 0"),
        (lambda: Sylvester(0), "dim must be a positive integer, got 0"),
        (lambda: IAF(0), "dim must be a positive integer, got 0"),
        (lambda: Planar(2, num_layers=0), "num_layers must be a positive integer, got 0"),
        (lambda: Radial(2, num_layers=0), "num_layers must be a positive integer, got 0"),
        (lambda: Sylvester(2, num_layers=0), "num_layers must be a positive integer, got 0"),
        (lambda: Planar(2.5), "dim must be a positive integer, got 2.5"),
        (lambda: Sylvester(3, kind="foo"), "kind must be .*got 'foo'"),
        (lambda: Sylvester(3, num_ortho=4), r"num_ortho must be in \[1, dim=3\], got 4"),
        (lambda: Sylvester(3, num_ortho=0), r"num_ortho must be in \[1, dim=3\], got 0"),
        (lambda: Sylvester(3, kind="householder", num_householder=0), "num_householder"),
        (lambda: Planar(2, context_dim=0), "context_dim must be a positive integer, got 0"),
        (lambda: FlowFamily(StandardNormal(2), [Planar(3)]), "Planar has dim 3, base has 2"),
    ],
)
def test_bad_construction_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("kind", KINDS)
def test_bad_context_raises(kind):
    z = torch.randn(S, B, 3, dtype=DT)
    free = make_flow(kind, 3, 1, None)
    with pytest.raises(ValueError, match="takes no context"):
        free(z, torch.randn(B, C, dtype=DT))
    amortized = make_flow(kind, 3, 1, C)
    with pytest.raises(ValueError, match="needs a context|needs one"):
        amortized(z)
    if not kind.startswith("iaf"):  # IAF's context enters the MADE through a plain Linear
        with pytest.raises(ValueError, match=f"context has last dimension {C + 1}"):
            amortized(z, torch.randn(B, C + 1, dtype=DT))


@AMORTIZED
@pytest.mark.parametrize("method", ["rsample_and_log_prob", "log_prob"])
def test_flow_family_bad_input_raises(method, amortized):
    """Both entry points of a family check the context at the boundary, with the family's
    message, rather than failing deep inside a flow (an IAF's context enters a Linear)."""
    ctx = C if amortized else None
    flows = [IAF(3, (8,), ctx)] if method == "log_prob" else [Planar(3, context_dim=ctx)]
    family = FlowFamily(MeanFieldGaussian(3, ctx), [*flows, IAF(3, (8,), ctx)])
    if method == "log_prob":
        z = torch.randn(2, B, 3) if amortized else torch.randn(2, 3)

        def call(context):
            return family.log_prob(z, context)
    else:

        def call(context):
            return family.rsample_and_log_prob(2, context)

        with pytest.raises(ValueError, match="positive integer, got 0"):
            family.rsample_and_log_prob(0, torch.randn(B, C) if amortized else None)
    if amortized:
        with pytest.raises(ValueError, match=r"amortized: pass a context of shape \(B, 4\)"):
            call(None)
        with pytest.raises(ValueError, match=r"context must have shape \(B, 4\), got \(3, 5\)"):
            call(torch.randn(B, C + 1))
        with pytest.raises(ValueError, match=r"context must have shape \(B, 4\), got \(4,\)"):
            call(torch.randn(C))
    else:
        with pytest.raises(ValueError, match="free parameters and takes no context"):
            call(torch.randn(B, C))


def test_integration_grid_is_fine_enough():
    """The grid rule itself: a 2-D standard normal has mass 1 − O(e^{−32}) on the box."""
    xy, area = grid(8.0, 200)
    mass = (-0.5 * (xy * xy).sum(-1) - math.log(2 * math.pi)).exp().sum() * area
    assert abs(mass.item() - 1.0) < 1e-10
