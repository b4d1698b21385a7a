"""Coupling, neural spline and neural autoregressive flows (src/vilab/flows/coupling.py,
autoregressive.py, spline.py, naf.py, iaf.py's affine one), in float64.

* the rational-quadratic spline alone: knots, interpolation of the knot values and
  derivatives, monotone, inverse(forward(x)) = x, the log-derivative against autograd,
  identity tails joined continuously at ±B, gradients against finite differences;
* the deep sigmoidal transform of the NAF: identity at zero, monotone onto R, its inverse;
* each flow (affine coupling, spline coupling, autoregressive spline, NAF, affine
  autoregressive), free and
  amortized, one layer and a built stack: log-determinant = log |det| of the autograd Jacobian,
  inverse(forward(z)) = z, rows of an amortized flow use their own context;
* FlowFamily: log_prob(rsample) = the returned log q, densities integrate to one on a box,
  every parameter gets a gradient;
* options refused with clear errors; a short fit on U1 improves the bound; the presets load
  and a VAE with a spline posterior trains a step on the tiny data.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_vae import TINY_VAE
from torch.autograd.functional import jacobian

from vilab.build import build_family, build_flows, family_from_config
from vilab.config import ConfigError, FamilyConfig, load_fit_config, load_train_config
from vilab.families import MeanFieldGaussian, StandardNormal
from vilab.flows import (
    AffineAutoregressive,
    AffineCoupling,
    FlowFamily,
    NeuralAutoregressive,
    SplineAutoregressive,
    SplineCoupling,
)
from vilab.flows.naf import _slopes, sigmoidal_inverse, sigmoidal_transform
from vilab.flows.spline import (
    check_spline_options,
    rational_quadratic_spline,
    rq_spline,
    spline_knots,
)
from vilab.train.fit import Fitter
from vilab.train.vae import VAETrainer

DT = torch.float64
C = 3  # context width of amortized flows
S, B = 3, 2  # amortized: S samples for each of B context rows
N = 6  # free: number of points
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KINDS = [
    "affine_coupling",
    "spline_coupling",
    "spline_autoregressive",
    "naf",
    "affine_autoregressive",
]
AUTOREGRESSIVE = ("spline_autoregressive", "naf", "affine_autoregressive")
AMORTIZED = pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized"])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- helpers


def make_flow(kind: str, dim: int, context_dim: int | None = None, alt: bool = False):
    """One float64 layer of ``kind`` far from the identity (every parameter perturbed)."""
    if kind == "affine_coupling":
        flow = AffineCoupling(dim, (8, 8), context_dim, flip=alt)
    elif kind == "spline_coupling":
        flow = SplineCoupling(dim, (8, 8), context_dim, flip=alt, bins=5, tail_bound=3.0)
    elif kind == "spline_autoregressive":
        flow = SplineAutoregressive(dim, (8, 8), context_dim, reverse=alt, bins=5, tail_bound=3.0)
    elif kind == "affine_autoregressive":
        flow = AffineAutoregressive(dim, (8, 8), context_dim, reverse=alt)
    else:
        flow = NeuralAutoregressive(dim, (8, 8), context_dim, reverse=alt, units=4)
    return perturb(flow.double())


def perturb(module, scale: float = 0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def points(dim: int, amortized: bool, scale: float = 1.5):
    """``z`` (N, D) and no context, or (S, B, D) and a context (B, C); some |z| beyond the
    tail bound 3, so the tails are exercised too."""
    if amortized:
        return scale * torch.randn(S, B, dim, dtype=DT), torch.randn(B, C, dtype=DT)
    return scale * torch.randn(N, dim, dtype=DT), None


def rowwise_slogdet(fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign and log|det| of the Jacobian of ``fn`` for every row of z; the off-diagonal
    blocks (one sample's output against another's input) must be zero."""
    d = z.shape[-1]
    flat = z.detach().reshape(-1, d)
    n = flat.shape[0]
    jac = jacobian(lambda x: fn(x.reshape(z.shape)).reshape(n, d), flat)  # (n, D, n, D)
    idx = torch.arange(n)
    blocks = jac[idx, :, idx, :]
    off = jac.clone()
    off[idx, :, idx, :] = 0.0
    assert off.abs().max() == 0.0, "a flow mixes different samples"
    sign, logabs = torch.linalg.slogdet(blocks)
    return sign.reshape(z.shape[:-1]), logabs.reshape(z.shape[:-1])


