"""The pilot that preconditions a fit (vilab.train.pilot) and its affine map
(vilab.flows.affine): the map's maths, the optimizer's path, the Hessian, the choice by
ELBO, and what a fit gets from it."""

from __future__ import annotations

import math

import pytest
import torch

from vilab.build import family_from_config
from vilab.config import FamilyConfig, load_fit_config, preconditions
from vilab.core.support import parse_support
from vilab.flows.affine import FixedAffine
from vilab.flows.support import SupportTransform
from vilab.targets.user import CallableTarget
from vilab.train import lbfgs, pilot
from vilab.train.fit import Fitter

F64 = torch.float64


def correlated_gaussian(dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A mean far from 0 on scales of 10⁻⁴ to 10⁻¹, correlations near ±1 (a regression on
    unstandardized regressors, as earnings and diamonds in posteriordb)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=F64)
    scales = torch.logspace(-4, -1, dim, dtype=F64)
    cov = scales[:, None] * (a @ a.T + 0.01 * torch.eye(dim, dtype=F64)) * scales[None, :]
    mean = 20 * torch.randn(dim, generator=g, dtype=F64) * scales
    return mean, cov


def mvn_log_prob(mean: torch.Tensor, cov: torch.Tensor):
    def f(z: torch.Tensor) -> torch.Tensor:
        d = torch.distributions.MultivariateNormal(mean.to(z.dtype), cov.to(z.dtype))
        return d.log_prob(z)

    return f


# --- the affine map ---------------------------------------------------------------------


def test_fixed_affine_is_the_identity_until_set_and_its_log_det_is_the_jacobians() -> None:
    flow = FixedAffine(4).double()
    u = torch.randn(7, 4, dtype=F64)
    z, ld = flow(u)
    assert torch.equal(z, u) and torch.equal(ld, torch.zeros(7, dtype=F64)) and not flow.ready
    mean, cov = correlated_gaussian(4)
    flow.set_(mean, torch.linalg.cholesky(cov))
    z, ld = flow(u)
    jac = torch.autograd.functional.jacobian(lambda t: flow(t)[0], u[0])
    assert torch.allclose(ld, torch.linalg.slogdet(jac)[1].expand(7), rtol=1e-12)
    back, ld_inv = flow.inverse(z)
    assert torch.allclose(back, u, atol=1e-9) and torch.allclose(ld_inv, -ld)
    back3, _ = flow.inverse(z.reshape(7, 1, 4).expand(7, 3, 4))  # any batch shape
    assert torch.allclose(back3[:, 2], u, atol=1e-9)


def test_fixed_affine_state_travels_in_the_state_dict() -> None:
    a, b = FixedAffine(3), FixedAffine(3)
    a.set_(torch.ones(3), 2 * torch.eye(3))
    b.load_state_dict(a.state_dict())
    assert b.ready and torch.equal(b.scale_tril, 2 * torch.eye(3))


@pytest.mark.parametrize(
    ("shift", "tril", "what"),
    [
        (torch.zeros(2), torch.eye(3), "shift"),
        (torch.zeros(3), torch.ones(3, 3), "lower-triangular"),
        (torch.zeros(3), -torch.eye(3), "positive diagonal"),
        (torch.tensor([0.0, math.nan, 0.0]), torch.eye(3), "finite"),
    ],
)
def test_fixed_affine_refuses_a_bad_map(shift, tril, what) -> None:
    with pytest.raises(ValueError, match=what):
        FixedAffine(3).set_(shift, tril)


# --- the optimizer's path and the Hessian ------------------------------------------------


def test_lbfgs_reaches_the_mode_of_an_ill_conditioned_gaussian() -> None:
    """Scales 10⁻⁴ … 10⁻¹, correlations near ±1, a gradient of ~10⁸ at the start."""
    mean, cov = correlated_gaussian(6)
    path = lbfgs.lbfgs_path(mvn_log_prob(mean, cov), torch.zeros(6, dtype=F64))
    sds = cov.diagonal().sqrt()
    assert ((path[-1] - mean).abs() / sds).max() < 0.05
    values = [float(mvn_log_prob(mean, cov)(x[None])) for x in path]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))  # ascent


def test_lbfgs_stays_where_the_density_is_finite() -> None:
    """The mode at 3 lies beyond a wall at 1 (log p̃ = −inf beyond): every iterate is
    finite and the path ends at the wall."""

    def walled(z: torch.Tensor) -> torch.Tensor:
        lp = -0.5 * ((z - 3.0) ** 2).sum(-1)
        return torch.where(z[..., 0] < 1.0, lp, -math.inf)

    path = lbfgs.lbfgs_path(walled, torch.zeros(2, dtype=F64))
    assert all(float(x[0]) < 1.0 for x in path) and float(path[-1][0]) > 0.99


