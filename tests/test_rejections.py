"""Targets that reject points (``Target.rejects``: a Stan program whose ODE solve fails or
that throws a domain error returns log p̃ = −inf there): a fit drops those draws from its
step, as Stan's ADVI does, instead of stopping as for a zero density."""

from __future__ import annotations

import math

import pytest
import torch

from vilab.config import load_fit_config
from vilab.estimators.elbo import annealed_elbo_surrogate, elbo, kept_mean
from vilab.targets.base import Target, TargetError
from vilab.train.fit import Fitter

F64 = torch.float64


def test_kept_mean_is_the_mean_of_the_kept_draws_and_sends_them_alone_a_gradient() -> None:
    x = torch.tensor([[1.0, 2.0], [-math.inf, 4.0], [3.0, -math.inf]], dtype=F64)
    x.requires_grad_(True)
    keep = ~torch.isneginf(x)
    got = kept_mean(x, keep)
    torch.testing.assert_close(got, torch.tensor([2.0, 3.0], dtype=F64))
    (g,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g, torch.tensor([[0.5, 0.5], [0.0, 0.5], [0.5, 0.0]], dtype=F64))
    assert torch.equal(kept_mean(x.detach()), x.detach().mean(0))  # no keep: the plain mean
    assert torch.isnan(kept_mean(x.detach(), torch.zeros_like(keep))).all()  # none kept
    lq = torch.zeros_like(x)
    torch.testing.assert_close(annealed_elbo_surrogate(x, lq, 1.0, keep), elbo(x - lq, keep))


class HalfRejecting(Target):
    """N(0, I) in 2-D whose program 'fails' (−inf) where z₀ > ``edge``."""

    name, dim, support = "half", 2, None

    def __init__(self, rejects: bool, edge: float = 0.5) -> None:
        self.rejects, self.edge = rejects, edge

    def log_prob(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        lp = -0.5 * (z**2).sum(-1)
        return torch.where(z[..., 0] > self.edge, torch.full_like(lp, -math.inf), lp)


def fitter(target: Target, *extra: str) -> Fitter:
    overrides = ["family.kind=mean_field", "dtype=float64", "steps=100", "samples=200"]
    overrides += ["optim.lr=0.05", "objective.beta_steps=0", *extra]
    return Fitter(load_fit_config(overrides=overrides), target)


def test_rejections_in_the_far_tail_are_dropped_and_the_fit_finds_the_target() -> None:
    """N(0, I) cut at z₀ > 3 (0.13% of its mass, and of q's start N(0, I)): the rejected
    draws are dropped and counted, and q ends at N(0, I). (Cut at 2, dropping already
    pulls q's mean in z₀ to +0.11 with 5% rejected: the bias the next test stops.)"""
    torch.manual_seed(0)
    f = fitter(HalfRejecting(rejects=True, edge=3.0))
    results = [f.train_step(log_value=True) for _ in range(100)]
    assert all(r.finite and r.fault is None for r in results)
    assert sum(r.values["rejected"] for r in results) > 0
    z = f.family.rsample(20_000).detach()
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=F64), atol=0.04, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(2, dtype=F64), atol=0.04, rtol=0)


def test_a_fit_moving_into_a_rejected_region_stops_with_the_share_named() -> None:
    """With the cut at 0.5 dropped draws pull q into the rejected half-plane (the mean of
    the kept draws rises as q spreads there): the fit stops once over half are rejected."""
    torch.manual_seed(0)
    f = fitter(HalfRejecting(rejects=True, edge=0.5))
    with pytest.raises(TargetError, match=r"rejected \d+ of 200 samples of q at step \d+ .*"):
        for _ in range(100):
            f.train_step(log_value=True)
    assert f.step > 1  # not at the start: ~30% are rejected there


def test_a_target_that_does_not_reject_still_stops_with_the_support_error() -> None:
    torch.manual_seed(0)
    f = fitter(HalfRejecting(rejects=False))
    with pytest.raises(TargetError, match="returned −inf .*target.support"):
        f.train_step()


def test_a_step_that_rejects_every_draw_is_skipped_and_blames_the_target() -> None:
    torch.manual_seed(0)
    f = fitter(HalfRejecting(rejects=True, edge=-math.inf))
    r = f.train_step(log_value=False)  # not read back: skipped, the target at fault
    assert not r.finite and r.fault is not None and "rejected all 200 samples" in r.fault
    with pytest.raises(TargetError, match="rejected 200 of 200 samples of q at step 2"):
        f.train_step(log_value=True)
