"""Bounds and log-likelihood estimators on a linear-Gaussian model with closed-form
log p(x) and posterior (REFERENCE.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from vilab.estimators import elbo, iwae
from vilab.estimators.loglik import importance_log_likelihood, mean_with_stderr
from vilab.families import FullRankGaussian, MeanFieldGaussian
from vilab.targets.latent import LinearGaussianModel

X_DIM, Z_DIM, B = 6, 3, 8


@pytest.fixture
def model() -> LinearGaussianModel:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(X_DIM, Z_DIM, generator=g, dtype=torch.float64)
    b = torch.randn(X_DIM, generator=g, dtype=torch.float64)
    return LinearGaussianModel(w, b, sigma=0.7)


@pytest.fixture
def x(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, Z_DIM, generator=g, dtype=torch.float64)
    noise = 0.7 * torch.randn(B, X_DIM, generator=g, dtype=torch.float64)
    return z @ model.weight.T + model.bias + noise


def test_exact_posterior_makes_every_log_weight_equal_log_px(model, x) -> None:
    q = FullRankGaussian.from_linear_gaussian(*model.posterior())
    z, log_q = q.rsample_and_log_prob(100, x)
    log_w = model.log_joint(x, z) - log_q
    exact = model.log_marginal(x)
    torch.testing.assert_close(log_w, exact.expand_as(log_w), rtol=0, atol=1e-10)
    torch.testing.assert_close(elbo(log_w), exact, rtol=0, atol=1e-10)


def test_posterior_moments_match_samples(model, x) -> None:
    a, c, cov = model.posterior()
    q = FullRankGaussian.from_linear_gaussian(*model.posterior())
    z, _ = q.rsample_and_log_prob(200_000, x[:1])
    torch.testing.assert_close(z[:, 0].mean(0), (x[:1] @ a.T + c)[0], atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(z[:, 0].T), cov, atol=0.01, rtol=0)


def rough_posterior(model: LinearGaussianModel) -> MeanFieldGaussian:
    """A mean-field q(z | x): the posterior's diagonal, mean shifted by 0.3."""
    a, c, cov = model.posterior()
    q = MeanFieldGaussian(Z_DIM, context_dim=X_DIM).double()
    head = q.params.head
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:Z_DIM].copy_(a)
        scale = cov.diagonal().sqrt() * 1.3
        head.bias.copy_(torch.cat([c + 0.3, torch.log(torch.expm1(scale))]))
    return q


def test_elbo_below_iwae_below_log_px_and_iwae_increasing_in_k(model, x) -> None:
    torch.manual_seed(0)
    q = rough_posterior(model)
    exact = model.log_marginal(x)
    reps = 4000
    means = {}
    for k in (1, 5, 50):
        z, log_q = q.rsample_and_log_prob(k * reps, x)
        log_w = (model.log_joint(x, z) - log_q).reshape(reps, k, B).transpose(0, 1)
        bound = iwae(log_w)  # (reps, B)
        means[k] = (bound.mean(0), bound.std(0) / math.sqrt(reps))
        if k == 1:
            torch.testing.assert_close(bound, elbo(log_w))
    (m1, s1), (m5, s5), (m50, s50) = means[1], means[5], means[50]
    gap = exact - m1
    assert (gap > 0.05).all(), "the rough posterior must leave a real gap"
    assert (m5 - m1 > 3 * (s1 + s5)).all()
    assert (m50 - m5 > 3 * (s5 + s50)).all()
    assert (m50 < exact + 3 * s50).all()


def test_importance_sampling_converges_to_exact_log_px(model, x) -> None:
    torch.manual_seed(0)
    q = rough_posterior(model)

    def log_weights(k: int) -> torch.Tensor:
        z, log_q = q.rsample_and_log_prob(k, x)
        return model.log_joint(x, z) - log_q

    est = importance_log_likelihood(log_weights, num_samples=20_000, chunk=3000, iwae_k=10)
    exact = model.log_marginal(x)
    assert est.elbo is not None and est.iwae is not None
    assert (est.elbo < est.iwae).all() and (est.iwae < est.log_px).all()
    err = (est.log_px - exact).abs()
    assert (err < 4 * est.stderr + 1e-3).all()
    assert (est.stderr < 0.02).all() and (est.stderr > 0).all()
    few = importance_log_likelihood(log_weights, num_samples=50, chunk=50)
    assert (few.stderr > est.stderr).all()


def test_chunked_equals_unchunked_and_stderr_formula() -> None:
    g = torch.Generator().manual_seed(3)
    log_w = 5.0 * torch.randn(1000, 4, generator=g, dtype=torch.float64) - 300.0
    pos = [0]

    def serve(k: int) -> torch.Tensor:
        out = log_w[pos[0] : pos[0] + k]
        pos[0] += k
        return out

    ref = importance_log_likelihood(lambda k: log_w[:k], 1000, chunk=1000)
    chunked = importance_log_likelihood(serve, 1000, chunk=77)
    torch.testing.assert_close(chunked.log_px, ref.log_px, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunked.stderr, ref.stderr, rtol=1e-8, atol=0)
    torch.testing.assert_close(ref.log_px, torch.logsumexp(log_w, 0) - math.log(1000))
    w = torch.exp(log_w - log_w.max(0).values)  # the stderr is scale-free
    direct = (w.std(0, unbiased=False) / w.mean(0)) / math.sqrt(1000)
    torch.testing.assert_close(ref.stderr, direct, rtol=1e-6, atol=0)


def test_mean_with_stderr() -> None:
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    se = torch.tensor([0.1, 0.1, 0.1, 0.1])
    assert mean_with_stderr(v, se) == pytest.approx((2.5, 0.05))
    assert mean_with_stderr(v)[1] == pytest.approx(float(v.std() / 2))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="≥ 1"):
        importance_log_likelihood(lambda k: torch.zeros(k, 2), 0)
    with pytest.raises(ValueError, match="must return shape"):
        importance_log_likelihood(lambda k: torch.zeros(2), 5)