def test_hessian_by_differences_equals_the_exact_one() -> None:
    def quartic(z: torch.Tensor) -> torch.Tensor:
        return -(z**4).sum(-1) - z[..., 0] * z[..., 1] * z[..., 2] - torch.exp(z[..., 1])

    x = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    exact = torch.autograd.functional.hessian(lambda t: quartic(t[None])[0], x)
    assert torch.allclose(pilot.hessian(quartic, x), exact, rtol=1e-6, atol=1e-6)


# --- the choice by ELBO -------------------------------------------------------------------


def test_on_a_gaussian_the_pilot_finds_it_and_its_elbo_is_log_z() -> None:
    mean, cov = correlated_gaussian(5)
    r = pilot.laplace_path(mvn_log_prob(mean, cov), 5, generator=torch.Generator().manual_seed(0))
    assert r.chosen >= 0 and r.proper >= 1 and r.iterations >= 1 and r.candidates <= 8 * 6
    sds = cov.diagonal().sqrt()  # (an iterate near the mode may win on the ELBO's noise)
    assert ((r.shift - mean).abs() / sds).max() < 0.2
    fitted = r.scale_tril @ r.scale_tril.T
    assert torch.allclose(fitted / (sds[:, None] * sds), cov / (sds[:, None] * sds), atol=1e-4)
    assert abs(r.elbo) < 0.01 and r.start_elbo < -1e6  # normalized: log Z = 0


def test_the_start_is_kept_when_no_laplace_approximation_beats_it() -> None:
    """Neal's funnel (v ~ N(0, 3²), x | v ~ N(0, e^v)): log p̃ has no maximum at finite v
    with x = 0 (it grows as v → −∞), every Laplace approximation along the way is far too
    narrow in v, and N(0, I) is better by its ELBO. A pilot that took the mode (or the
    last iterate) would fail this."""

    def funnel(z: torch.Tensor) -> torch.Tensor:
        v, x = z[..., 0], z[..., 1:]
        return -(v**2) / 18 - 0.5 * (x**2).sum(-1) * torch.exp(-v) - 0.5 * x.shape[-1] * v

    r = pilot.laplace_path(funnel, 10, generator=torch.Generator().manual_seed(0))
    assert r.chosen == -1 and r.elbo == r.start_elbo
    assert torch.equal(r.scale_tril, torch.eye(10, dtype=F64))


def test_random_starts_find_the_mode_of_most_mass() -> None:
    """Two modes: 5 % of the mass near the start at (0.2, 0.2) (sd 0.2), 95 % at (−1, −1)
    (sd 0.5). The path from 0 ends at the minor mode; a path from a random start finds the
    major one and its Laplace approximation wins (ELBO ≈ log 0.95). One path would fail
    this (as it did on posteriordb's lotka_volterra)."""

    def two_modes(z: torch.Tensor) -> torch.Tensor:
        minor = torch.distributions.Normal(0.2, 0.2).log_prob(z).sum(-1) + math.log(0.05)
        major = torch.distributions.Normal(-1.0, 0.5).log_prob(z).sum(-1) + math.log(0.95)
        return torch.logaddexp(minor, major)

    g = torch.Generator().manual_seed(0)
    from_zero = lbfgs.lbfgs_path(two_modes, torch.zeros(2, dtype=F64))
    assert torch.allclose(from_zero[-1], torch.full((2,), 0.2, dtype=F64), atol=0.05)
    r = pilot.laplace_path(two_modes, 2, generator=g)
    assert r.path > 0 and torch.allclose(r.shift, torch.full((2,), -1.0, dtype=F64), atol=0.05)
    assert r.elbo > math.log(0.95) - 0.1


def test_a_density_that_is_minus_inf_at_the_start_leaves_the_identity() -> None:
    r = pilot.laplace_path(lambda z: z.sum(-1) * 0 - math.inf, 3)
    assert r.chosen == -1 and r.iterations == 0 and r.elbo == -math.inf


