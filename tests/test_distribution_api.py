"""Every family as a ``torch.distributions.Distribution`` (src/vilab/families/distribution.py),
in float64.

Shapes (tuple sample shapes, batch shape (B,) at a context), log_prob(rsample) against the
log q returned with the sample, gradients of rsample and none for sample, the Gaussians'
parameters and log-densities against torch's Normal / MultivariateNormal, and the registered
closed-form ``kl_divergence`` against torch's formulas and a Monte Carlo estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import (
    Distribution,
    Independent,
    Laplace,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from vilab.families import (
    Family,
    FamilyDistribution,
    FullRankGaussian,
    FullRankGaussianDistribution,
    MeanFieldGaussian,
    MeanFieldGaussianDistribution,
    StandardNormal,
)
from vilab.families.semi_implicit import SemiImplicit
from vilab.flows import IAF, FlowFamily, Planar, Radial, Sylvester

DT = torch.float64
C, B, D = 2, 3, 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomized(family: Family, scale: float = 0.3) -> Family:
    """float64, every parameter perturbed (σ ≠ 1, off-diagonal L, context-dependent heads)."""
    family = family.double()
    with torch.no_grad():
        for p in family.parameters():
            p.add_(scale * torch.randn_like(p))
    return family


def _flows(ctx: int | None) -> FlowFamily:
    return FlowFamily(
        MeanFieldGaussian(D, ctx),
        [Planar(D, 2, ctx), Radial(D, 2, ctx), Sylvester(D, 2, context_dim=ctx), IAF(D, (8,), ctx)],
    )


#: name -> builder(context_dim) of every kind of family that can score any z
SCORING: dict[str, Callable[[int | None], Family]] = {
    "standard": lambda ctx: StandardNormal(D, ctx),
    "mean_field": lambda ctx: MeanFieldGaussian(D, ctx),
    "full_rank": lambda ctx: FullRankGaussian(D, ctx),
    "planar": lambda ctx: FlowFamily(StandardNormal(D, ctx), [Planar(D, 3, ctx)]),
    "radial": lambda ctx: FlowFamily(StandardNormal(D, ctx), [Radial(D, 3, ctx)]),
    "sylvester": lambda ctx: FlowFamily(StandardNormal(D, ctx), [Sylvester(D, 2, context_dim=ctx)]),
    "iaf": lambda ctx: FlowFamily(StandardNormal(D, ctx), [IAF(D, (8,), ctx)]),
    "stack": _flows,
}
ALL = {
    **SCORING,
    "semi_implicit": lambda ctx: SemiImplicit(
        D, noise_dim=2, hidden=(8,), context_dim=ctx, log_q_samples=16
    ),
}


def build(name: str, amortized: bool, kinds: dict = ALL) -> tuple[Family, torch.Tensor | None]:
    family = randomized(kinds[name](C if amortized else None))
    return family, (torch.randn(B, C, dtype=DT) if amortized else None)


AMORTIZED = pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized"])


# ------------------------------------------------------------------------ shapes


@AMORTIZED
@pytest.mark.parametrize("name", list(ALL))
def test_shapes_of_every_family(name, amortized):
    family, context = build(name, amortized)
    d = family.distribution(context)
    batch = (B,) if amortized else ()
    assert isinstance(d, Distribution) and isinstance(d, FamilyDistribution)
    assert d.batch_shape == batch and d.event_shape == (D,) and d.has_rsample
    assert d.sample((3, 4)).shape == (3, 4, *batch, D)
    assert d.rsample().shape == (*batch, D)
    assert d.rsample(5).shape == (5, *batch, D)
    assert d.sample((0,)).shape == (0, *batch, D)
    z, log_q = d.rsample_and_log_prob((2, 3))
    assert z.shape == (2, 3, *batch, D) and log_q.shape == (2, 3, *batch)
    if family.has_log_prob:
        assert d.log_prob(z).shape == (2, 3, *batch)
        assert d.log_prob(z[0, 0]).shape == batch
        assert d.log_prob(torch.zeros(4, 1, D, dtype=DT)).shape == (4, B if amortized else 1)


@AMORTIZED
@pytest.mark.parametrize("name", list(SCORING))
def test_log_prob_of_rsample_is_the_returned_log_q(name, amortized):
    family, context = build(name, amortized)
    d = family.distribution(context)
    z, log_q = d.rsample_and_log_prob((4, 5))
    torch.testing.assert_close(d.log_prob(z), log_q, rtol=0, atol=1e-9)
    # broadcasting: one value scored under every row of the batch
    if amortized:
        one = z[0, 0, 1]
        expected = family.log_prob(one.expand(1, B, D), context)[0]
        torch.testing.assert_close(d.log_prob(one), expected, rtol=0, atol=1e-12)


@AMORTIZED
@pytest.mark.parametrize("name", ["mean_field", "full_rank", "stack", "semi_implicit"])
def test_rsample_has_gradients_and_sample_none(name, amortized):
    family, context = build(name, amortized)
    d = family.distribution(context)
    z = d.rsample((2, 3))
    params = [p for p in family.parameters() if p.requires_grad]
    grads = torch.autograd.grad(z.pow(2).sum(), params, allow_unused=True)
    reached = [g is not None and g.abs().sum() > 0 for g in grads]
    assert sum(reached) >= len(params) // 2 and any(reached)
    if name != "semi_implicit":  # its noise-net first layer, etc.: some are unused
        assert all(reached), [n for (n, _), r in zip(family.named_parameters(), reached) if not r]
    s = d.sample((2, 3))
    assert not s.requires_grad and s.grad_fn is None


def test_distribution_stays_valid_across_parameter_updates():
    family = randomized(MeanFieldGaussian(D))
    d = family.distribution()
    before = d.log_prob(torch.zeros(D, dtype=DT))
    with torch.no_grad():
        family.params.values["loc"].add_(1.0)
    after = d.log_prob(torch.zeros(D, dtype=DT))
    torch.testing.assert_close(after, family.log_prob(torch.zeros(1, D, dtype=DT))[0])
    assert (after - before).abs() > 1e-3


@pytest.mark.parametrize("name", ["mean_field", "stack"])
def test_expand_adds_independent_leading_batch_dims(name):
    family, context = build(name, True)
    d = family.distribution(context).expand((4, B))
    assert d.batch_shape == (4, B)
    z, log_q = d.rsample_and_log_prob((2,))
    assert z.shape == (2, 4, B, D)
    torch.testing.assert_close(d.log_prob(z), log_q, rtol=0, atol=1e-9)
    assert (z[:, 0] - z[:, 1]).abs().min() > 0  # independent copies, not one repeated
    with pytest.raises(ValueError, match=r"must end with \(3,\)"):
        family.distribution(context).expand((4, 2))


# ------------------------------------------------------------------ Gaussians vs torch


def _torch_mean_field(family: Family, context: torch.Tensor | None) -> Independent:
    raw = family.params(context)
    return Independent(Normal(raw["loc"], F.softplus(raw["rho"])), 1)


def _torch_full_rank(family: Family, context: torch.Tensor | None) -> MultivariateNormal:
    raw = family.params(context)
    tril = raw["tril"].tril(-1) + torch.diag_embed(F.softplus(raw["tril"].diagonal(0, -2, -1)))
    return MultivariateNormal(raw["loc"], scale_tril=tril)


@AMORTIZED
def test_mean_field_is_independent_normal(amortized):
    family, context = build("mean_field", amortized)
    d = family.distribution(context)
    ref = _torch_mean_field(family, context)
    assert isinstance(d, MeanFieldGaussianDistribution)
    assert d.loc.shape == d.scale.shape == (*d.batch_shape, D)
    assert torch.equal(d.loc, ref.base_dist.loc) and torch.equal(d.scale, ref.base_dist.scale)
    assert torch.equal(family.loc(context), d.loc) and torch.equal(family.scale(context), d.scale)
    if not amortized:  # the free loc is the parameter itself
        assert family.loc() is family.params.values["loc"]
    z = d.sample((6,)) * 2.0
    torch.testing.assert_close(d.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(d.mean, ref.mean, rtol=0, atol=0)
    torch.testing.assert_close(d.mode, ref.mode, rtol=0, atol=0)
    torch.testing.assert_close(d.variance, ref.variance, rtol=0, atol=1e-14)
    torch.testing.assert_close(d.stddev, ref.stddev, rtol=0, atol=1e-14)
    torch.testing.assert_close(d.entropy(), ref.entropy(), rtol=0, atol=1e-12)


@AMORTIZED
def test_full_rank_is_multivariate_normal(amortized):
    family, context = build("full_rank", amortized)
    d = family.distribution(context)
    ref = _torch_full_rank(family, context)
    assert isinstance(d, FullRankGaussianDistribution)
    assert d.scale_tril.shape == d.covariance_matrix.shape == (*d.batch_shape, D, D)
    assert (d.scale_tril.triu(1) == 0).all() and (d.scale_tril.tril(-1) != 0).any()
    torch.testing.assert_close(d.loc, ref.loc, rtol=0, atol=0)
    torch.testing.assert_close(d.scale_tril, ref.scale_tril, rtol=0, atol=0)
    torch.testing.assert_close(d.covariance_matrix, ref.covariance_matrix, rtol=0, atol=1e-13)
    torch.testing.assert_close(family.covariance_matrix(context), d.covariance_matrix)
    torch.testing.assert_close(family.scale_tril(context), d.scale_tril, rtol=0, atol=0)
    if not amortized:
        assert family.loc() is family.params.values["loc"]
    z = d.sample((6,)) * 2.0
    torch.testing.assert_close(d.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(d.variance, ref.variance, rtol=0, atol=1e-13)
    torch.testing.assert_close(d.entropy(), ref.entropy(), rtol=0, atol=1e-12)


def test_standard_normal_distribution():
    d = StandardNormal(D).double().distribution()
    z = torch.randn(5, D, dtype=DT)
    ref = Independent(Normal(torch.zeros(D, dtype=DT), torch.ones(D, dtype=DT)), 1)
    torch.testing.assert_close(d.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)
    ctx = torch.randn(B, C, dtype=DT)
    assert StandardNormal(D, C).double().distribution(ctx).loc.shape == (B, D)


# ------------------------------------------------------------------------ KL


def _gaussian(kind: str, amortized: bool) -> tuple[Distribution, Distribution]:
    """(vilab's distribution, torch's equivalent built from the same parameters)."""
    if kind == "std":
        z, o = torch.zeros(D, dtype=DT), torch.ones(D, dtype=DT)
        return StandardNormal(D).double().distribution(), Independent(Normal(z, o), 1)
    family, context = build(kind, amortized)
    ref = (_torch_mean_field if kind == "mean_field" else _torch_full_rank)(family, context)
    return family.distribution(context), ref


def _mc_kl(p: Distribution, q: Distribution, n: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo KL(p ‖ q) = E_p[log p − log q] and its standard error, ``batch``."""
    z = p.sample((n,))
    r = p.log_prob(z) - q.log_prob(z)
    return r.mean(0), r.std(0) / math.sqrt(n)


