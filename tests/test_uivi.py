"""The semi-implicit (UIVI) family: unbiased entropy gradient where q is Gaussian, log q
brackets, stability on the banana, and the fit/VAE integration."""

from __future__ import annotations

import math

import pytest
import torch

from vilab.commands.fit import run_fit
from vilab.config import load_fit_config, load_train_config
from vilab.families.semi_implicit import SemiImplicit
from vilab.train.fit import Fitter
from vilab.vae import build_vae, vae_objective


def linear_uivi(dim: int = 2, noise: int = 3) -> SemiImplicit:
    """μ(ε) = A ε + b (no hidden layer): q = N(b, A Aᵀ + σ² I) exactly."""
    torch.manual_seed(0)
    q = SemiImplicit(dim, noise_dim=noise, hidden=(), log_q_samples=2000).double()
    with torch.no_grad():
        q.net[0].weight.copy_(torch.randn(dim, noise, dtype=torch.float64) * 0.8)
        q.net[0].bias.copy_(torch.tensor([0.5, -1.0], dtype=torch.float64))
    return q


def gaussian_of(q: SemiImplicit) -> torch.distributions.MultivariateNormal:
    a, b = q.net[0].weight, q.net[0].bias
    cov = a @ a.T + torch.diag(q.sigma**2)
    return torch.distributions.MultivariateNormal(b, cov)


def test_entropy_gradient_is_unbiased_when_q_is_gaussian() -> None:
    q = linear_uivi()
    params = [q.net[0].weight, q.rho]
    analytic = torch.autograd.grad(-gaussian_of(q).entropy(), params)  # ∇ E_q[log q]
    torch.manual_seed(1)
    z, eps0 = q.rsample_with_noise(40_000)
    surrogate = q.entropy_surrogate(z, eps0).mean()
    estimate = torch.autograd.grad(surrogate, params)
    for a, e in zip(analytic, estimate, strict=True):
        torch.testing.assert_close(e, a, atol=0.03 * float(a.abs().max()) + 1e-3, rtol=0)
    assert 0.3 < float(q.accept_rate) <= 1.0


def test_log_q_estimates_bracket_the_exact_log_density() -> None:
    q = linear_uivi()
    torch.manual_seed(2)
    with torch.no_grad():
        z, eps0 = q.rsample_with_noise(3000)
        lower, upper = q.log_prob_bounds(z, None, eps0, k=50)
        exact = gaussian_of(q).log_prob(z)
    assert float((lower - exact).mean()) < 0 < float((upper - exact).mean())
    lower_big, _ = q.log_prob_bounds(z, None, None, k=2000)
    assert abs(float((lower_big - exact).mean())) < abs(float((lower - exact).mean()))


def test_amortized_shapes_and_gradients() -> None:
    q = SemiImplicit(4, noise_dim=3, hidden=(16,), context_dim=5)
    h = torch.randn(6, 5)
    z, eps0 = q.rsample_with_noise(7, h)
    assert z.shape == (7, 6, 4) and eps0.shape == (7, 6, 3)
    q.entropy_surrogate(z, eps0, h).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in q.parameters())
    z2, log_q = q.rsample_and_log_prob(2, h)
    assert log_q.shape == (2, 6) and torch.isfinite(log_q).all()


def test_fit_banana_with_uivi_reports_both_kl_estimates(tmp_path) -> None:
    cfg = load_fit_config(
        overrides=[
            "target.name=banana",
            "family.kind=uivi",
            "family.hidden=[32, 32]",
            "steps=60",
            "samples=200",
            "eval_samples=500",
            "figures=false",
        ]
    )
    m = run_fit(cfg, tmp_path, progress=False, tensorboard=False).metrics
    assert m["kl_lower"] <= m["kl"] + 3 * m["kl_stderr"]
    assert "importance sampling over ε" in m["kl_note"]
    assert math.isfinite(m["hmc_step_size"])


@pytest.mark.slow
def test_no_nan_in_10000_uivi_steps_on_the_banana() -> None:
    cfg = load_fit_config(
        overrides=[
            "target.name=banana",
            "family.kind=uivi",
            "steps=10000",
            "samples=100",
            "optim.lr=0.005",
        ]
    )
    fitter = Fitter(cfg)
    for step in range(10_000):
        out = fitter.train_step(log_value=step % 500 == 0)
        assert out.finite == 1.0, step  # no step had a NaN loss or gradient to skip
        if step % 500 == 0:
            assert math.isfinite(out.values["bound"]), step
    for p in fitter.family.parameters():
        assert torch.isfinite(p).all()


def test_uivi_vae_objective() -> None:
    cfg = load_train_config(
        overrides=[
            "data.name=tiny",
            "latent_dim=5",
            "encoder.kind=identity",
            "posterior.kind=uivi",
            "posterior.hidden=[32]",
            "decoder.hidden=[32]",
        ]
    )
    vae = build_vae(cfg)
    obj = vae_objective(vae, (torch.rand(4, 784) < 0.3).float(), cfg.objective)
    obj.surrogate.backward()
    assert obj.value.shape == (4,) and torch.isfinite(obj.value).all()
    assert all(p.grad is not None for p in vae.parameters())