def test_a_target_that_raises_far_out_is_minus_inf_there() -> None:
    """A density that raises (as a Pyro distribution does for a scale of 0) where
    ‖z‖ > 5: the pilot treats those points as log p̃ = −inf and still finds N(0, I)."""

    def picky(z: torch.Tensor) -> torch.Tensor:
        if bool((z.norm(dim=-1) > 5).any()):
            raise ValueError("scale must be positive")
        return -0.5 * (z**2).sum(-1)

    r = pilot.laplace_path(picky, 2, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(r.elbo) and torch.allclose(r.shift, torch.zeros(2, dtype=F64), atol=1e-4)


def test_the_pilot_refuses_a_dimension_above_its_limit() -> None:
    with pytest.raises(ValueError, match="precondition=none"):
        pilot.laplace_path(lambda z: -(z**2).sum(-1), pilot.MAX_DIM + 1)


# --- what a fit gets ---------------------------------------------------------------------


def fitter_for(mean: torch.Tensor, cov: torch.Tensor, *overrides: str) -> Fitter:
    target = CallableTarget(mvn_log_prob(mean, cov), mean.shape[0], "scaled", log_z=0.0)
    cfg = load_fit_config(overrides=["samples=64", "steps=300", *overrides])
    return Fitter(cfg, target)


def kl_of(fitter: Fitter) -> float:
    with torch.no_grad():
        z, log_q = fitter.family.rsample_and_log_prob(20_000)
        return float((log_q.double() - fitter.target.log_prob(z).double()).mean())


def test_a_preconditioned_default_fit_of_a_badly_scaled_posterior_is_close_at_once() -> None:
    """The same 100 steps of the default family on a 5-D Gaussian with scales of 10⁻⁴ and
    correlations near ±1: with the pilot KL < 0.05, without it KL > 100."""
    mean, cov = correlated_gaussian(5)
    torch.manual_seed(0)
    with_pilot = fitter_for(mean, cov)
    without = fitter_for(mean, cov, "family.precondition=none")
    for fitter in (with_pilot, without):
        for _ in range(100):
            fitter.train_step(log_value=False)
    assert with_pilot.pilot is not None and without.pilot is None
    assert kl_of(with_pilot) < 0.05 < 100 < kl_of(without)


def test_a_resumed_fit_keeps_its_map_and_does_not_run_the_pilot_again() -> None:
    mean, cov = correlated_gaussian(4)
    first = fitter_for(mean, cov)
    first.train_step()
    state = first.state_dict()
    again = fitter_for(mean, cov)
    again.load_state_dict(state)
    again.train_step()
    assert again.pilot is None  # nothing ran in this process
    a, b = first.family.flows[-1], again.family.flows[-1]
    assert isinstance(b, FixedAffine) and b.ready and torch.equal(a.scale_tril, b.scale_tril)


def test_on_a_support_the_pilot_sees_the_density_before_the_bijection() -> None:
    """z > 0 with log z ~ N(log 2, 0.01²) (a posterior of a scale): the map sits before the
    support's bijection and the family's log q stays that of its draws."""

    def log_normal(z: torch.Tensor) -> torch.Tensor:
        return torch.distributions.LogNormal(math.log(2.0), 0.01).log_prob(z).sum(-1)

    target = CallableTarget(log_normal, 3, "scale", log_z=0.0, support=parse_support("positive", 3))
    cfg = load_fit_config(
        overrides=[
            "samples=64",
            "steps=10",
            "family.precondition=laplace_path",
            "target.support=positive",
        ]
    )
    fitter = Fitter(cfg, target)
    fitter.train_step()
    *_, affine, onto = fitter.family.flows
    assert isinstance(affine, FixedAffine) and isinstance(onto, SupportTransform)
    assert affine.ready and fitter.pilot["chosen"] >= 0
    z, log_q = fitter.family.rsample_and_log_prob(500)
    assert ((z / 2 - 1).abs() < 0.1).all()
    assert torch.allclose(fitter.family.log_prob(z), log_q, atol=1e-3)


def test_auto_preconditions_only_the_default_family_above_2d_on_one_density() -> None:
    assert preconditions(FamilyConfig(), 3) and not preconditions(FamilyConfig(), 2)
    assert not preconditions(FamilyConfig(), 10, context_dim=4)  # amortized
    assert not preconditions(FamilyConfig(kind="iaf"), 10)
    assert preconditions(FamilyConfig(kind="iaf", precondition="laplace_path"), 10)
    assert not preconditions(FamilyConfig(precondition="none"), 10)
    with pytest.raises(ValueError, match="single density"):
        preconditions(FamilyConfig(precondition="laplace_path"), 10, context_dim=4)
    flows = family_from_config(FamilyConfig(), 2).flows  # the 2-D default: no map
    assert not any(isinstance(f, FixedAffine) for f in flows)


def test_a_semi_implicit_family_cannot_be_preconditioned() -> None:
    with pytest.raises(ValueError, match="precondition=none"):
        family_from_config(FamilyConfig(kind="uivi", precondition="laplace_path"), 4)