def random_theta(*shape: int, bins: int = 6, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(*shape, 3 * bins - 1, dtype=DT)


# ---------------------------------------------------------------- 1. the spline alone


def test_knots_span_the_box_with_minimum_bins_and_unit_boundary_derivatives():
    bound, bins = 2.5, 6
    theta = random_theta(4, bins=bins, scale=10.0)  # extreme: softmax nearly one-hot
    knots = spline_knots(theta, bound, min_bin=1e-3, min_derivative=1e-3)
    assert knots.shape == (4, 3, bins + 1)
    xs, ys, ds = knots.unbind(-2)
    for row in (xs, ys):
        torch.testing.assert_close(row[:, 0], torch.full((4,), -bound, dtype=DT))
        torch.testing.assert_close(row[:, -1], torch.full((4,), bound, dtype=DT))
        assert (row.diff() >= 2 * bound * 1e-3 * (1 - 1e-9)).all()  # minimum bin size
    torch.testing.assert_close(ds[:, [0, -1]], torch.ones(4, 2, dtype=DT))
    assert (ds[:, 1:-1] > 1e-3).all()
    # all-zero parameters: uniform bins and unit derivatives, the identity
    zero = spline_knots(torch.zeros(3 * bins - 1, dtype=DT), bound)
    grid = torch.linspace(-bound, bound, bins + 1, dtype=DT)
    torch.testing.assert_close(zero[0], grid)
    torch.testing.assert_close(zero[1], grid)
    torch.testing.assert_close(zero[2], torch.ones(bins + 1, dtype=DT))
    x = torch.linspace(-4.0, 4.0, 101, dtype=DT)
    y, log_d = rq_spline(x, zero, bound)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(log_d, torch.zeros_like(x), rtol=0, atol=1e-14)


def test_spline_interpolates_the_knots_and_their_derivatives():
    """y(x_k) = y_k and dy/dx(x_k) = d_k at every knot (Durkan et al.'s construction)."""
    bound, bins = 3.0, 7
    theta = random_theta(5, bins=bins)
    knots = spline_knots(theta, bound)
    xs, ys, ds = knots.unbind(-2)  # (5, K + 1) each
    y, log_d = rq_spline(xs, knots.unsqueeze(-3), bound)  # every knot of a spline, its spline
    torch.testing.assert_close(y, ys, rtol=0, atol=1e-13)
    torch.testing.assert_close(log_d, ds.log(), rtol=0, atol=1e-12)


def test_spline_is_monotone_and_inverts():
    bound = 3.0
    theta = random_theta(4, 1, bins=8, scale=3.0)  # four splines, each on the whole grid
    x = torch.linspace(-5.0, 5.0, 4001, dtype=DT).expand(4, -1)
    y, log_d = rational_quadratic_spline(x, theta, bound)
    assert (y.diff(dim=-1) > 0).all()
    assert torch.isfinite(log_d).all()
    assert (y - x).abs().max() > 0.5  # far from the identity
    x_back, log_d_inv = rational_quadratic_spline(y, theta, bound, inverse=True)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(log_d_inv, -log_d, rtol=0, atol=1e-10)
    # and the other way round, from points spread over the codomain
    v = torch.linspace(-5.0, 5.0, 4001, dtype=DT).expand(4, -1)
    u, _ = rational_quadratic_spline(v, theta, bound, inverse=True)
    v_back, _ = rational_quadratic_spline(u, theta, bound)
    torch.testing.assert_close(v_back, v, rtol=0, atol=1e-10)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_log_derivative_is_the_autograd_derivative(inverse):
    bound = 2.0
    theta = random_theta(50, bins=5)
    x = (3.0 * torch.rand(50, dtype=DT) - 1.5).mul(bound).requires_grad_()  # tails too
    y, log_d = rational_quadratic_spline(x, theta, bound, inverse=inverse)
    (dy,) = torch.autograd.grad(y.sum(), x)  # elementwise map: the gradient is dy/dx
    assert (dy > 0).all()
    torch.testing.assert_close(log_d, dy.log(), rtol=0, atol=1e-10)


def test_tails_are_the_identity_and_join_continuously():
    bound = 2.0
    theta = random_theta(3, 1, bins=6, scale=3.0)
    outside = torch.tensor([-50.0, -7.0, -2.0 - 1e-9, 2.0 + 1e-9, 3.0, 1e3], dtype=DT)
    y, log_d = rational_quadratic_spline(outside.expand(3, -1), theta, bound)
    torch.testing.assert_close(y, outside.expand(3, -1), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_d, torch.zeros_like(y), rtol=0, atol=1e-12)
    # at ±B, from inside: the value tends to ±B and the log-slope to 0, linearly in the gap
    gaps = []
    for eps in (1e-6, 1e-8, 1e-10):
        inside = torch.tensor([-bound + eps, bound - eps], dtype=DT)
        y_in, log_in = rational_quadratic_spline(inside.expand(3, -1), theta, bound)
        assert (y_in - inside).abs().max() < 1e3 * eps
        gaps.append(log_in.abs().max().item())
    assert gaps[2] < 1e-5 and gaps[2] < 0.03 * gaps[1] < 1e-3 * gaps[0]
    # and the inverse tails are the identity too
    x_out, log_inv = rational_quadratic_spline(outside.expand(3, -1), theta, bound, inverse=True)
    torch.testing.assert_close(x_out, outside.expand(3, -1), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_inv, torch.zeros_like(x_out), rtol=0, atol=1e-12)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_spline_gradients_agree_with_finite_differences(inverse):
    theta = random_theta(4, bins=4).requires_grad_()
    x = torch.tensor([-1.3, -0.2, 0.7, 2.9], dtype=DT, requires_grad=True)  # 2.9: a tail

    def fn(x, theta):
        return rational_quadratic_spline(x, theta, 2.0, inverse=inverse)

    assert torch.autograd.gradcheck(fn, (x, theta))


def test_theta_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="3K − 1 entries"):
        spline_knots(torch.zeros(4, 7, dtype=DT), 1.0)


