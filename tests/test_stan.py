"""Stan programs as targets (vilab.targets.stan): Stan's density and gradient against a
hand-written torch density, finite differences, the way back, batching, the compile
cache, Stan's own error messages, and a short fit.

The default run compiles one program (eight schools, centred), once: the library is cached
in ``$VILAB_CACHE_DIR`` (else ``~/.cache/vilab/stan``), so a later run compiles nothing.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("httpstan", reason="the Stan extra: pip install 'vilab[stan]'")
if shutil.which("g++") is None:
    pytest.skip("no C++ compiler (g++)", allow_module_level=True)

from vilab.targets.stan import StanError, StanTarget, from_stan  # noqa: E402

PROGRAM = """\
data {
  int<lower=0> J;
  array[J] real y;
  array[J] real<lower=0> sigma;
}
parameters {
  array[J] real theta;
  real mu;
  real<lower=0> tau;
}
model {
  tau ~ cauchy(0, 5);
  theta ~ normal(mu, tau);
  y ~ normal(theta, sigma);
  mu ~ normal(0, 5);
}
"""
Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
DATA = {"J": 8, "y": Y, "sigma": SIGMA}


@pytest.fixture(scope="session")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stan") / "eight_schools.stan"
    path.write_text(PROGRAM)
    return path


@pytest.fixture(scope="session")
def eight(program: Path) -> StanTarget:
    return from_stan(program, DATA)


def reference_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Eight schools (centred) on (θ₁..θ₈, μ, log τ): μ ~ N(0, 5), τ ~ half-Cauchy(0, 5),
    θ_j ~ N(μ, τ), y_j ~ N(θ_j, σ_j), plus the Jacobian log τ of τ = exp(u)."""
    theta, mu, u = z[..., :8], z[..., 8], z[..., 9]
    tau = u.exp()
    y, sigma = torch.tensor(Y, dtype=z.dtype), torch.tensor(SIGMA, dtype=z.dtype)

    def normal(x: torch.Tensor, m: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor:
        return -0.5 * ((x - m) / s) ** 2 - torch.log(torch.as_tensor(s, dtype=z.dtype))

    lp = normal(mu, 0.0, 5.0) - torch.log1p((tau / 5.0) ** 2)  # half-Cauchy(0, 5), unnormalized
    lp = lp + normal(theta, mu.unsqueeze(-1), tau.unsqueeze(-1)).sum(-1)
    lp = lp + normal(y, theta, sigma).sum(-1)
    return lp + u


def points(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g, dtype=torch.float64) * torch.tensor([5.0] * 9 + [1.0])


def test_shape_names_and_support(eight: StanTarget) -> None:
    assert eight.dim == 10 and eight.name == "eight_schools" and eight.support is None
    assert eight.param_names() == (*(f"theta[{j}]" for j in range(1, 9)), "mu", "tau")
    z = points(12).reshape(3, 4, 10).float()
    out = eight.log_prob(z)
    assert out.shape == (3, 4) and out.dtype == torch.float32


def test_density_and_gradient_match_torch(eight: StanTarget) -> None:
    z = points(64).requires_grad_(True)
    ours = eight.log_prob(z)
    (g_ours,) = torch.autograd.grad(ours.sum(), z)
    ref = reference_log_prob(z)
    (g_ref,) = torch.autograd.grad(ref.sum(), z)
    diff = (ours - ref).detach()  # Stan drops constants (propto): equal up to one constant
    assert float((diff - diff[0]).abs().max()) < 1e-9
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-10)


def test_gradient_matches_finite_differences(eight: StanTarget) -> None:
    z = points(3, seed=1)
    model = eight.model
    _, grad = model.log_density_gradient(z.numpy())
    h = 1e-6
    for k in range(10):
        e = np.zeros(10)
        e[k] = h
        up, _ = model.log_density_gradient(z.numpy() + e)
        down, _ = model.log_density_gradient(z.numpy() - e)
        np.testing.assert_allclose((up - down) / (2 * h), grad[:, k], rtol=1e-5, atol=1e-6)


