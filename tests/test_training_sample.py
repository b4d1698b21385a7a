"""The Family contract's training call, one annealing schedule, and trainers that never
branch on a family's type (vilab issue 9, item 2)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from tiny_vae import TINY_VAE
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

import vilab.vae
from vilab.build import build_family, family_from_config
from vilab.config import FAMILY_KINDS, load_fit_config, load_train_config
from vilab.estimators.elbo import beta_at
from vilab.families.base import AtContext, Family, TrainingSample
from vilab.families.gaussian import MeanFieldGaussian
from vilab.targets.user import CallableTarget
from vilab.train.fit import Fitter
from vilab.train.vae import VAETrainer
from vilab.vae import build_vae, vae_objective

DT = torch.float64
C, B, D, N = 3, 4, 2, 5
AMORTIZED = pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized"])
STACK = [{"kind": "planar", "layers": 2}, {"kind": "iaf", "layers": 2, "hidden": [8]}]
WITH_LOG_PROB = [
    "mean_field",
    "full_rank",
    "iaf",
    "planar",
    "radial",
    "sylvester_orthogonal",
    "stack",
]


def make(kind: str, amortized: bool) -> Family:
    torch.manual_seed(0)
    family = build_family(
        kind,
        D,
        C if amortized else None,
        layers=2,
        hidden=[8],
        stack=STACK,
        log_q_samples=20,
        train_log_q_samples=20,  # = log_q_samples: the same value as rsample_and_log_prob
        log_q_stderr=None,  # (with K fixed: evaluation sizes K by default)
    ).to(DT)
    with torch.no_grad():  # off the identity initializations, so every term is non-trivial
        for p in family.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return family


def context_for(amortized: bool, requires_grad: bool = False) -> Tensor | None:
    if not amortized:
        return None
    return torch.randn(B, C, dtype=DT, generator=torch.Generator().manual_seed(1)).requires_grad_(
        requires_grad
    )


@AMORTIZED
@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_training_sample_shapes_and_value_match_rsample_and_log_prob(kind, amortized) -> None:
    family, context = make(kind, amortized), context_for(amortized)
    torch.manual_seed(3)
    z_ref, log_q_ref = family.rsample_and_log_prob(N, context)
    torch.manual_seed(3)
    s = family.training_sample(N, context)
    batch = (N, B) if amortized else (N,)
    assert s.z.shape == (*batch, D)
    assert s.log_q.shape == s.log_q_surrogate.shape == batch
    torch.testing.assert_close(s.z, z_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(s.log_q, log_q_ref, rtol=0, atol=1e-10)
    if kind == "mean_field":
        assert s.kl_per_dim is not None and s.kl_per_dim.shape == ((B, D) if amortized else (D,))
    else:
        assert s.kl_per_dim is None
    assert s.has_surrogate == (kind == "uivi")  # the plain gradient is log_q's own
    s.log_q_surrogate.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in family.parameters())


@AMORTIZED
@pytest.mark.parametrize("kind", WITH_LOG_PROB)
def test_stl_surrogate_has_the_value_of_log_q_and_only_the_path_gradient(kind, amortized) -> None:
    family, context = make(kind, amortized), context_for(amortized, requires_grad=True)
    s = family.training_sample(N, context, stl=True)
    assert s.has_surrogate
    torch.testing.assert_close(s.log_q_surrogate, s.log_q, rtol=0, atol=1e-10)
    leaves = [*family.parameters(), *([context] if amortized else [])]
    total = torch.autograd.grad(s.log_q_surrogate.sum(), leaves, retain_graph=True)
    # the path term alone: ∂S/∂z · ∂z/∂θ (and ∂z/∂c for the context)
    (g_z,) = torch.autograd.grad(s.log_q_surrogate.sum(), s.z, retain_graph=True)
    path = torch.autograd.grad(s.z, leaves, g_z, retain_graph=True, allow_unused=True)
    for t, p in zip(total, path, strict=True):
        torch.testing.assert_close(t, torch.zeros_like(t) if p is None else p, rtol=0, atol=1e-9)
    plain = torch.autograd.grad(s.log_q.sum(), leaves, allow_unused=True)
    assert any(  # and it is not the plain gradient: the score term is gone
        (a - (torch.zeros_like(a) if b is None else b)).abs().max() > 1e-6
        for a, b in zip(total, plain, strict=True)
    )


def test_stl_is_refused_for_the_semi_implicit_family() -> None:
    with pytest.raises(ValueError, match="sticking-the-landing and DReG need a family"):
        make("uivi", False).training_sample(N, stl=True)


@AMORTIZED
def test_mean_field_kl_per_dim_is_the_analytic_kl(amortized) -> None:
    family, context = make("mean_field", amortized), context_for(amortized)
    assert isinstance(family, MeanFieldGaussian)
    s = family.training_sample(N, context)
    loc, scale = family.loc_scale(context)
    assert s.kl_per_dim is not None
    torch.testing.assert_close(s.kl_per_dim, kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)))


def test_uivi_value_is_skipped_when_not_needed_and_sized_by_config() -> None:
    family = make("uivi", True)
    s = family.training_sample(N, context_for(True), need_value=False)
    assert s.log_q.isnan().all() and s.log_q_surrogate.isfinite().all()
    cfg = load_fit_config(overrides=["family.kind=uivi", "family.train_log_q_samples=7"])
    assert family_from_config(cfg.family, 2).train_log_q_samples == 7
    assert load_fit_config().family.train_log_q_samples == 100
    cfg = load_train_config(overrides=["posterior.kind=uivi", "posterior.train_log_q_samples=9"])
    assert family_from_config(cfg.posterior, 2, 3).train_log_q_samples == 9


@pytest.mark.parametrize("kind", ["mean_field", "iaf"])
def test_at_context_trains_through_the_same_method(kind) -> None:
    family, context = make(kind, True), context_for(True)
    assert context is not None
    at = AtContext(family, context[:1])
    torch.manual_seed(4)
    s = at.training_sample(N, stl=True)
    torch.manual_seed(4)
    ref = family.training_sample(N, context[:1], stl=True)
    assert s.z.shape == (N, D) and s.log_q.shape == s.log_q_surrogate.shape == (N,)
    torch.testing.assert_close(s.z, ref.z[:, 0])
    torch.testing.assert_close(s.log_q_surrogate, ref.log_q_surrogate[:, 0])
    if kind == "mean_field":
        assert s.kl_per_dim is not None and s.kl_per_dim.shape == (D,)


# ------------------------------------------------------------- families vilab does not know


class UnitGaussian(Family):
    """A user's family, unknown to vilab: N(μ [+ W c], I), with its own training_sample
    that counts its calls and gives the analytic KL to N(0, I)."""

    def __init__(self, dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.dim, self.context_dim = dim, context_dim
        self.loc = nn.Parameter(torch.zeros(dim))
        self.head = None if context_dim is None else nn.Linear(context_dim, dim)
        self.calls = 0

    def _loc(self, context: Tensor | None) -> Tensor:
        return self.loc if self.head is None else self.loc + self.head(context)

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        eps = torch.randn(self.sample_shape(n, context), dtype=self.loc.dtype)
        return self._loc(context) + eps, Normal(0.0, 1.0).log_prob(eps).sum(-1)

    def training_sample(
        self, n: int, context: Tensor | None = None, *, stl: bool = False, need_value: bool = True
    ) -> TrainingSample:
        self.calls += 1
        z, log_q = self.rsample_and_log_prob(n, context)
        loc = self._loc(context)
        return TrainingSample(z, log_q, log_q, 0.5 * loc * loc)


def test_a_user_family_is_trained_by_the_fitter() -> None:
    mean = torch.tensor([1.5, -0.5])
    target = CallableTarget(lambda z: Normal(mean, 1.0).log_prob(z).sum(-1), 2, "gauss", log_z=0.0)
    cfg = load_fit_config(overrides=["steps=200", "samples=64", "optim.lr=0.05", "figures=false"])
    family = UnitGaussian(2)
    fitter = Fitter(cfg, target=target, family=family)
    for _ in range(200):
        fitter.train_step()
    assert family.calls == 200
    torch.testing.assert_close(family.loc.detach(), mean, atol=0.15, rtol=0)


def test_a_user_family_is_trained_by_the_vae_objective() -> None:
    cfg = load_train_config(overrides=[*TINY_VAE, "objective.samples=2"])
    vae = build_vae(cfg)
    family = UnitGaussian(cfg.latent_dim, vae.posterior.family.context_dim)
    vae.posterior.family = family
    x = (torch.rand(8, 784) < 0.3).float()
    obj = vae_objective(vae, x, cfg.objective)
    obj.surrogate.backward()
    assert family.calls == 1 and obj.value.shape == (8,)
    assert all(p.grad is not None for p in vae.parameters())
    # the analytic KL it gave is the one used: free bits accept it
    cfg = load_train_config(overrides=[*TINY_VAE, "objective.free_bits=0.5"])
    vae_objective(vae, x, cfg.objective).surrogate.backward()
    assert family.calls == 2


def test_no_trainer_branches_on_a_family_type() -> None:
    sources = {
        "Fitter.train_step": inspect.getsource(Fitter.train_step),
        "VAETrainer.train_step": inspect.getsource(VAETrainer.train_step),
        "vilab.vae": inspect.getsource(vilab.vae),
    }
    for name, src in sources.items():
        for family in ["SemiImplicit", "MeanFieldGaussian", "FlowFamily", "FullRankGaussian"]:
            assert family not in src, f"{name} names {family}"
        assert "rsample_given" not in src and "loc_scale" not in src, name


# ------------------------------------------------------------------ the annealing schedule


def test_beta_at_is_one_schedule_for_fits_and_vaes() -> None:
    # a fit: t = progress · steps; None anneals over 40% of the run; 0 is off
    assert beta_at(0, beta_start=0.01, beta_steps=None, total_steps=1000, frac=0.0) == 0.01
    assert beta_at(200, beta_start=0.0, beta_steps=None, total_steps=1000, frac=0.2) == 0.5
    assert beta_at(10, beta_start=0.0, beta_steps=None, total_steps=1000, frac=0.4) == 1.0
    assert beta_at(10, beta_start=0.2, beta_steps=0, total_steps=1000, frac=0.0) == 1.0
    assert beta_at(100, beta_start=0.1, beta_steps=400, total_steps=1000, frac=0.1) == 0.35
    # a VAE: t = step (the same formula without a run length)
    assert beta_at(5, beta_start=0.0, beta_steps=10) == 0.5
    assert beta_at(50, beta_start=0.0, beta_steps=10) == 1.0
    assert beta_at(5, beta_start=0.0, beta_steps=0) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        beta_at(5, beta_start=0.0, beta_steps=None)


def test_fitter_logs_the_scheduled_beta() -> None:
    cfg = load_fit_config(
        overrides=["steps=10", "samples=8", "family.kind=mean_field", "objective.beta_steps=4"]
    )
    fitter = Fitter(cfg, target=CallableTarget(lambda z: -0.5 * (z * z).sum(-1), 2))
    betas = [fitter.train_step().values["beta"] for _ in range(6)]
    assert betas == pytest.approx([0.01, 0.26, 0.51, 0.76, 1.0, 1.0])


def test_vae_warm_up_weights_the_kl_of_the_surrogate_only() -> None:
    cfg = load_train_config(overrides=[*TINY_VAE, "objective.beta_steps=10"])
    vae = build_vae(cfg).double()
    x = (torch.rand(8, 784) < 0.3).double()
    objs = []
    for step in [0, 5, 10]:
        torch.manual_seed(7)
        objs.append(vae_objective(vae, x, cfg.objective, step=step))
    for o in objs[1:]:
        torch.testing.assert_close(o.value, objs[0].value)
    s0, s5, s10 = (float(o.surrogate.detach()) for o in objs)
    assert s10 == pytest.approx(float(objs[0].value.mean()))  # β = 1: the ELBO itself
    assert s0 > s5 > s10 and s5 == pytest.approx((s0 + s10) / 2)  # linear in β


def test_uivi_elbo_objective_matches_its_pieces() -> None:
    cfg = load_train_config(
        overrides=[*TINY_VAE, "encoder.kind=identity", "posterior.kind=uivi"]
        + ["posterior.hidden=[16]", "posterior.train_log_q_samples=5"]
    )
    vae = build_vae(cfg)
    x = (torch.rand(4, 784) < 0.3).float()
    obj = vae_objective(vae, x, cfg.objective, need_value=False)
    assert obj.value.isnan().all() and math.isfinite(float(obj.surrogate.detach()))
    with pytest.raises(ValueError, match="kind='iwae' needs a log q"):
        vae_objective(vae, x, cfg.objective.model_copy(update={"kind": "iwae"}))
