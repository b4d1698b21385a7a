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
    # the standard error of the log q(z) estimates is reported beside the K they used
    assert m["log_q_draws"] == 1000 and 0 < m["log_q_stderr"] < math.inf
    assert f"s.e. of log q is {m['log_q_stderr']:.3g}" in m["kl_note"]


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


# -- the batched HMC reverse sampler against a frozen copy of the previous implementation --
def _ref_log_prob_and_grad(log_prob, x):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = log_prob(x)
        (grad,) = torch.autograd.grad(lp.sum(), x)
    return lp.detach(), grad.detach()


def _ref_hmc_step(log_prob, x, step_size, num_leapfrog, current, jitter):
    lp0, g0 = current
    inv_m = torch.ones_like(x)
    eps = step_size.unsqueeze(-1) if step_size.dim() else step_size
    if jitter:
        eps = eps * (1.0 + jitter * (2.0 * torch.rand_like(eps) - 1.0))
    p0 = torch.randn_like(x) / inv_m.sqrt()
    k0 = 0.5 * (p0 * p0 * inv_m).sum(-1)
    xq, p, g = x, p0 + 0.5 * eps * g0, g0
    for i in range(num_leapfrog):
        xq = xq + eps * inv_m * p
        lp, g = _ref_log_prob_and_grad(log_prob, xq)
        p = p + (eps if i < num_leapfrog - 1 else 0.5 * eps) * g
    k1 = 0.5 * (p * p * inv_m).sum(-1)
    log_ratio = (lp - k1) - (lp0 - k0)
    ok = torch.isfinite(log_ratio) & torch.isfinite(xq).all(-1) & torch.isfinite(g).all(-1)
    log_ratio = torch.where(ok, log_ratio, torch.full_like(log_ratio, -math.inf))
    accept_prob = log_ratio.clamp(max=0.0).exp()
    accepted = torch.rand_like(accept_prob) < accept_prob
    keep = accepted.unsqueeze(-1)
    return (
        torch.where(keep, xq, x),
        torch.where(accepted, lp, lp0),
        torch.where(keep, g, g0),
        accept_prob,
    )


def _ref_entropy_surrogate(q: SemiImplicit, z, eps0, context=None):
    """The UIVI entropy surrogate as vilab computed it before the batched sampler (a
    Python loop of hmc_step over autograd's log_prob_and_grad, then μ(ε') again)."""
    z0, x = z.detach(), eps0.detach()
    ctx = None if context is None else context.detach()
    for p in q.net.parameters():
        p.requires_grad_(False)
    proj = None if ctx is None else q.context_projection(ctx)

    def log_post(e):
        return -0.5 * (e * e).sum(-1) + q._conditional_log_prob(z0, q.mean(e, ctx, proj))

    with torch.no_grad():
        current = _ref_log_prob_and_grad(log_post, x)
        step = q.step_size.expand(x.shape[:-1])
        kept, probs = [], []
        for i in range(q.hmc_burn_in + q.hmc_samples):
            x, lp, g, prob = _ref_hmc_step(log_post, x, step, q.hmc_leapfrog, current, 0.2)
            current = (lp, g)
            probs.append(prob.mean())
            if i >= q.hmc_burn_in:
                kept.append(x)
        rate = torch.stack(probs).mean()
        q.step_size.mul_(torch.exp(0.5 * (rate - q.target_accept))).clamp_(1e-4, 10.0)
        q.accept_rate.copy_(rate)
    for p in q.net.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        mu = q.mean(torch.stack(kept), ctx)
        score = (-(z.detach() - mu) / q.sigma.detach() ** 2).mean(0)
    return (score * z).sum(-1)


