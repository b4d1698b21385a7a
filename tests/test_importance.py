"""Importance-sampling diagnostics (vilab.estimators.importance) tested as maths: k̂ equals
Pyro's independent generalized-Pareto fit, reads known tail shapes, separates a good q
from a too-narrow one; ESS, log Ẑ, KL̂ and corrected moments against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, StudentT

from vilab.estimators.importance import (
    effective_sample_size,
    khat_reading,
    kl_estimate,
    log_mean_exp_stderr,
    pareto_khat,
    psis,
    summarize,
    weighted_moments,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.0])
@pytest.mark.parametrize("kind", ["gauss", "pareto"])
def test_khat_equals_pyros_generalized_pareto_fit(scale: float, kind: str) -> None:
    """Same tail (the largest M = ⌊3√S⌋ weights over the next one), same k̂ to 1e-6:
    arviz-stats' PSIS (what vilab calls) against Pyro's own Zhang–Stephens fit."""
    fit_generalized_pareto = pytest.importorskip("pyro.ops.stats").fit_generalized_pareto
    g = _gen(int(scale * 10))
    s = 5000
    if kind == "gauss":
        x = scale * torch.randn(s, generator=g, dtype=torch.float64)
    else:
        x = -scale * torch.rand(s, generator=g, dtype=torch.float64).log()
    m = math.floor(3 * math.sqrt(s))
    tail = (x - x.max()).sort().values[-(m + 1) :]
    k_ref, _ = fit_generalized_pareto(tail[1:].exp() - tail[0].exp())
    assert float(pareto_khat(x)) == pytest.approx(k_ref, abs=1e-6)


@pytest.mark.parametrize("k", [0.3, 0.6, 0.9])
def test_khat_reads_the_tail_shape_of_pareto_weights(k: float) -> None:
    """w = U^(−k) has a generalized Pareto tail of shape k; k̂ recovers it, averaged over
    four draws of S = 10⁵ (one k̂ has sd ≈ (1 + k)/√M ≈ 0.05). This also pins the sign
    convention: arviz-stats takes log-likelihoods, not log-weights."""
    ks = [
        float(pareto_khat(-k * torch.rand(100_000, generator=_gen(s), dtype=torch.float64).log()))
        for s in range(4)
    ]
    assert sum(ks) / 4 == pytest.approx(k, abs=0.07)


def test_batched_khat_equals_row_by_row() -> None:
    lw = torch.randn(3, 4, 500, generator=_gen(2), dtype=torch.float64)
    lw[1, 2] *= 3.0
    k = pareto_khat(lw)
    assert k.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert float(k[i, j]) == float(pareto_khat(lw[i, j]))


def _gauss_weights(
    q: Normal, p, n: int = 20_000, seed: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    z = q.sample((n,))
    return z, p.log_prob(z) - q.log_prob(z)


def test_khat_good_when_q_equals_the_target_and_bad_when_too_narrow() -> None:
    p = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    _, lw_same = _gauss_weights(p, p)
    assert float(pareto_khat(lw_same)) == -math.inf  # equal weights: nothing to fit
    wide = Normal(torch.tensor(0.1, dtype=torch.float64), torch.tensor(1.3, dtype=torch.float64))
    _, lw_wide = _gauss_weights(wide, p)
    assert float(pareto_khat(lw_wide)) < 0.5
    d = torch.float64
    heavy = StudentT(
        torch.tensor(3.0, dtype=d), torch.tensor(0.0, dtype=d), torch.tensor(2.0, dtype=d)
    )
    narrow = Normal(torch.tensor(0.0, dtype=d), torch.tensor(0.5, dtype=d))
    ks = [float(pareto_khat(_gauss_weights(narrow, heavy, seed=s)[1])) for s in range(4)]
    assert sum(ks) / 4 > 0.7
    assert khat_reading(0.3).startswith("good")
    assert khat_reading(0.6).startswith("ok")
    assert khat_reading(0.9).startswith("unreliable")


def test_weights_hundreds_of_nats_apart_are_unreliable_not_nan() -> None:
    # log-weights of an unconverged q (a full-rank Gaussian after 2 s on posteriordb's
    # sblrc spanned −4.5e3 … −6e9): beside the largest, the tail's weights are 0 in
    # float64 and arviz's Pareto fit returned NaN weights with k̂ 0.02
    lw = -torch.rand(5000, generator=_gen(5), dtype=torch.float64) * 1e5
    lw[0] = 0.0
    smoothed, khat = psis(lw)
    assert float(khat) == math.inf and not torch.isnan(smoothed).any()
    assert float(smoothed.exp().sum()) == pytest.approx(1.0)
    torch.testing.assert_close(smoothed, lw - torch.logsumexp(lw, 0))  # only normalized
    s = summarize(lw)
    assert s.reading.startswith("unreliable") and not torch.isnan(s.log_w_smoothed).any()
    # equal to rounding (q = p in float64: a few neighbouring floats): nothing to fit
    steps = torch.randint(-2, 3, (1000,), generator=_gen(6)).double()
    lw = 0.7 + math.ulp(0.7) * steps
    smoothed, khat = psis(lw)
    assert float(khat) == -math.inf and not torch.isnan(smoothed).any()


def test_ess_log_z_kl_and_moments_against_closed_forms() -> None:
    """p̃ = 5 · N(1, 0.8²) (log Z = log 5), q = N(0.5, 1.2²)."""
    d = torch.float64
    p = Normal(torch.tensor(1.0, dtype=d), torch.tensor(0.8, dtype=d))
    q = Normal(torch.tensor(0.5, dtype=d), torch.tensor(1.2, dtype=d))
    z, lw = _gauss_weights(q, p)
    lw = lw + math.log(5.0)
    log_z, se = log_mean_exp_stderr(lw)
    assert abs(float(log_z) - math.log(5.0)) < 3 * float(se)
    kl, kl_se = kl_estimate(lw)
    exact = float(torch.distributions.kl_divergence(q, p))
    assert abs(float(kl) - exact) < 4 * float(kl_se) + 1e-3
    smoothed, _ = psis(lw)
    mean, sd = weighted_moments(z.unsqueeze(-1), smoothed)
    assert float(mean) == pytest.approx(1.0, abs=0.03)
    assert float(sd) == pytest.approx(0.8, abs=0.03)
    w = lw.exp()
    assert float(effective_sample_size(lw)) == pytest.approx(float(w.sum() ** 2 / (w**2).sum()))
    assert float(effective_sample_size(torch.zeros(7))) == pytest.approx(7.0)


def test_summarize_and_bad_input() -> None:
    lw = torch.randn(1000, generator=_gen(4), dtype=torch.float64)
    lw[:5] = -math.inf
    s = summarize(lw)
    assert s.samples == 1000 and s.kl == math.inf and math.isfinite(s.log_z)
    assert 0 < s.ess <= 1000 and math.isfinite(s.khat)
    smoothed, _ = psis(lw)
    assert torch.isneginf(smoothed[:5]).all()
    assert float(smoothed.exp().sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        pareto_khat(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="at least 2 draws"):
        pareto_khat(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="no mass"):
        summarize(torch.full((10,), -math.inf))
