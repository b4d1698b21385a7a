"""The decoder likelihoods as maths, in float64: each discrete one sums to 1 over the 256
grey levels, the logistic's edge bins are its CDF's tails, the Gaussian matches
torch.distributions, and bpd follows its definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal

from vilab.likelihoods import LIKELIHOODS, bits_per_dim, get_likelihood

F64 = torch.float64
LEVELS = torch.arange(256, dtype=torch.float64) / 255  # every grey level, x = k/255


def _all_levels(name: str, out_per_dim: torch.Tensor, **kw) -> torch.Tensor:
    """log P(k) for every k: one "image" per level, one pixel each; ``(256,)``."""
    lik = get_likelihood(name, **kw)
    out = out_per_dim.expand(256, -1)  # (B=256, K·1)
    return lik.log_prob(out, LEVELS[:, None])


@pytest.mark.parametrize("name", ["categorical", "logistic", "logistic_mixture"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discrete_likelihoods_sum_to_one(name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    k = get_likelihood(name, components=3).params
    out = torch.randn(1, k, generator=g, dtype=F64) * 2
    if name == "logistic":
        out[0, 0] = torch.rand(1, generator=g, dtype=F64).item()  # a mean inside [0, 1]
    total = torch.logsumexp(_all_levels(name, out, components=3), 0).exp()
    assert total.item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("mean,log_s", [(0.5, -3.0), (-0.2, -1.0), (1.3, -5.0), (0.0, -7.0)])
def test_logistic_edges_are_cdf_tails(mean: float, log_s: float) -> None:
    logp = _all_levels("logistic", torch.tensor([[mean, log_s]], dtype=F64))
    s, h = math.exp(log_s), 0.5 / 255
    cdf = lambda v: torch.sigmoid(torch.tensor((v - mean) / s, dtype=F64))  # noqa: E731
    z = lambda v: torch.tensor((v - mean) / s, dtype=F64)  # noqa: E731
    # P(0) = F(h), P(255) = 1 − F(1 − h), compared as logs (log σ(a), log σ(−a))
    assert logp[0].item() == pytest.approx(F.logsigmoid(z(h)).item(), rel=1e-12)
    assert logp[-1].item() == pytest.approx(F.logsigmoid(-z(1 - h)).item(), rel=1e-12)
    k = min(max(round(mean * 255) + 1, 1), 254)  # an inner bin near the mean
    mid = (cdf(k / 255 + h) - cdf(k / 255 - h)).item()
    assert logp[k].exp().item() == pytest.approx(mid, rel=1e-8, abs=1e-300)


def test_logistic_far_tail_is_finite() -> None:
    """A bin far from the mean: no log(0) from a difference of two CDFs near 1."""
    logp = _all_levels("logistic", torch.tensor([[-5.0, -7.0]], dtype=F64))
    assert torch.isfinite(logp[1:255]).all() and logp[128] < -1e3


def test_gaussian_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    x, out = torch.rand(3, 5, generator=g, dtype=F64), torch.randn(4, 3, 10, generator=g, dtype=F64)
    mean, log_s = out[..., :5], out[..., 5:]
    want = Normal(mean, log_s.exp()).log_prob(x).sum(-1)
    got = get_likelihood("gaussian").log_prob(out, x)
    torch.testing.assert_close(got, want)
    fixed = get_likelihood("gaussian", scale=0.3).log_prob(mean, x)
    torch.testing.assert_close(fixed, Normal(mean, 0.3).log_prob(x).sum(-1))


def test_bernoulli_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    x, out = (
        (torch.rand(3, 5, generator=g) > 0.5).double(),
        torch.randn(2, 3, 5, generator=g, dtype=F64),
    )
    want = Bernoulli(logits=out).log_prob(x).sum(-1)
    torch.testing.assert_close(get_likelihood("bernoulli").log_prob(out, x), want)


def test_shapes_and_head_sizes() -> None:
    """``(S, B, K·D), (B, D) -> (S, B)`` for every likelihood, K from the likelihood."""
    d, b, s = 6, 3, 2
    x = torch.randint(0, 256, (b, d)).double() / 255
    for name in LIKELIHOODS:
        lik = get_likelihood(name, components=4)
        out = torch.randn(s, b, lik.params * d, dtype=F64)
        xx = (x > 0.5).double() if name == "bernoulli" else x
        assert lik.log_prob(out, xx).shape == (s, b)
        assert lik.mean(out).shape == (s, b, d)
    assert [get_likelihood(n, components=4).params for n in LIKELIHOODS] == [1, 2, 256, 2, 12]


def test_bits_per_dim() -> None:
    """A uniform model over 256 levels is 8 bpd; a dequantized density adds log 256."""
    assert bits_per_dim(784 * math.log(256), 784) == pytest.approx(8.0)
    assert bits_per_dim(0.0, 10, math.log(256)) == pytest.approx(8.0)
    assert get_likelihood("gaussian", dequantized=True).offset_nats == pytest.approx(math.log(256))


def test_bad_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        get_likelihood("poisson")
    with pytest.raises(ValueError, match="components=0"):
        get_likelihood("logistic_mixture", components=0)