def test_sigmoidal_transform_is_the_identity_at_zero_and_monotone_onto_the_line():
    x = torch.linspace(-40.0, 40.0, 4001, dtype=DT)
    y, log_d = sigmoidal_transform(x, torch.zeros(4001, 3 * 5, dtype=DT))
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_d, torch.zeros_like(x), rtol=0, atol=1e-12)
    theta = 2.0 * torch.randn(4, 1, 3 * 5, dtype=DT)  # four transforms, each on the grid
    y, log_d = sigmoidal_transform(x.expand(4, -1), theta)
    assert (y.diff(dim=-1) > 0).all() and torch.isfinite(log_d).all()
    far = torch.tensor([-1e5, 1e5], dtype=DT).expand(4, 2)
    a_min = _slopes(theta[..., :5]).amin(-1)  # the slope tends to min a far out
    _, log_far = sigmoidal_transform(far, theta)
    torch.testing.assert_close(log_far, a_min.log().expand(4, 2), rtol=0, atol=1e-6)
    xr = x.expand(4, -1).clone().requires_grad_()
    (dy,) = torch.autograd.grad(sigmoidal_transform(xr, theta)[0].sum(), xr)
    torch.testing.assert_close(log_d, dy.log(), rtol=0, atol=1e-10)


def test_sigmoidal_inverse_finds_the_root_and_its_gradient():
    theta = (2.0 * torch.randn(50, 3 * 4, dtype=DT)).requires_grad_()
    x = 6.0 * torch.randn(50, dtype=DT)
    y, _ = sigmoidal_transform(x, theta.detach())
    root, residual = sigmoidal_inverse(y, theta.detach())
    assert residual < 1e-14
    torch.testing.assert_close(root, x, rtol=0, atol=1e-9)
    y_in = y[:4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, th: sigmoidal_inverse(v, th)[0], (y_in, theta[:4]))


def test_naf_inverse_reports_its_residual_and_refuses_a_missed_tolerance():
    flow = make_flow("naf", 3)
    out, _ = flow(torch.randn(N, 3, dtype=DT))
    flow.inverse(out)
    assert 0 <= flow.last_inverse_residual < 1e-14
    flow.inverse_tol = 1e-300  # below any float64 residual but an exact zero
    out = out + 0.123456789  # a point whose residual is not exactly zero
    with pytest.raises(RuntimeError, match="did not converge"):
        flow.inverse(out)


# ---------------------------------------------------------------- 2. the flows


def flow_cases():
    for kind in KINDS:
        for dim in (1, 2, 3, 5):
            if dim == 1 and kind not in AUTOREGRESSIVE:
                continue
            yield pytest.param(kind, dim, id=f"{kind}-D{dim}")


