"""Gaussian families (src/vilab/families) against torch.distributions, in float64.

Both scores are checked, the one returned with the sample and ``log_prob`` at arbitrary
points, free (z of shape (n, D)) and amortized (context (B, C), z of shape (n, B, D)).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal, Normal

from vilab.families import FullRankGaussian, MeanFieldGaussian, StandardNormal

DT = torch.float64
C, B, D = 4, 3, 3
AMORTIZED = pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized"])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomized(family: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """float64, with every parameter perturbed: off-diagonal L, σ ≠ 1, a context-dependent
    amortized head."""
    family = family.double()
    with torch.no_grad():
        for p in family.parameters():
            p.add_(scale * torch.randn_like(p))
    return family


def context_for(amortized: bool) -> torch.Tensor | None:
    return torch.randn(B, C, dtype=DT) if amortized else None


def expected_shape(n: int, amortized: bool) -> tuple[int, ...]:
    return (n, B, D) if amortized else (n, D)


# ------------------------------------------------------------ log-densities vs torch


@AMORTIZED
def test_mean_field_matches_torch_normal(amortized):
    family = randomized(MeanFieldGaussian(D, C if amortized else None))
    context = context_for(amortized)
    z, log_q = family.rsample_and_log_prob(7, context)
    assert z.shape == expected_shape(7, amortized) and log_q.shape == z.shape[:-1]

    loc, scale = family.loc_scale(context)
    raw = family.params(context)
    torch.testing.assert_close(scale, F.softplus(raw["rho"]))
    assert (scale > 0).all() and (scale - 1).abs().max() > 0.05
    if amortized:
        assert loc.shape == (B, D) and (loc[0] - loc[1]).abs().max() > 1e-2
    ref = Normal(loc, scale)
    torch.testing.assert_close(log_q, ref.log_prob(z).sum(-1))
    other = 3.0 * torch.randn_like(z)
    torch.testing.assert_close(family.log_prob(other, context), ref.log_prob(other).sum(-1))


@AMORTIZED
def test_full_rank_matches_torch_multivariate_normal(amortized):
    family = randomized(FullRankGaussian(D, C if amortized else None))
    context = context_for(amortized)
    z, log_q = family.rsample_and_log_prob(7, context)
    assert z.shape == expected_shape(7, amortized) and log_q.shape == z.shape[:-1]

    loc, tril = family.loc_tril(context)
    assert tril.shape == ((B, D, D) if amortized else (D, D))
    assert (tril.triu(1) == 0).all(), "L must be lower triangular"
    assert (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert tril.tril(-1).abs().max() > 0.05  # not diagonal: the test sees L vs Lᵀ
    ref = MultivariateNormal(loc, scale_tril=tril)
    torch.testing.assert_close(log_q, ref.log_prob(z))
    other = 3.0 * torch.randn_like(z)
    torch.testing.assert_close(family.log_prob(other, context), ref.log_prob(other))


@AMORTIZED
def test_standard_normal_matches_torch(amortized):
    family = StandardNormal(D, C if amortized else None).double()
    context = context_for(amortized)
    z, log_q = family.rsample_and_log_prob(7, context)
    assert z.shape == expected_shape(7, amortized) and z.dtype == DT
    ref = Normal(torch.zeros((), dtype=DT), torch.ones((), dtype=DT))
    torch.testing.assert_close(log_q, ref.log_prob(z).sum(-1))
    other = 3.0 * torch.randn_like(z)
    torch.testing.assert_close(family.log_prob(other, context), ref.log_prob(other).sum(-1))


@pytest.mark.parametrize("kind", ["mean-field", "full-rank"])
def test_amortized_rows_use_their_own_parameters(kind):
    """Row b of an amortized family is the free family with the parameters of row b."""
    cls = MeanFieldGaussian if kind == "mean-field" else FullRankGaussian
    amortized = randomized(cls(D, C))
    context = context_for(True)
    z = torch.randn(5, B, D, dtype=DT)
    log_p = amortized.log_prob(z, context)
    for b in range(B):
        free = cls(D).double()
        with torch.no_grad():
            for name, value in amortized.params(context).items():
                free.params.values[name].copy_(value[b])
        torch.testing.assert_close(log_p[:, b], free.log_prob(z[:, b]))


@pytest.mark.parametrize("kind", ["mean-field", "full-rank"])
def test_sample_moments(kind):
    """The samples follow q: mean μ and covariance diag σ² or L Lᵀ (5 standard errors)."""
    family = randomized(
        MeanFieldGaussian(D, init_loc_scale=1.0) if kind == "mean-field" else FullRankGaussian(D)
    )
    n = 20_000
    with torch.no_grad():
        z, _ = family.rsample_and_log_prob(n)
        if kind == "mean-field":
            loc, scale = family.loc_scale()
            cov = torch.diag(scale**2)
        else:
            loc, tril = family.loc_tril()
            cov = tril @ tril.T
    std = cov.diagonal().sqrt()
    assert ((z.mean(0) - loc).abs() < 5 * std / n**0.5).all()
    emp = torch.cov(z.T)
    se = 5 * (cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2).sqrt() / n**0.5
    assert ((emp - cov).abs() < se).all()


# ------------------------------------------------------------------------- gradients


@AMORTIZED
@pytest.mark.parametrize("kind", ["mean-field", "full-rank"])
def test_every_parameter_gets_a_gradient(kind, amortized):
    cls = MeanFieldGaussian if kind == "mean-field" else FullRankGaussian
    family = randomized(cls(D, C if amortized else None))
    context = torch.randn(B, C, dtype=DT, requires_grad=True) if amortized else None
    z, log_q = family.rsample_and_log_prob(5, context)
    (z.sum() + z.square().sum() + log_q.sum()).backward()
    for name, p in family.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    if amortized:
        assert context.grad.abs().sum() > 0


# ------------------------------------------------------------------------ bad input

FAMILIES = {
    "standard": StandardNormal,
    "mean-field": MeanFieldGaussian,
    "full-rank": FullRankGaussian,
}


@pytest.mark.parametrize("kind", list(FAMILIES))
@pytest.mark.parametrize("dim", [0, -1])
def test_non_positive_dim_raises(kind, dim):
    with pytest.raises(ValueError, match=f"dim must be a positive integer, got {dim}"):
        FAMILIES[kind](dim)


@pytest.mark.parametrize("kind", ["mean-field", "full-rank"])
def test_non_positive_context_dim_raises(kind):
    with pytest.raises(ValueError, match="context_dim must be a positive integer, got 0"):
        FAMILIES[kind](D, 0)


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_bad_context_raises(kind):
    free, amortized = FAMILIES[kind](D), FAMILIES[kind](D, C)
    with pytest.raises(ValueError, match="free parameters and takes no context"):
        free.rsample_and_log_prob(2, torch.randn(B, C))
    with pytest.raises(ValueError, match=rf"is amortized: pass a context of shape \(B, {C}\)"):
        amortized.rsample_and_log_prob(2)
    with pytest.raises(ValueError, match=rf"context must have shape \(B, {C}\), got \(3, 5\)"):
        amortized.rsample_and_log_prob(2, torch.randn(B, C + 1))
    with pytest.raises(ValueError, match=rf"context must have shape \(B, {C}\), got \(4,\)"):
        amortized.rsample_and_log_prob(2, torch.randn(C))
    if kind != "standard":  # scoring goes through the parameter source, which checks too
        with pytest.raises(ValueError, match="takes no context"):
            free.log_prob(torch.randn(2, B, D), torch.randn(B, C))
        with pytest.raises(ValueError, match="needs a context"):
            amortized.log_prob(torch.randn(2, B, D))
        with pytest.raises(ValueError, match=f"last dimension {C + 1}, expected {C}"):
            amortized.log_prob(torch.randn(2, B, D), torch.randn(B, C + 1))


@pytest.mark.parametrize("kind", list(FAMILIES))
@pytest.mark.parametrize("n", [0, -2, 2.5])
def test_bad_number_of_samples_raises(kind, n):
    with pytest.raises(ValueError, match=f"number of samples must be a positive integer, got {n}"):
        FAMILIES[kind](D).rsample_and_log_prob(n)


def test_a_family_at_a_context_scores_and_samples_like_the_amortized_one() -> None:
    from vilab.families.base import AtContext
    from vilab.families.semi_implicit import SemiImplicit

    torch.manual_seed(0)
    q = MeanFieldGaussian(2, context_dim=3).double()
    c = torch.randn(1, 3, dtype=torch.float64)
    at = AtContext(q, c)
    z = torch.randn(7, 2, dtype=torch.float64)
    assert at.has_log_prob
    torch.testing.assert_close(at.log_prob(z), q.log_prob(z.unsqueeze(1), c)[:, 0])
    torch.manual_seed(1)
    a = at.rsample(5)
    torch.manual_seed(1)
    torch.testing.assert_close(a, q.rsample_and_log_prob(5, c)[0][:, 0])
    ui = AtContext(SemiImplicit(2, noise_dim=2, hidden=(8,), context_dim=3).double(), c)
    assert not ui.has_log_prob and ui.rsample(4).shape == (4, 2)
    assert ui.log_prob_estimate(z).shape == (7,)
