"""HMC: leaves a Gaussian invariant, adapts toward the target acceptance rate, rejects
non-finite proposals without ever emitting a NaN."""

from __future__ import annotations

import math

import pytest
import torch

from vilab.samplers import DualAveraging, hmc, hmc_step
from vilab.samplers.hmc import hmc_trace, log_prob_and_grad
from vilab.targets.energies import banana_log_prob

MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
COV = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=torch.float64)
GAUSS = torch.distributions.MultivariateNormal(MU, COV)


def test_leaves_a_gaussian_invariant() -> None:
    """Chains started *at* N(μ, Σ) stay distributed as N(μ, Σ) (exact invariance check),
    and chains started far away converge to it."""
    torch.manual_seed(0)
    x0 = GAUSS.sample((4000,))
    r = hmc(GAUSS.log_prob, x0, num_samples=20, burn_in=0, step_size=0.4, adapt=False)
    last = r.samples[-1]
    se_mean = (COV.diagonal() / 4000).sqrt()
    assert ((last.mean(0) - MU).abs() < 4 * se_mean).all()
    torch.testing.assert_close(torch.cov(last.T), COV, atol=0.15, rtol=0)
    far = hmc(GAUSS.log_prob, torch.full((500, 3), 6.0, dtype=torch.float64), 200, burn_in=300)
    s = far.samples.reshape(-1, 3)
    torch.testing.assert_close(s.mean(0), MU, atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), COV, atol=0.15, rtol=0)


@pytest.mark.parametrize("target", [0.65, 0.8])
@pytest.mark.parametrize("name", ["gaussian", "banana"])
def test_adapted_acceptance_rate_lands_near_the_target(name: str, target: float) -> None:
    torch.manual_seed(1)
    if name == "gaussian":
        log_prob, x0 = GAUSS.log_prob, torch.zeros(300, 3, dtype=torch.float64)
    else:
        log_prob, x0 = (
            banana_log_prob,
            torch.tensor([[0.0, -1.0]], dtype=torch.float64).repeat(300, 1),
        )
    r = hmc(log_prob, x0, num_samples=300, burn_in=1000, step_size=0.05, target_accept=target)
    assert abs(float(r.accept_rate.mean()) - target) < 0.1
    assert r.step_size.shape == (300,) and (r.step_size > 0.05).all()


def test_non_finite_proposals_are_rejected_and_no_nan_escapes() -> None:
    """A density that is NaN beyond |x| > 2 (the seed-000 failure mode) with a huge step."""

    def nasty(x: torch.Tensor) -> torch.Tensor:
        lp = -0.5 * (x * x).sum(-1)
        return torch.where(x.abs().max(-1).values > 2.0, torch.full_like(lp, math.nan), lp)

    torch.manual_seed(0)
    x0 = torch.zeros(100, 2, dtype=torch.float64)
    x, lp, g, prob, acc = hmc_step(nasty, x0, torch.tensor(5.0, dtype=torch.float64), 3)
    assert torch.isfinite(x).all() and torch.isfinite(lp).all() and torch.isfinite(g).all()
    assert (prob[~acc] < 1).all()
    r = hmc(nasty, x0, num_samples=40, burn_in=40, step_size=3.0)
    assert torch.isfinite(r.samples).all() and (r.samples.abs() <= 2.0).all()
    assert torch.isfinite(r.step_size).all()


def test_gradient_and_dual_averaging_helpers() -> None:
    x = torch.randn(5, 3, dtype=torch.float64)
    lp, g = log_prob_and_grad(GAUSS.log_prob, x)
    torch.testing.assert_close(g, -(x - MU) @ torch.linalg.inv(COV))
    da = DualAveraging(torch.full((4,), 0.1), target=0.8)
    for _ in range(50):
        eps = da.update(torch.ones(4))  # always accepting: the step must grow
    assert (eps > 0.1).all()
    with pytest.raises(ValueError, match="target acceptance"):
        DualAveraging(torch.ones(1), target=1.5)


def test_bad_arguments() -> None:
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="num_leapfrog"):
        hmc_step(lambda x: -(x * x).sum(-1), x0, torch.tensor(0.1), 0)
    with pytest.raises(ValueError, match="not finite at some initial"):
        hmc(lambda x: torch.full(x.shape[:-1], -math.inf), x0, 10)
    with pytest.raises(ValueError, match="positive"):
        hmc(lambda x: -(x * x).sum(-1), x0, 10, step_size=-1.0)


def _potential(log_prob):
    def potential(x: torch.Tensor):
        lp, g = log_prob_and_grad(log_prob, x)
        return lp, g, 2.0 * x  # a by-product of the state, carried with it

    return potential


def _nasty(x: torch.Tensor) -> torch.Tensor:
    lp = -0.5 * (x * x).sum(-1)
    return torch.where(x.abs().max(-1).values > 2.0, torch.full_like(lp, math.nan), lp)


@pytest.mark.parametrize("own_gradient", [False, True])
@pytest.mark.parametrize("name", ["gaussian", "nasty"])
def test_trace_is_hmc_step_chained(name: str, own_gradient: bool) -> None:
    """hmc_trace draws what burn-in + kept hmc_step calls draw, bit for bit, with the
    by-product of each kept state (with or without a gradient-only function for the
    inner leapfrog steps); non-finite proposals are rejected alike."""
    log_prob, step = (GAUSS.log_prob, 0.5) if name == "gaussian" else (_nasty, 1.5)
    x0 = torch.randn(64, 3, dtype=torch.float64).clamp(-1.5, 1.5)  # (nasty: finite at x0)
    steps = torch.full((64,), step, dtype=torch.float64) * torch.rand(64, dtype=torch.float64)
    torch.manual_seed(7)
    grad = (lambda x: log_prob_and_grad(log_prob, x)[1]) if own_gradient else None
    tr = hmc_trace(
        _potential(log_prob), x0, steps, 4, burn_in=3, num_samples=4, jitter=0.2, gradient=grad
    )
    torch.manual_seed(7)
    x, current, kept, probs = x0, log_prob_and_grad(log_prob, x0), [], []
    for i in range(7):
        x, lp, g, prob, _ = hmc_step(log_prob, x, steps, 4, None, current, 0.2)
        current = (lp, g)
        probs.append(prob)
        if i >= 3:
            kept.append(x)
    assert torch.equal(tr.samples, torch.stack(kept))
    assert torch.equal(tr.extras, 2.0 * torch.stack(kept))
    assert torch.equal(tr.accept_prob, torch.stack(probs))
    assert torch.equal(tr.final[1], current[0]) and torch.equal(tr.final[2], current[1])
    assert torch.isfinite(tr.samples).all() and 0 < float(tr.accept_prob.mean()) < 1
    with pytest.raises(ValueError, match="num_samples"):
        hmc_trace(_potential(log_prob), x0, steps, 4, burn_in=0, num_samples=0)