@AMORTIZED
@pytest.mark.parametrize("alt", [False, True], ids=["plain", "alternate"])
@pytest.mark.parametrize("kind, dim", list(flow_cases()))
def test_logdet_matches_autograd_jacobian_and_inverse_undoes_forward(kind, dim, alt, amortized):
    flow = make_flow(kind, dim, C if amortized else None, alt)
    z, context = points(dim, amortized)
    out, logdet = flow(z, context)
    assert out.shape == z.shape and logdet.shape == z.shape[:-1]
    sign, expected = rowwise_slogdet(lambda x: flow(x, context)[0], z)
    assert (sign > 0).all()
    assert logdet.abs().max() > 1e-2  # not the identity
    torch.testing.assert_close(logdet, expected, rtol=1e-9, atol=1e-9)

    back, logdet_inv = flow.inverse(out, context)
    torch.testing.assert_close(back, z, rtol=0, atol=1e-6)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=0, atol=1e-6)
    # float64: near rounding; the spline's quadratic root loses digits where its
    # discriminant is small (1.6e-10 seen on one machine), far inside the 1e-6 asked for
    assert (back - z).abs().max() < 1e-8


@pytest.mark.parametrize("kind", ["spline_coupling", *AUTOREGRESSIVE])
def test_jacobian_has_the_promised_structure(kind):
    """Coupling: the kept part passes unchanged; autoregressive: triangular in the order."""
    dim = 3
    flow = make_flow(kind, dim)
    z = torch.randn(dim, dtype=DT)
    jac = jacobian(lambda x: flow(x)[0], z)
    if kind == "spline_coupling":  # flip=False keeps z[:1], splines z[1:] given z[:1]
        torch.testing.assert_close(jac[:1], torch.eye(dim, dtype=DT)[:1])
        assert (jac[1:, 1:] - torch.diag(jac.diagonal()[1:])).abs().max() == 0
    else:
        assert (jac.triu(1) == 0).all() and (jac.tril(-1).abs() > 0).any()