KL_PAIRS = [
    ("mean_field", "mean_field"),
    ("full_rank", "full_rank"),
    ("mean_field", "full_rank"),
    ("full_rank", "mean_field"),
    ("mean_field", "std"),
    ("full_rank", "std"),
    ("std", "full_rank"),
]


@pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized_p"])
@pytest.mark.parametrize(("p_kind", "q_kind"), KL_PAIRS)
def test_registered_kl_is_closed_form_and_matches_monte_carlo(p_kind, q_kind, amortized):
    p, p_ref = _gaussian(p_kind, amortized)
    q, q_ref = _gaussian(q_kind, False)
    kl = kl_divergence(p, q)
    assert kl.shape == p.batch_shape and kl.requires_grad == (p_kind != "std" or q_kind != "std")
    if isinstance(p_ref, Independent) and isinstance(q_ref, Independent):
        truth = kl_divergence(p_ref, q_ref)
    else:  # torch has no Independent-MultivariateNormal KL: the diagonal as a full matrix
        truth = kl_divergence(_as_mvn(p_ref), _as_mvn(q_ref))
    torch.testing.assert_close(kl, truth, rtol=0, atol=1e-10)
    mc, se = _mc_kl(p, q)
    assert ((mc - kl).abs() < 4 * se).all(), (mc, kl, se)
    assert (kl > 0).all()