def _two_families(activation: str, context_dim: int | None):
    """A family and a copy of it for the reference; ``silu``: a network of a layer the
    hand-written backward does not know (the autograd potential)."""
    act = "relu" if activation == "silu" else activation
    kw = {"noise_dim": 4, "hidden": (16, 16), "activation": act, "context_dim": context_dim}
    q, ref = SemiImplicit(2, **kw).double(), SemiImplicit(2, **kw).double()
    if activation == "silu":
        for f in (q, ref):
            f.net[1], f.net[3] = torch.nn.SiLU(), torch.nn.SiLU()
    ref.load_state_dict(q.state_dict())
    return q, ref


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu", "softplus", "gelu", "silu"])
@pytest.mark.parametrize("amortized", [False, True])
def test_batched_sampler_gives_the_previous_gradient_on_fixed_noise(activation, amortized):
    """Seeded, float64, three training iterations (the step size adapts between them):
    the batched sampler draws the same ε' and gives the same entropy gradient, step size
    and acceptance rate as the previous implementation."""
    torch.manual_seed(3)
    q, ref = _two_families(activation, 3 if amortized else None)
    if activation == "silu":
        from vilab.families.semi_implicit import _mlp_layers

        assert _mlp_layers(q.net, q.noise_dim) is None  # the autograd potential
    h = torch.randn(5, 3, dtype=torch.float64) if amortized else None
    for it in range(3):
        torch.manual_seed(10 + it)
        z, eps0 = q.rsample_with_noise(40, h)
        torch.manual_seed(100 + it)
        new = torch.autograd.grad(q.entropy_surrogate(z, eps0, h).sum(), list(q.parameters()))
        torch.manual_seed(10 + it)
        z_r, eps0_r = ref.rsample_with_noise(40, h)
        torch.manual_seed(100 + it)
        old_s = _ref_entropy_surrogate(ref, z_r, eps0_r, h).sum()
        old = torch.autograd.grad(old_s, list(ref.parameters()))
        for a, b in zip(new, old, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(q.step_size, ref.step_size, rtol=1e-12, atol=0)
        torch.testing.assert_close(q.accept_rate, ref.accept_rate, rtol=1e-12, atol=0)
    assert 0.0 < float(q.accept_rate) <= 1.0


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu", "softplus", "gelu"])
def test_hand_written_backward_matches_autograd(activation) -> None:
    torch.manual_seed(4)
    q = SemiImplicit(3, noise_dim=5, hidden=(7, 6), activation=activation, context_dim=2)
    q = q.double()
    h = torch.randn(4, 2, dtype=torch.float64)
    z, _ = q.rsample_with_noise(6, h)
    eps = 2 * torch.randn(6, 4, 5, dtype=torch.float64)
    lp, g, mu = q.noise_potential(z, h)(eps)
    with torch.no_grad():
        const = -q.sigma.log().sum() - 1.5 * math.log(2 * math.pi)
        proj = q.context_projection(h)
    lp_a, g_a, mu_a = q._autograd_potential(z.detach(), h, proj, q.sigma.detach() ** -2, const)(eps)
    torch.testing.assert_close(mu, q.mean(eps, h).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((lp, g, mu), (lp_a, g_a, mu_a), rtol=1e-10, atol=1e-12)
    assert all(p.requires_grad for p in q.parameters())


# -- log q(z) sized to a standard error ---------------------------------------------------------
def test_log_q_stderr_matches_the_spread_over_banks() -> None:
    """The delta-method standard error of each lower estimate agrees with the spread of
    the estimate over independent banks of draws (at an error of 0.1 nats; at 0.5 it
    sees about 2/3 of the spread: it is blind to weights too rare to be drawn)."""
    q = linear_uivi()
    torch.manual_seed(5)
    with torch.no_grad():
        z, _ = q.rsample_with_noise(300)
    reps = [q.log_q_estimate(z, k=1600) for _ in range(100)]
    spread = torch.stack([r.lower for r in reps]).std(0)
    claimed = torch.stack([r.stderr for r in reps]).pow(2).mean(0).sqrt()
    ratio = float((claimed.pow(2).mean() / spread.pow(2).mean()).sqrt())
    assert 0.85 < ratio < 1.15, ratio
    assert all(r.draws == 1600 for r in reps)


def test_fixed_k_log_q_is_unchanged() -> None:
    """log_prob_bounds with a fixed K: the estimate vilab gave before the sizing."""
    q = linear_uivi()
    torch.manual_seed(6)
    with torch.no_grad():
        z, eps0 = q.rsample_with_noise(40)
    torch.manual_seed(7)
    lower, upper = q.log_prob_bounds(z, None, eps0, k=120)
    torch.manual_seed(7)
    with torch.no_grad():
        parts = []
        for m in (50, 50, 20):
            mu = q.mean(torch.randn(m, 3, dtype=torch.float64), None)
            parts.append(torch.logsumexp(q._conditional_log_prob(z[None], mu[:, None]), 0))
        lse = torch.logsumexp(torch.stack(parts), 0)
        own = q._conditional_log_prob(z, q.mean(eps0, None))
    torch.testing.assert_close(lower, lse - math.log(120), rtol=0, atol=0)
    torch.testing.assert_close(upper, torch.logaddexp(lse, own) - math.log(121), rtol=0, atol=0)


def test_log_q_sized_to_a_target_standard_error() -> None:
    q = linear_uivi()
    torch.manual_seed(8)
    with torch.no_grad():
        z, eps0 = q.rsample_with_noise(500)
    fixed = q.log_q_estimate(z, None, eps0, k=25)
    assert fixed.draws == 25
    sized = q.log_q_estimate(z, None, eps0, k=25, stderr=0.02)
    rms = float(sized.stderr.pow(2).mean().sqrt())
    assert rms <= 0.02 < float(fixed.stderr.pow(2).mean().sqrt())
    assert sized.draws in {25 * 2**i for i in range(1, 12)}
    capped = q.log_q_estimate(z, None, eps0, k=25, stderr=1e-6, max_k=400)
    assert capped.draws == 400 and capped.upper is not None

    # the family's evaluation calls size K and say what they reached
    q.log_q_samples, q.log_q_stderr = 25, 0.02
    q.reset_log_q_summary()
    z2, lower, upper = q.rsample_and_log_q_bounds(500)
    q.rsample_and_log_prob(300)
    summary = q.log_q_summary()
    assert summary["log_q_estimates"] == 800 and summary["log_q_stderr"] <= 0.02
    assert summary["log_q_draws"] > 25
    notes = q.estimate_notes()
    assert notes["log_q_stderr"] == summary["log_q_stderr"]
    assert "sized to s.e. ≤ 0.02" in notes["kl_note"] and "s.e. of log q" in notes["kl_note"]
    with pytest.raises(ValueError, match="log_q_stderr"):
        SemiImplicit(2, log_q_stderr=0.0)


def test_speed_benchmark_part_runs(capsys, keep_threads) -> None:
    """``benchmarks/uivi.py --part speed``: the floor is a mean-field step plus the HMC's
    51 network passes at the paper's settings, and the table and goal are printed."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    uivi = __import__("uivi")
    assert uivi.hmc_network_passes(SemiImplicit(2)) == 1 + (5 + 5) * 5
    args = uivi.parse_args(["--part", "speed", "--quick", "--speed-samples", "50"])
    args.speed_rounds, args.speed_block = 1, 10
    r = uivi.part_speed(args)
    assert r["floor_ms"] == pytest.approx(r["ms"]["mean_field"] + 51 * r["ms"]["pass"])
    assert r["ratio_floor"] == pytest.approx(r["ms"]["uivi"] / r["floor_ms"])
    text = capsys.readouterr().out
    assert "**floor** = mean-field step + 51 passes" in text and "UIVI / floor" in text
    assert any("(4) a UIVI step within 1.3×" in line for line in uivi.goals({"speed": r}, args))