@AMORTIZED
@pytest.mark.parametrize("kind", KINDS)
def test_a_built_stack_of_layers_has_the_jacobian_logdet_and_inverts(kind, amortized):
    """Three layers from build_flows (alternating halves / orders), through FlowFamily.push."""
    dim, ctx = 3, C if amortized else None
    flows = build_flows(kind, dim, ctx, layers=3, hidden=[8], bins=4, tail_bound=3.0, units=3)
    if kind in AUTOREGRESSIVE:
        assert [f.order for f in flows] == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    else:
        assert [f.flip for f in flows] == [False, True, False]
    family = perturb(FlowFamily(StandardNormal(dim, ctx), flows).double())
    z, context = points(dim, amortized)
    out, logdet = family.push(z, context)
    _, expected = rowwise_slogdet(lambda x: family.push(x, context)[0], z)
    torch.testing.assert_close(logdet, expected, rtol=1e-9, atol=1e-9)
    x = out
    for f in reversed(family.flows):
        x, _ = f.inverse(x, context)
    torch.testing.assert_close(x, z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_amortized_rows_use_their_own_context(kind):
    dim = 3
    flow = make_flow(kind, dim, C)
    z = torch.randn(S, 1, dim, dtype=DT).expand(S, B, dim)  # the same z in every row
    context = torch.randn(B, C, dtype=DT)
    out, logdet = flow(z, context)
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3  # rows differ by their context only
    for b in range(B):
        out_b, logdet_b = flow(z[:, b : b + 1], context[b : b + 1])
        torch.testing.assert_close(out[:, b], out_b[:, 0])
        torch.testing.assert_close(logdet[:, b], logdet_b[:, 0])


@pytest.mark.parametrize("kind", AUTOREGRESSIVE)
def test_autoregressive_first_coordinate_depends_on_the_context(kind):
    """The first coordinate in the order sees no hidden unit of the MADE: the context
    reaches its transform through the output map."""
    flow = make_flow(kind, 2, C)
    z = torch.zeros(1, B, 2, dtype=DT) + 0.3
    out, _ = flow(z, torch.randn(B, C, dtype=DT))
    assert (out[0, 0, 0] - out[0, 1, 0]).abs() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_new_flows_start_near_the_identity(kind):
    flow = build_flows(kind, 4, None, layers=1)[0].double()
    z = torch.randn(10, 4, dtype=DT)
    out, logdet = flow(z)
    assert (out - z).abs().max() < 0.5 and logdet.abs().max() < 0.5


# --------------------------------------------------------- 3. families built from them


def make_family(kind: str, amortized: bool, dim: int = 2):
    ctx = C if amortized else None
    family = build_family(
        "stack",
        dim,
        ctx,
        base="mean_field",
        stack=[
            {"kind": kind, "layers": 3, "hidden": [8, 8], "bins": 5, "tail_bound": 4.0, "units": 4}
        ],
    ).double()
    return perturb(family, 0.3)


@AMORTIZED
@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_of_a_sample_is_its_log_q(kind, amortized):
    family = make_family(kind, amortized, dim=3)
    context = torch.randn(B, C, dtype=DT) if amortized else None
    z, log_q = family.rsample_and_log_prob(40, context)
    assert z.shape == ((40, B, 3) if amortized else (40, 3))
    assert family.has_log_prob
    torch.testing.assert_close(family.log_prob(z, context), log_q, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_density_integrates_to_one(kind):
    """∫ q = 1 on a box by the midpoint rule on log_prob (inverse + its logdet); the
    perturbation is moderate so that no bin is so narrow that the grid misses its spike."""
    family = FlowFamily(
        StandardNormal(2).double(),
        build_flows(kind, 2, None, layers=3, hidden=[8], bins=6, tail_bound=4.0, units=4),
    ).double()
    perturb(family, 0.2)
    n, half = (140, 7.0) if kind == "naf" else (320, 8.0)  # the naf inverse is iterative
    h = 2 * half / n
    c = torch.linspace(-half + h / 2, half - h / 2, n, dtype=DT)
    xy = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        log_q = family.log_prob(xy)
        z, _ = family.rsample_and_log_prob(5000)
    assert (z.abs() < half - 1.0).all(dim=-1).float().mean() > 0.999  # the box holds the mass
    mass = log_q.exp().sum().item() * h * h
    assert abs(mass - 1.0) < 2e-3
    base = StandardNormal(2).double()
    assert (log_q - base.log_prob(xy)).abs().max() > 1.0  # q is far from the base


@AMORTIZED
@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind, amortized):
    family = make_family(kind, amortized, dim=3)
    context = torch.randn(B, C, dtype=DT, requires_grad=amortized) if amortized else None
    z, log_q = family.rsample_and_log_prob(16, context)
    loss = (log_q + 0.5 * (z * z).sum(-1)).mean()  # reverse KL to a standard normal
    loss.backward()
    for name, p in family.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: zero gradient"
    if amortized:
        assert context.grad is not None and context.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_gradients_agree_with_finite_differences(kind):
    """log q(z | c) through the inverses, differentiated in z and c (what STL, DReG and a
    proposal's score need), against finite differences."""
    family = make_family(kind, amortized=True, dim=3)
    z = torch.randn(2, B, 3, dtype=DT, requires_grad=True)
    context = torch.randn(B, C, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(family.log_prob, (z, context))


@pytest.mark.parametrize("kind", ["spline_coupling", *AUTOREGRESSIVE])
def test_sticking_the_landing_runs_for_spline_flows(kind):
    over = [
        "family.kind=stack",
        f"family.stack=[{{kind: {kind}, layers: 2, hidden: [8], bins: 4}}]",
        "objective.stl=true",
        "samples=32",
    ]
    fitter = Fitter(load_fit_config(overrides=over))
    assert math.isfinite(fitter.train_step().values["bound"])


# ------------------------------------------------------------- 4. options and errors


@pytest.mark.parametrize("bins", [1, 0, -3, 2.5, True])
def test_bad_bins_are_refused(bins):
    with pytest.raises(ValueError, match="bins must be an integer ≥ 2"):
        SplineCoupling(2, bins=bins)
    with pytest.raises(ValueError, match="bins must be an integer ≥ 2"):
        SplineAutoregressive(2, bins=bins)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_bad_tail_bounds_are_refused(bound):
    with pytest.raises(ValueError, match=r"tail_bound: Input should be (greater|a finite).*got"):
        build_flows("spline_coupling", 2, tail_bound=bound)
    with pytest.raises(ValueError, match="tail_bound must be a finite number > 0"):
        check_spline_options(8, bound)


@pytest.mark.parametrize("units", [0, -1, 1.5])
def test_bad_units_are_refused(units):
    with pytest.raises(ValueError, match=r"units: Input should be .*\(got"):
        build_flows("naf", 2, units=units)


def test_coupling_in_one_dimension_is_refused():
    for kind in ("affine_coupling", "spline_coupling"):
        with pytest.raises(ValueError, match="needs dim ≥ 2.*got dim=1"):
            build_flows(kind, 1)
    with pytest.raises(ValueError, match="scale_bound must be > 0"):
        AffineCoupling(2, scale_bound=0.0)
    with pytest.raises(ValueError, match="hidden must be a non-empty list"):
        SplineCoupling(2, hidden=[])


def test_context_mistakes_are_refused():
    with pytest.raises(ValueError, match="takes no context"):
        AffineCoupling(2)(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="needs a context of shape"):
        SplineCoupling(2, context_dim=3)(torch.zeros(1, 2))


@pytest.mark.parametrize(
    "override, message",
    [
        ("family.bins=1", "bins"),
        ("family.tail_bound=0", "tail_bound"),
        ("family.tail_bound=.inf", "tail_bound"),
        ("family.units=0", "units"),
        ("family.kind=spline_wavelet", "unknown family"),
    ],
)
def test_config_refuses_bad_spline_options(override, message):
    with pytest.raises(ConfigError, match=message):
        load_fit_config(overrides=[override])


def test_config_passes_bins_and_tail_bound_to_the_stack():
    cfg = FamilyConfig(
        kind="stack",
        base="standard",
        stack=[{"kind": "spline_autoregressive", "layers": 2, "bins": 5, "tail_bound": 2.5}],
    )
    family = family_from_config(cfg, 3)
    assert [(f.bins, f.tail_bound) for f in family.flows] == [(5, 2.5), (5, 2.5)]
    assert [f.order for f in family.flows] == [[0, 1, 2], [2, 1, 0]]


# ------------------------------------------------------------ 5. fits and presets


@pytest.mark.parametrize("kind", ["spline_coupling", *AUTOREGRESSIVE])
def test_a_short_fit_on_u1_improves_the_bound(kind):
    torch.set_num_threads(1)
    cfg = load_fit_config(
        overrides=[
            "family.kind=stack",
            f"family.stack=[{{kind: {kind}, layers: 2, hidden: [16, 16], bins: 6}}]",
            "samples=256",
            "steps=60",
            "optim.lr=0.01",
            "objective.beta_steps=0",
        ]
    )
    fitter = Fitter(cfg)
    bounds = [fitter.train_step().values["bound"] for _ in range(60)]
    first, last = sum(bounds[:5]) / 5, sum(bounds[-5:]) / 5
    assert all(math.isfinite(b) for b in bounds)
    assert last > first + 0.5, (first, last)


def test_fit_preset_loads_and_runs_a_few_steps():
    cfg = load_fit_config(CONFIGS / "fit_spline.yaml", overrides=["samples=64"])
    kinds = [f.kind for f in cfg.family.stack] if cfg.family.kind == "stack" else []
    assert any(k.startswith("spline_") for k in kinds)
    fitter = Fitter(cfg)
    for _ in range(3):
        assert math.isfinite(fitter.train_step().values["bound"])


def test_vae_preset_builds_and_trains_a_step_on_the_tiny_data():
    cfg = load_train_config(CONFIGS / "vae_spline.yaml", overrides=TINY_VAE)
    assert any(f.kind.startswith("spline_") for f in cfg.posterior.stack)
    trainer = VAETrainer(cfg)
    out = trainer.train_step()
    assert math.isfinite(out.values["bound"])
    flows = trainer.vae.posterior.family.flows
    assert any(isinstance(f, SplineAutoregressive | SplineCoupling) for f in flows)
    assert all(f.bins == 8 and f.tail_bound == 5.0 for f in flows)


def test_mean_field_base_with_spline_flows_scores_samples_amortized():
    """The VAE's posterior shape: a mean-field base amortized from the encoder's features
    followed by spline flows amortized from the same context."""
    base = MeanFieldGaussian(4, C)
    family = FlowFamily(base, build_flows("spline_autoregressive", 4, C, layers=2)).double()
    perturb(family, 0.2)
    context = torch.randn(B, C, dtype=DT)
    z, log_q = family.rsample_and_log_prob(5, context)
    # 1e-8: the inverse's quadratic root loses digits where its discriminant is small
    torch.testing.assert_close(family.log_prob(z, context), log_q, rtol=0, atol=1e-8)
