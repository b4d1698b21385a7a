"""The suite of posteriors with known answers (vilab.targets.suite): densities against
independent formulas, closed-form references against exact samplers, the stored reference
of the logistic regression and its checksum."""

from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from vilab.targets import BUILTIN_TARGETS, SUITE, Banana, resolve_target, suite
from vilab.targets import reference as reference_module
from vilab.targets.grid import grid_log_z
from vilab.targets.reference import Reference, sha256_of
from vilab.targets.suite import (
    BreastCancerLogistic,
    Funnel,
    IllConditionedGaussian,
    MissingDependencyError,
    SquareMixture,
)

F64 = torch.float64
ZERO, ONE, THREE = (torch.tensor(c, dtype=F64) for c in (0.0, 1.0, 3.0))
SAMPLABLE = ("funnel2", "funnel10", "gaussian_ill10", "gaussian_ill100", "mixture", "banana")


@pytest.fixture(scope="module")
def targets() -> dict:
    return {name: resolve_target(name) for name in SUITE}


def test_suite_is_registered_in_order(targets: dict) -> None:
    assert SUITE == (
        "funnel2",
        "funnel10",
        "gaussian_ill10",
        "gaussian_ill100",
        "mixture",
        "banana",
        "logistic_breast_cancer",
    )
    dims = {"funnel2": 2, "funnel10": 10, "gaussian_ill10": 10, "gaussian_ill100": 100}
    dims |= {"mixture": 2, "banana": 2, "logistic_breast_cancer": 31}
    for name in SUITE:
        assert name in BUILTIN_TARGETS
        t = targets[name]
        assert t.name == name and t.dim == dims[name]
        assert isinstance(t.reference, Reference) and t.reference.dim == t.dim
        assert (t.log_z is None) == (name == "logistic_breast_cancer")
    with pytest.raises(ValueError, match="has dim 10"):
        resolve_target("funnel10", dim=2)