def _as_mvn(d: Distribution) -> MultivariateNormal:
    if isinstance(d, MultivariateNormal):
        return d
    return MultivariateNormal(d.base_dist.loc, scale_tril=torch.diag_embed(d.base_dist.scale))


@pytest.mark.parametrize("kind", ["mean_field", "full_rank"])
def test_kl_against_torch_distributions_both_ways(kind):
    p, p_ref = _gaussian(kind, True)
    z, o = torch.zeros(D, dtype=DT), torch.ones(D, dtype=DT)
    prior_ind = Independent(Normal(z, 2 * o), 1)
    prior_mvn = MultivariateNormal(z + 0.5, scale_tril=torch.diag(2 * o))
    for prior in (prior_ind, prior_mvn):
        for a, b, a_ref, b_ref in ((p, prior, p_ref, prior), (prior, p, prior, p_ref)):
            truth = kl_divergence(_as_mvn(a_ref), _as_mvn(b_ref))
            torch.testing.assert_close(kl_divergence(a, b), truth, rtol=0, atol=1e-10)


def test_kl_between_identical_gaussians_is_zero_and_has_zero_gradient():
    family, context = build("full_rank", True)
    p = family.distribution(context)
    kl = kl_divergence(p, family.distribution(context))
    torch.testing.assert_close(kl, torch.zeros(B, dtype=DT), rtol=0, atol=1e-12)
    for g in torch.autograd.grad(kl.sum(), list(family.parameters())):
        torch.testing.assert_close(g, torch.zeros_like(g), rtol=0, atol=1e-12)


