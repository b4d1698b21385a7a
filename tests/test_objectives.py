"""Objectives: values, and gradient estimators (STL, DReG) tested as maths."""

from __future__ import annotations

import pytest
import torch

from vilab.estimators.objectives import dreg_objective, elbo_objective, iwae_objective
from vilab.families import FullRankGaussian, MeanFieldGaussian
from vilab.families.gaussian import gaussian_kl_per_dim
from vilab.targets.latent import LinearGaussianModel

X_DIM, Z_DIM, B = 5, 2, 6


def make_model(learnable: bool = False) -> LinearGaussianModel:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(X_DIM, Z_DIM, generator=g, dtype=torch.float64)
    b = torch.randn(X_DIM, generator=g, dtype=torch.float64)
    return LinearGaussianModel(w, b, 0.8, learnable=learnable)


def data(model: LinearGaussianModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, Z_DIM, generator=g, dtype=torch.float64)
    return (z @ model.weight.T + model.bias).detach() + 0.8 * torch.randn(
        B, X_DIM, generator=g, dtype=torch.float64
    )


def rough_q(model: LinearGaussianModel, shift: float = 0.4) -> MeanFieldGaussian:
    a, c, cov = model.posterior()
    q = MeanFieldGaussian(Z_DIM, context_dim=X_DIM).double()
    with torch.no_grad():
        q.params.head.weight.zero_()
        q.params.head.weight[:Z_DIM].copy_(a.detach())
        scale = cov.diagonal().detach().sqrt() * 1.4
        q.params.head.bias.copy_(torch.cat([c.detach() + shift, torch.log(torch.expm1(scale))]))
    return q


def test_gaussian_kl_matches_torch_distributions() -> None:
    loc, scale = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.1
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(gaussian_kl_per_dim(loc, scale), ref)


def test_analytic_and_monte_carlo_elbo_agree_and_are_exact_at_the_posterior() -> None:
    torch.manual_seed(0)
    model = make_model()
    x = data(model)
    q = rough_q(model)
    z, log_q = q.rsample_and_log_prob(50_000, x)
    loc, scale = q.loc_scale(x)
    kl = gaussian_kl_per_dim(loc, scale).sum(-1)
    ll, lp = model.log_likelihood(x, z), model.log_prior(z)
    analytic = elbo_objective(ll, lp, log_q, kl=kl).value
    mc = elbo_objective(ll, lp, log_q).value
    torch.testing.assert_close(analytic, mc, atol=0.02, rtol=0)
    assert (analytic < model.log_marginal(x) - 0.05).all()
    exact_q = FullRankGaussian.from_linear_gaussian(*model.posterior())
    z, log_q = exact_q.rsample_and_log_prob(10, x)
    value = elbo_objective(model.log_likelihood(x, z), model.log_prior(z), log_q).value
    torch.testing.assert_close(value, model.log_marginal(x), atol=1e-10, rtol=0)


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])


def test_stl_and_dreg_encoder_gradients_vanish_at_the_exact_posterior() -> None:
    torch.manual_seed(0)
    model = make_model()
    x = data(model)
    q = FullRankGaussian.from_linear_gaussian(*model.posterior())
    params = list(q.parameters())
    z, log_q = q.rsample_and_log_prob(8, x)
    ll, lp = model.log_likelihood(x, z), model.log_prior(z)
    log_q_stop = q.stopped_log_prob(z, x)
    stl = elbo_objective(ll, lp, log_q, log_q_stop=log_q_stop).surrogate
    plain = elbo_objective(ll, lp, log_q).surrogate
    assert grads(stl, params).abs().max() < 1e-9
    assert grads(plain, params).abs().max() > 1e-3
    log_w = ll + lp - log_q
    joint = model.log_joint(x, z)
    dreg = dreg_objective(log_w, joint, log_q_stop, model.log_joint(x, z.detach())).surrogate
    assert grads(dreg, params).abs().max() < 1e-9


def test_dreg_is_unbiased_for_the_iwae_gradient() -> None:
    """E[DReG ∇] = E[IWAE ∇] for encoder and decoder, on a rough q (Tucker et al. 2019)."""
    torch.manual_seed(0)
    model = make_model(learnable=True)
    x = data(model)
    q = rough_q(model)
    enc, dec = list(q.parameters()), list(model.parameters())
    reps, k = 3000, 4
    xs = x.repeat(reps, 1)  # independent replicates as extra batch rows
    z, log_q = q.rsample_and_log_prob(k, xs)
    log_w = model.log_joint(xs, z) - log_q
    iwae = iwae_objective(log_w).surrogate
    g_iwae_enc, g_iwae_dec = grads(iwae, enc), grads(iwae, dec)
    log_q_stop = q.stopped_log_prob(z, xs)
    joint_stop = _log_joint_stop(model, xs, z)
    dreg = dreg_objective(log_w, joint_stop, log_q_stop, model.log_joint(xs, z.detach())).surrogate
    g_dreg_enc, g_dreg_dec = grads(dreg, enc), grads(dreg, dec)
    # same expectation: compare the means over replicates with a per-replicate spread
    torch.testing.assert_close(g_dreg_dec, g_iwae_dec, atol=0.05 * g_iwae_dec.abs().max(), rtol=0)
    torch.testing.assert_close(g_dreg_enc, g_iwae_enc, atol=0.1 * g_iwae_enc.abs().max(), rtol=0)


def _log_joint_stop(model: LinearGaussianModel, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x, z) with the decoder's parameters stopped (z keeps its gradient)."""
    return LinearGaussianModel(model.weight.detach(), model.bias.detach(), model.sigma).log_joint(
        x, z
    )


def test_free_bits_stop_the_kl_gradient_below_lambda() -> None:
    loc = torch.tensor([[0.01, 2.0]], dtype=torch.float64, requires_grad=True)
    scale = torch.ones(1, 2, dtype=torch.float64)
    kl_dim = gaussian_kl_per_dim(loc, scale)  # dim 0: ~5e-5 nats, dim 1: 2 nats
    zeros = torch.zeros(1, 1, dtype=torch.float64)
    obj = elbo_objective(zeros, zeros, zeros, kl=kl_dim.sum(-1), free_bits=0.5, kl_per_dim=kl_dim)
    (g,) = torch.autograd.grad(obj.surrogate, loc)
    assert g[0, 0] == 0 and g[0, 1] != 0
    assert obj.value.detach().item() == pytest.approx(-float(kl_dim.detach().sum()))


def test_kl_warmup_changes_the_surrogate_not_the_value() -> None:
    ll = torch.tensor([[-3.0]], requires_grad=True)
    kl = torch.tensor([2.0], requires_grad=True)
    zero = torch.zeros(1, 1)
    a = elbo_objective(ll, zero, zero, kl=kl, beta=0.1)
    b = elbo_objective(ll, zero, zero, kl=kl, beta=1.0)
    assert a.value.item() == b.value.item() == -5.0
    assert a.surrogate.item() == pytest.approx(-3.2) and b.surrogate.item() == -5.0
    with pytest.raises(ValueError, match="free bits"):
        elbo_objective(ll, zero, zero, free_bits=1.0)
