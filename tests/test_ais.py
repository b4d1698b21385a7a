"""Annealed importance sampling recovers known normalizers."""

from __future__ import annotations

import math

import pytest
import torch

from vilab.estimators.ais import ais, sigmoid_schedule
from vilab.targets.energies import banana_log_prob
from vilab.targets.latent import LinearGaussianModel

BROAD = torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 3.0)


def broad_init(z: torch.Tensor) -> torch.Tensor:
    return BROAD.log_prob(z).sum(-1)


def broad_sample(c: int) -> torch.Tensor:
    return BROAD.sample((c,))


def within(est, exact: torch.Tensor | float, k: float = 4.0, slack: float = 0.02) -> None:
    err = (est.log_z - exact).abs()
    assert (err < k * est.stderr + slack).all(), (est.log_z, exact, est.stderr)


def test_log_z_of_an_unnormalized_gaussian() -> None:
    torch.manual_seed(0)
    scale = torch.tensor([0.5, 1.5], dtype=torch.float64)

    def log_gamma(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (((z - torch.tensor([1.0, -1.0], dtype=z.dtype)) / scale) ** 2).sum(-1) + 3.0

    est = ais(broad_init, broad_sample, log_gamma, num_chains=300, num_dists=100)
    within(est, 3.0 + math.log(2 * math.pi) + float(scale.log().sum()))
    assert 0.3 < est.accept_rate < 1.0


def test_log_z_of_the_banana_is_zero() -> None:
    torch.manual_seed(1)
    est = ais(broad_init, broad_sample, banana_log_prob, num_chains=400, num_dists=200)
    within(est, 0.0)
    assert est.stderr < 0.1


def test_log_px_of_the_linear_gaussian_model() -> None:
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    model = LinearGaussianModel(w, torch.zeros(6, dtype=torch.float64), 0.5)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2
    prior = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 1.0)
    est = ais(
        lambda z: prior.log_prob(z).sum(-1),
        lambda c: prior.sample((c, 4)),
        lambda z: model.log_joint(x, z),
        num_chains=200,
        num_dists=300,
    )
    assert est.log_z.shape == (4,)
    within(est, model.log_marginal(x), slack=0.05)


def test_schedule_and_bad_arguments() -> None:
    b = sigmoid_schedule(10)
    assert b[0] == 0 and b[-1] == 1 and (b[1:] > b[:-1]).all() and len(b) == 11
    with pytest.raises(ValueError, match="num_dists"):
        sigmoid_schedule(0)
    with pytest.raises(ValueError, match="rise from"):
        ais(broad_init, broad_sample, banana_log_prob, 4, schedule=torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="num_chains"):
        ais(broad_init, broad_sample, banana_log_prob, 0)