def test_kl_refusals():
    p, _ = _gaussian("mean_field", False)
    laplace = Independent(Laplace(torch.zeros(D, dtype=DT), torch.ones(D, dtype=DT)), 1)
    with pytest.raises(NotImplementedError, match="Independent"):
        kl_divergence(p, laplace)
    other = MeanFieldGaussian(D + 1).double().distribution()
    with pytest.raises(ValueError, match="event shapes must match"):
        kl_divergence(p, other)
    flow, _ = build("planar", False)
    with pytest.raises(NotImplementedError):
        kl_divergence(flow.distribution(), p)


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized"])
def test_bad_value_shape_is_a_clear_error(amortized):
    family, context = build("planar", amortized)
    d = family.distribution(context)
    with pytest.raises(ValueError, match=r"value of shape \(5, 4\) must have shape"):
        d.log_prob(torch.zeros(5, 4, dtype=DT))
    if amortized:
        with pytest.raises(ValueError, match=r"does not broadcast to .*batch_shape \(3,\)"):
            d.log_prob(torch.zeros(2, B + 1, D, dtype=DT))
    with pytest.raises(ValueError, match="sample_shape"):
        d.sample((-1,))


def test_validate_args_checks_the_support():
    family, _ = build("mean_field", False)
    bad = torch.tensor([0.0, math.nan, 1.0], dtype=DT)  # torch's real_vector: not NaN
    with pytest.raises(ValueError, match="support"):
        family.distribution(validate_args=True).log_prob(bad)
    assert family.distribution(validate_args=False).log_prob(bad).isnan()


def test_bad_context_is_refused():
    family, context = build("mean_field", True)
    with pytest.raises(ValueError, match="amortized"):
        family.distribution()
    with pytest.raises(ValueError, match=r"context must have shape \(B, 2\)"):
        family.distribution(torch.zeros(B, C + 1, dtype=DT))
    free, _ = build("mean_field", False)
    with pytest.raises(ValueError, match="takes no context"):
        free.distribution(context)


@AMORTIZED
def test_semi_implicit_log_prob_is_a_clear_error(amortized):
    family, context = build("semi_implicit", amortized)
    d = family.distribution(context)
    z = d.sample((2,))
    with pytest.raises(NotImplementedError, match="log_prob_estimate"):
        d.log_prob(z)
    with pytest.raises(NotImplementedError, match="no closed-form mean"):
        _ = d.mean
    with pytest.raises(NotImplementedError, match="no closed-form entropy"):
        d.entropy()