def test_backward_scales_by_grad_output(eight: StanTarget) -> None:
    z = points(5).requires_grad_(True)
    w = torch.arange(1.0, 6.0, dtype=torch.float64)
    (g,) = torch.autograd.grad((eight.log_prob(z) * w).sum(), z)
    (g1,) = torch.autograd.grad(eight.log_prob(z).sum(), z)
    torch.testing.assert_close(g, g1 * w[:, None], rtol=0, atol=0)


def test_batch_equals_one_by_one_and_threads_agree(eight: StanTarget) -> None:
    z = points(200).numpy()  # 2 threads share a batch of >= 128 points
    lp, grad = eight.model.log_density_gradient(z)
    for i in range(len(z)):
        lp_i, g_i = eight.model.log_density_gradient(z[i : i + 1])
        assert lp_i[0] == lp[i] and np.array_equal(g_i[0], grad[i])
    threads, eight.model.threads = eight.model.threads, 1
    try:
        lp1, grad1 = eight.model.log_density_gradient(z)
    finally:
        eight.model.threads = threads
    assert np.array_equal(lp, lp1) and np.array_equal(grad, grad1)


def test_constrain_unconstrain_round_trip(eight: StanTarget) -> None:
    z = points(20)
    x = eight.constrain(z)
    assert x.shape == (20, 10) and x.dtype == torch.float64
    torch.testing.assert_close(x[:, 9], z[:, 9].exp())  # tau = exp(u)
    torch.testing.assert_close(x[:, :9], z[:, :9])
    torch.testing.assert_close(eight.unconstrain(x), z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("u", [800.0, -800.0])
def test_extreme_point_is_minus_inf_not_an_error(eight: StanTarget, u: float) -> None:
    """tau = exp(800) = inf makes log p -inf; tau = exp(-800) = 0 is Stan's domain error
    (a normal's scale must be positive): both give -inf and gradient 0 at that point."""
    z = points(3)
    z[1, 9] = u
    z = z.requires_grad_(True)
    lp = eight.log_prob(z)
    assert float(lp[1].detach()) == -math.inf and torch.isfinite(lp[[0, 2]]).all()
    (g,) = torch.autograd.grad(lp[[0, 2]].sum(), z)
    assert torch.isfinite(g).all() and (g[1] == 0).all()
    _, grad = eight.model.log_density_gradient(z.detach().numpy())
    assert (grad[1] == 0).all()


def test_second_load_is_a_cache_hit(
    eight: StanTarget, program: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    again = from_stan(program, DATA)
    elapsed = time.perf_counter() - t0
    assert "compiling" not in capfd.readouterr().err
    assert elapsed < 5.0 and again.dim == 10
    z = points(4).numpy()
    assert np.array_equal(
        again.model.log_density_gradient(z)[0], eight.model.log_density_gradient(z)[0]
    )


def test_syntax_error_gives_stans_message_with_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.stan"
    bad.write_text(
        "parameters {\n  real mu;\n  real<lower=0 sigma;\n}\nmodel { mu ~ normal(0, 1); }\n"
    )
    with pytest.raises(StanError) as err:
        from_stan(bad)
    first = str(err.value).splitlines()[0]
    assert "line 3" in first and "broken.stan" in first
    assert isinstance(err.value, ValueError)


def test_bad_data_gives_stans_message(program: Path, eight: StanTarget) -> None:
    with pytest.raises(StanError, match=r"variable name=y"):
        from_stan(program, {"J": 8, "sigma": SIGMA})
    with pytest.raises(StanError, match=r"sigma"):
        from_stan(program, {"J": 8, "y": Y, "sigma": [-1.0] * 8})


def test_data_from_a_json_file(program: Path, eight: StanTarget, tmp_path: Path) -> None:
    import json

    path = tmp_path / "data.json"
    path.write_text(json.dumps(DATA))
    z = points(2).numpy()
    again = from_stan(program, str(path))
    assert np.array_equal(
        again.model.log_density_gradient(z)[0], eight.model.log_density_gradient(z)[0]
    )


def test_fit_a_stan_target(program: Path, eight: StanTarget, tmp_path: Path, keep_threads) -> None:
    import vilab

    result = vilab.fit(
        f"stan:{program}",
        "mean_field",
        data=DATA,
        run_dir=tmp_path / "run",
        steps=50,
        samples=32,
        eval_samples=200,
        report_samples=200,
        figures=False,
        threads=1,
        progress=False,
    )
    assert math.isfinite(result.metrics["elbo"])


SIMPLEX = """\
data {
  int<lower=1> K;
  array[K] int<lower=0> n;
}
parameters {
  simplex[K] p;
  real<lower=0, upper=1> a;
}
transformed parameters {
  real logit_a = logit(a);
}
model {
  n ~ multinomial(p);
  a ~ beta(2, 3);
}
generated quantities {
  real draw = normal_rng(0, 1);
}
"""


@pytest.mark.slow
def test_simplex_transformed_parameters_and_no_generated_quantities(tmp_path: Path) -> None:
    """A second program (compiles: slow): a simplex (K − 1 unconstrained coordinates,
    stick breaking) and an interval; names are parameters + transformed parameters."""
    path = tmp_path / "simplex.stan"
    path.write_text(SIMPLEX)
    target = from_stan(path, {"K": 3, "n": [3, 5, 2]})
    assert target.dim == 3
    assert target.param_names() == ("p[1]", "p[2]", "p[3]", "a", "logit_a")
    z = torch.randn(6, 3, dtype=torch.float64)
    x = target.constrain(z)
    torch.testing.assert_close(x[:, :3].sum(-1), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(x[:, 4], torch.logit(x[:, 3]))
    torch.testing.assert_close(target.unconstrain(x[:, :4]), z, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(target.log_prob(z)).all()


ODE = """\
functions {
  vector decay(real t, vector y, real k) { return -k * y; }
}
data { int<lower=1> T; array[T] real ts; vector[T] obs; }
parameters { real<lower=0> k; }
model {
  array[T] vector[1] y = ode_bdf(decay, [2.0]', 0.0, ts, k);
  k ~ lognormal(0, 1);
  for (t in 1:T) obs[t] ~ normal(y[t][1], 0.1);
}
"""


@pytest.mark.slow
def test_an_ode_program_links_sundials_and_matches_the_closed_form(tmp_path: Path) -> None:
    """A program with Stan's stiff ODE solver (CVODES, linked from the wheel's SUNDIALS;
    compiles: slow): y' = −k y, y(0) = 2 has y(t) = 2 e^{−kt}, so the density on
    u = log k and its gradient equal the closed form's to the solver's tolerance."""
    path = tmp_path / "decay.stan"
    path.write_text(ODE)
    ts = [0.5, 1.0, 2.0, 3.0]
    obs = [1.3, 0.75, 0.28, 0.1]
    target = from_stan(path, {"T": 4, "ts": ts, "obs": obs})
    u = torch.linspace(-1.0, 0.5, 5, dtype=torch.float64)[:, None].requires_grad_(True)
    ours = target.log_prob(u)
    (g_ours,) = torch.autograd.grad(ours.sum(), u)
    uu = u.detach().clone().requires_grad_(True)
    k = uu[:, 0].exp()
    y = 2.0 * torch.exp(-k[:, None] * torch.tensor(ts, dtype=torch.float64))
    ref = -0.5 * uu[:, 0] ** 2 - 0.5 * ((torch.tensor(obs, dtype=torch.float64) - y) / 0.1).pow(
        2
    ).sum(-1)
    (g_ref,) = torch.autograd.grad(ref.sum(), uu)  # lognormal(k) · |dk/du| = N(u; 0, 1)
    diff = (ours - ref).detach()
    assert float((diff - diff[0]).abs().max()) < 1e-4
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-4)