@pytest.mark.parametrize("name", SUITE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_shape_finiteness_and_gradients(targets: dict, name: str, dtype) -> None:
    t = targets[name]
    g = torch.Generator().manual_seed(1)
    z = (0.5 * torch.randn(3, 4, t.dim, generator=g)).to(dtype).requires_grad_(True)
    lp = t.log_prob(z)
    assert lp.shape == (3, 4) and lp.dtype == dtype
    assert torch.isfinite(lp).all()
    (grad,) = torch.autograd.grad(lp.sum(), z)
    assert torch.isfinite(grad).all() and (grad.abs().sum(-1) > 0).all()
    # the batch dimensions are independent: a point's value does not depend on its batch
    assert torch.allclose(t.log_prob(z[1, 2].detach()), lp[1, 2].detach(), rtol=1e-5)


def test_funnel_matches_independent_formula() -> None:
    t = Funnel(10)
    z = 2.0 * torch.randn(50, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v, x = z[:, 0], z[:, 1:]
    want = Normal(ZERO, THREE).log_prob(v) + Normal(ZERO, torch.exp(0.5 * v)).log_prob(x.T).sum(0)
    assert torch.allclose(t.log_prob(z), want, rtol=0, atol=1e-10)


def test_funnel_reference_and_sampler() -> None:
    # sd(x_i)² = E[e^v], v ~ N(0, 9): by quadrature on a fine grid in v
    v = torch.linspace(-40.0, 60.0, 200_001, dtype=torch.float64)
    e_exp_v = torch.trapezoid(torch.exp(Normal(ZERO, THREE).log_prob(v) + v), v)
    t = Funnel(10)
    assert math.isclose(t.reference.sd[1] ** 2, float(e_exp_v), rel_tol=1e-9)
    assert t.reference.sd[0] == 3.0 and set(t.reference.mean) == {0.0}
    # the sampler: v ~ N(0, 9) and x e^{-v/2} ~ N(0, I) independent of v
    n = 200_000
    s = t.sample(n, torch.Generator().manual_seed(3))
    assert s.shape == (n, 10) and s.dtype == torch.float64
    w = torch.cat([s[:, :1] / 3.0, s[:, 1:] * torch.exp(-0.5 * s[:, :1])], dim=-1)
    se = 1.0 / math.sqrt(n)
    assert (w.mean(0).abs() < 5 * se).all()
    assert ((w.var(0) - 1.0).abs() < 5 * math.sqrt(2.0) * se).all()
    corr = (w[:, :1] * w[:, 1:] ** 2).mean(0)  # E[v x²e^{-v}] = 0 if x e^{-v/2} ⟂ v
    assert (corr.abs() < 5 * math.sqrt(3.0) * se).all()
    assert t.quad_box is None and Funnel(2).plot_box == (-10.0, 10.0, -10.0, 10.0)


def test_gaussian_matches_multivariate_normal_and_is_ill_conditioned() -> None:
    for dim in (10, 100):
        t = IllConditionedGaussian(dim)
        cov = t.covariance
        assert torch.allclose(t.q.T @ t.q, torch.eye(dim, dtype=torch.float64), atol=1e-12)
        cond = float(torch.linalg.cond(cov))
        assert 100.0 * (1 - 1e-8) <= cond <= 100.0 * (1 + 1e-8)
        mvn = MultivariateNormal(t.mu, covariance_matrix=cov)
        z = mvn.sample((64,)) + torch.randn(64, dim, dtype=torch.float64)
        assert torch.allclose(t.log_prob(z), mvn.log_prob(z), rtol=0, atol=1e-10)
        mean, sd = t.reference.tensors(torch.float64)
        assert torch.equal(mean, t.mu)
        assert torch.allclose(sd, cov.diagonal().sqrt(), rtol=1e-12)
        assert (mean.abs() > 0).all()
        # off-diagonal correlations are substantial: the rotation mixes the scales
        corr = cov / torch.outer(sd, sd)
        assert float((corr - torch.eye(dim, dtype=torch.float64)).abs().max()) > 0.3
    a, b = IllConditionedGaussian(10), IllConditionedGaussian(10)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.q, b.q)  # deterministic
    assert not torch.equal(IllConditionedGaussian(10, seed=1).mu, a.mu)


def test_mixture_matches_mixture_same_family() -> None:
    t = SquareMixture()
    comps = Independent(Normal(t.means, 0.5 * torch.ones(4, 2, dtype=torch.float64)), 1)
    mix = MixtureSameFamily(Categorical(torch.ones(4, dtype=torch.float64)), comps)
    z = 4.0 * torch.rand(200, 2, generator=torch.Generator().manual_seed(4)) - 2.0
    z = torch.cat([z.double(), torch.tensor([[30.0, -30.0], [2.0, 2.0]], dtype=torch.float64)])
    assert torch.allclose(t.log_prob(z), mix.log_prob(z), rtol=0, atol=1e-10)
    assert t.quad_box == (-6.0, 6.0, -6.0, 6.0) and t.plot_box == (-4.0, 4.0, -4.0, 4.0)


def test_logistic_matches_bernoulli_formula() -> None:
    t = BreastCancerLogistic()
    assert t.x.shape == (569, 30) and t.y.shape == (569,)
    assert torch.allclose(t.x.mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(t.x.std(0, correction=0), torch.ones(30, dtype=torch.float64))
    z = 0.3 * torch.randn(5, 31, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    logits = z[:, :1] + z[:, 1:] @ t.x.T
    want = Bernoulli(logits=logits).log_prob(t.y).sum(-1) + Normal(ZERO, ONE).log_prob(z).sum(-1)
    assert torch.allclose(t.log_prob(z), want, rtol=0, atol=1e-10)
    # stable far out: logits of ±1e4 give finite values, not NaN
    assert torch.isfinite(t.log_prob(torch.full((31,), 300.0, dtype=torch.float64)))


@pytest.mark.parametrize("name", ["mixture", "banana"])
def test_grid_log_z_of_normalized_2d_targets_is_zero(targets: dict, name: str) -> None:
    assert grid_log_z(targets[name], n=800) == pytest.approx(0.0, abs=1e-9)


def _moments_agree(s: torch.Tensor, ref: Reference, k: float = 5.0) -> None:
    """Sample means and variances equal the reference within k standard errors."""
    n = s.shape[0]
    mean, sd = ref.tensors(torch.float64)
    m, var = s.mean(0), s.var(0)
    m4 = ((s - m) ** 4).mean(0)
    assert ((m - mean).abs() <= k * var.sqrt() / math.sqrt(n)).all(), (m, mean)
    assert ((var - sd**2).abs() <= k * ((m4 - var**2) / n).sqrt()).all(), (var, sd**2)


@pytest.mark.parametrize("name", ["gaussian_ill10", "gaussian_ill100", "mixture", "banana"])
def test_closed_form_reference_equals_monte_carlo(targets: dict, name: str) -> None:
    t = targets[name]
    n = 20_000 if t.dim == 100 else 200_000
    s = t.sample(n, torch.Generator().manual_seed(6))
    assert s.shape == (n, t.dim) and s.dtype == torch.float64
    _moments_agree(s, t.reference)


@pytest.mark.parametrize("curvature", [0.5, 2.0])
def test_banana_reference_for_other_curvatures(curvature: float) -> None:
    t = Banana(curvature)
    assert t.reference.mean == (0.0, -2.0 * curvature)
    _moments_agree(t.sample(200_000, torch.Generator().manual_seed(7)), t.reference)


@pytest.mark.parametrize("name", SAMPLABLE)
def test_samplers_agree_with_log_prob_by_stein_identity(targets: dict, name: str) -> None:
    """For z ~ p: E[∇ log p(z)] = 0 and E[z_d ∂_d log p(z)] = −1 (integration by parts);
    a sampler that does not draw from log_prob's density fails this."""
    t = targets[name]
    n = 50_000
    z = t.sample(n, torch.Generator().manual_seed(8)).requires_grad_(True)
    (score,) = torch.autograd.grad(t.log_prob(z).sum(), z)
    z = z.detach()
    terms = torch.cat([score, z * score], dim=-1)
    want = torch.tensor([0.0] * t.dim + [-1.0] * t.dim, dtype=torch.float64)
    se = terms.std(0) / math.sqrt(n)
    assert ((terms.mean(0) - want).abs() <= 5 * se + 1e-12).all()


def test_logistic_reference_file_is_checked_and_converged() -> None:
    path = reference_module.REFERENCE_DIR / "logistic_breast_cancer.json"
    assert sha256_of(path) == suite.LOGISTIC_REFERENCE_SHA256
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["rhat_max"] < 1.01 and data["ess_bulk_min"] > 2000 and data["ess_sd_min"] > 2000
    assert data["settings"]["chains"] >= 4 and data["settings"]["draws_per_chain"] >= 5000
    assert len(data["mean"]) == len(data["sd"]) == len(data["mcse_mean"]) == 31
    t = BreastCancerLogistic()
    assert "R̂" in t.reference.source and "ESS" in t.reference.source
    # the Monte Carlo error of the reference is small against the sd
    assert max(e / s for e, s in zip(data["mcse_mean"], data["sd"])) < 0.01
    assert max(e / s for e, s in zip(data["mcse_sd"], data["sd"])) < 0.01


def _laplace(t: BreastCancerLogistic) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP and Laplace covariance by Newton with the analytic gradient and Hessian:

    ∇ = Xᵀ(y − σ(ℓ)) − z,   H = −Xᵀ diag(σ(1 − σ)) X − I,   X with a column of ones."""
    x1 = torch.cat([torch.ones(569, 1, dtype=F64), t.x], dim=1)
    z = torch.zeros(31, dtype=F64)
    for _ in range(30):
        p = torch.sigmoid(x1 @ z)
        grad = x1.T @ (t.y - p) - z
        hess = -(x1.T * (p * (1 - p))) @ x1 - torch.eye(31, dtype=F64)
        z = z - torch.linalg.solve(hess, grad)
    return z, torch.linalg.inv(-hess)


def test_logistic_reference_agrees_with_importance_sampling() -> None:
    """The chains' moments against an estimate that shares no code with them:
    self-normalized importance sampling from a multivariate t₁₀ on the Laplace
    approximation (ESS ≈ 2000 of 40000 draws). The posterior is skewed: its mean lies up
    to ~0.34 sd from the MAP, so the MAP is only a loose sanity check."""
    t = BreastCancerLogistic()
    m, cov = _laplace(t)
    zg = m.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(t.log_prob(zg), zg)
    assert float(auto.abs().max()) < 1e-8  # the analytic MAP is autograd's stationary point
    mean, sd = t.reference.tensors(F64)
    assert float(((mean - m) / sd).abs().max()) < 0.5
    g = torch.Generator().manual_seed(9)
    n, nu = 40_000, 10
    eps = torch.randn(n, 31, generator=g, dtype=F64)
    chi2 = torch.randn(n, nu, generator=g, dtype=F64).pow(2).sum(-1)  # χ² with ν dof
    u = eps / (chi2 / nu).sqrt().unsqueeze(-1)
    z = m + u @ torch.linalg.cholesky(cov).T
    log_q = -(nu + 31) / 2 * torch.log1p((u * u).sum(-1) / nu)  # up to a constant
    w = torch.softmax(torch.cat([t.log_prob(c) for c in z.split(10_000)]) - log_q, 0)
    assert float(1 / (w * w).sum()) > 1000
    is_mean = w @ z
    is_sd = (w @ (z - is_mean) ** 2).sqrt()
    assert float(((is_mean - mean) / sd).abs().max()) < 0.1
    assert float((is_sd / sd - 1).abs().max()) < 0.08


def test_corrupted_or_missing_reference_file_raises(tmp_path, monkeypatch) -> None:
    src = reference_module.REFERENCE_DIR / "logistic_breast_cancer.json"
    monkeypatch.setattr(reference_module, "REFERENCE_DIR", tmp_path)
    with pytest.raises(ValueError, match="is missing"):
        BreastCancerLogistic()
    shutil.copy(src, tmp_path / src.name)
    assert BreastCancerLogistic().reference is not None  # an intact copy loads
    text = (tmp_path / src.name).read_text(encoding="utf-8").replace('"mean": [', '"mean": [0.1, ')
    (tmp_path / src.name).write_text(text, encoding="utf-8")
    bad = sha256_of(tmp_path / src.name)
    with pytest.raises(ValueError, match="logistic_breast_cancer.json") as err:
        BreastCancerLogistic()
    assert bad in str(err.value) and suite.LOGISTIC_REFERENCE_SHA256 in str(err.value)
    monkeypatch.setattr(suite, "LOGISTIC_REFERENCE_SHA256", "f" * 64)
    shutil.copy(src, tmp_path / src.name)
    with pytest.raises(ValueError, match="f{64}"):
        BreastCancerLogistic()


def test_logistic_without_scikit_learn_says_what_to_install(monkeypatch) -> None:
    suite._breast_cancer.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(MissingDependencyError, match=r"pip install 'vilab\[posteriors\]'"):
            BreastCancerLogistic()
        with pytest.raises(ImportError):
            resolve_target("logistic_breast_cancer")
    finally:
        suite._breast_cancer.cache_clear()


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="dimension ≥ 2, got 1"):
        Funnel(1)
    with pytest.raises(ValueError, match="dimension ≥ 2, got 2.5"):
        IllConditionedGaussian(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="condition must be a finite number > 1, got 0.5"):
        IllConditionedGaussian(10, condition=0.5)
    with pytest.raises(ValueError, match="offset and scale must be > 0"):
        SquareMixture(scale=0.0)
    with pytest.raises(ValueError, match="one length"):
        Reference((0.0, 1.0), (1.0,), "x")
    with pytest.raises(ValueError, match="finite and > 0"):
        Reference((0.0,), (0.0,), "x")
    mean, sd = Reference((1.0, 2.0), (3.0, 4.0), "x").tensors(torch.float32)
    assert mean.dtype == sd.dtype == torch.float32 and sd.tolist() == [3.0, 4.0]
