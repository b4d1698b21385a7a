"""Devices come from the data (DESIGN.md rule 9): every family, objective, sampler,
estimator and target computes on the device and dtype of its inputs.

Two kinds of check, so that device mistakes are caught on machines without a GPU:

* **Off the CPU, without a GPU** (the ``off`` fixture): the modules' parameters and
  buffers, and every input, live on a *fake* accelerator (torch's ``FakeTensorMode``:
  tensors with shapes, dtypes and devices but no values; float32) or on ``meta``
  (float64). A tensor created without the device of its inputs is a CPU tensor, and
  computing with it raises (``FakeTensorDeviceMismatchError``, or meta's
  ``RuntimeError``); a 0-d CPU tensor mixes legitimately, as with real CUDA tensors. Each
  check runs a whole training step: forward, and ``backward()``.

  The fake device is ``cuda`` where torch is built with CUDA. A CPU-only build holds fake
  ``cuda`` tensors but has no CUDA device guard: Python indexing (``z[..., 0]``) raises
  and an autograd node on such a tensor aborts the process. There the fake device is
  ``lazy``, a non-CPU device whose guard every build has; the checks are the same.

  Neither kind of tensor has values: a read to the host (``float(t)``, ``bool(t)``,
  ``.item()``) raises there, and the few on the sample/score path (the iterative inverses'
  convergence tests) are answered by :func:`assume_converged`.
* **On every available device** (the ``device`` fixture of conftest: the CPU, and CUDA
  where there is one): the same computations with real float64 tensors and the same base
  noise as on the CPU (:func:`same_noise`), compared with the CPU's values.
"""

from __future__ import annotations

import builtins
import copy
import itertools
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from unittest import mock

import pytest
import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import vilab.estimators.ais as ais_module
import vilab.flows.base as flows_base
import vilab.flows.naf as flows_naf
from vilab.build import family_from_config
from vilab.config import (
    FAMILY_KINDS,
    DataConfig,
    FamilyConfig,
    NetConfig,
    ObjectiveConfig,
    PosteriorConfig,
    TrainConfig,
)
from vilab.core.support import parse_support
from vilab.estimators.ais import ais
from vilab.estimators.elbo import annealed_elbo_surrogate, elbo, iwae
from vilab.estimators.importance import effective_sample_size, kl_estimate, log_mean_exp_stderr
from vilab.estimators.kl import exact_kl
from vilab.estimators.loglik import importance_log_likelihood
from vilab.estimators.objectives import dreg_objective, elbo_objective, iwae_objective
from vilab.families.base import AtContext, Family
from vilab.families.distribution import FullRankGaussianDistribution, MeanFieldGaussianDistribution
from vilab.families.gaussian import FullRankGaussian, MeanFieldGaussian, std_normal_log_prob
from vilab.flows.base import Flow
from vilab.flows.flow import FlowFamily
from vilab.flows.spline import _ramp
from vilab.samplers.hmc import DualAveraging, hmc, hmc_step, log_prob_and_grad
from vilab.targets.energies import BUILTIN_TARGETS, Banana
from vilab.targets.latent import LinearGaussianModel
from vilab.targets.suite import SUITE_TARGETS
from vilab.vae import build_vae, vae_objective

D, C, B, S = 3, 2, 4, 3  # latent dim, context dim, contexts, samples per context
STACK = [
    {"kind": "planar", "layers": 1},
    {"kind": "iaf", "layers": 1, "hidden": [8]},
    {"kind": "spline_coupling", "layers": 1, "hidden": [8], "bins": 4},
]
AMORTIZED = pytest.mark.parametrize("amortized", [False, True], ids=["free", "amortized"])


# --- the off-CPU harness -------------------------------------------------------------------


#: The fake accelerator: CUDA where torch has CUDA's device guard, else ``lazy`` (see above).
FAKE_DEVICE = torch.device("cuda" if torch.backends.cuda.is_built() else "lazy", 0)


class OffCPU:
    """Where a device check runs without a GPU: ``fake_gpu`` (fake tensors on
    :data:`FAKE_DEVICE`, float32) or ``meta`` (float64)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.device = FAKE_DEVICE if kind == "fake_gpu" else torch.device("meta")
        self.dtype = torch.float32 if kind == "fake_gpu" else torch.float64

    def __repr__(self) -> str:
        return self.kind

    @contextmanager
    def place(self, *modules: nn.Module) -> Iterator[None]:
        """Move ``modules`` (built on the CPU) off the CPU and run the block there; inputs
        are made inside it with :meth:`randn` / :meth:`rand`."""
        for m in modules:
            m.to(self.dtype)
        _ramp.cache_clear()  # spline knots keep one tensor per device: none may leak out
        try:
            if self.kind == "meta":
                for m in modules:
                    m.to(self.device)
                yield
            else:
                moves = mock.patch.object(nn.Module, "to", fake_module_to)
                with FakeTensorMode(allow_non_fake_inputs=True), moves:
                    memo: dict[int, Tensor] = {}
                    for m in modules:
                        to_fake(m, memo)
                    yield
        finally:
            _ramp.cache_clear()

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, dtype=self.dtype, device=self.device)

    def rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, dtype=self.dtype, device=self.device)

    def check(self, *tensors: Tensor | None, dtype: torch.dtype | None = None) -> None:
        """Each tensor is on this device, in ``dtype`` (default: the harness's)."""
        for t in tensors:
            if t is None:
                continue
            assert t.device.type == self.device.type, f"{tuple(t.shape)} on {t.device}"
            assert t.dtype == (dtype or self.dtype), f"{tuple(t.shape)} in {t.dtype}"
            if self.kind == "fake_gpu":
                assert isinstance(t, FakeTensor)


def to_fake(
    module: nn.Module,
    memo: dict[int, Tensor],
    device: torch.device | None = FAKE_DEVICE,
    dtype: torch.dtype | None = None,
) -> None:
    """Replace every parameter and buffer of ``module`` by a fake tensor of its shape (inside
    an active FakeTensorMode) on ``device`` (None: its own) and, where it is a
    floating-point one, in ``dtype`` (None: its own). Shared tensors stay shared."""

    def fake(t: Tensor) -> Tensor:
        if id(t) not in memo:
            kind = dtype if dtype is not None and t.is_floating_point() else t.dtype
            memo[id(t)] = torch.empty(t.shape, dtype=kind, device=device or t.device)
        return memo[id(t)]

    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = nn.Parameter(fake(p), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = fake(b)


def fake_module_to(self: nn.Module, *args, **kwargs) -> nn.Module:
    """``nn.Module.to`` for a module built under FakeTensorMode, whose parameters torch
    cannot swap (they carry weak references): new fake tensors where it was asked."""
    device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    to_fake(self, {}, device, dtype)
    return self


@pytest.fixture(params=["fake_gpu", "meta"])
def off(request) -> OffCPU:
    return OffCPU(request.param)


def _converged(t: object) -> bool:
    return True


@contextmanager
def assume_converged() -> Iterator[None]:
    """Answer the host reads of the iterative inverses without reading a value (fake and
    meta tensors have none): planar and Sylvester's :func:`solve_tanh_root` stops after
    one iteration and its residual reads 0; the naf's :func:`sigmoidal_inverse` finds its
    bracket at once and stops after one iteration (its two reads alternate: "bracket
    missed anywhere?" no, "converged everywhere?" yes). The rest of the path runs."""
    naf_answers = itertools.cycle([False, True])
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(flows_base, "bool", _converged, create=True))
        stack.enter_context(mock.patch.object(flows_base, "float", lambda t: 0.0, create=True))
        stack.enter_context(
            mock.patch.object(flows_naf, "bool", lambda t: next(naf_answers), create=True)
        )
        yield


def raises_device_mismatch():
    """What mixing a CPU tensor into fake or meta tensors raises:
    ``FakeTensorDeviceMismatchError`` (a ``RuntimeError``) or meta's ``RuntimeError``."""
    return pytest.raises(RuntimeError, match="device")


# --- same noise on every device --------------------------------------------------------------


@contextmanager
def same_noise(seed: int) -> Iterator[None]:
    """``torch.randn``/``rand`` (and ``*_like``) draw on the CPU from one seeded generator
    and move to the requested device, so a computation sees the same base noise on every
    device (device RNG streams differ)."""
    g = torch.Generator().manual_seed(seed)
    randn, rand = torch.randn, torch.rand

    def draw(fn):
        def new(*size, dtype=None, device=None, generator=None, **kw):
            out = fn(*size, generator=g, dtype=dtype or torch.get_default_dtype(), **kw)
            return out if device is None else out.to(device)

        def like(t, *, dtype=None, device=None, **kw):
            return new(t.shape, dtype=dtype or t.dtype, device=device or t.device, **kw)

        return new, like

    new_randn, randn_like = draw(randn)
    new_rand, rand_like = draw(rand)
    with ExitStack() as stack:
        for name, fn in [
            ("randn", new_randn),
            ("randn_like", randn_like),
            ("rand", new_rand),
            ("rand_like", rand_like),
        ]:
            stack.enter_context(mock.patch.object(torch, name, fn))
        yield


def assert_matches_cpu(got: dict[str, Tensor], ref: dict[str, Tensor], device) -> None:
    """Same keys; each value on ``device`` (its type), close to the CPU's in float64."""
    assert got.keys() == ref.keys()
    for k, v in got.items():
        assert v.device.type == torch.device(device).type, k
        assert v.dtype == ref[k].dtype, k
        torch.testing.assert_close(v.detach().cpu(), ref[k], rtol=1e-7, atol=1e-9, msg=k)


# --- what is checked ------------------------------------------------------------------------


def make_family(kind: str, amortized: bool, support: object = None, dim: int = D) -> Family:
    """A small family of every kind, built on the CPU, off its identity initialization."""
    torch.manual_seed(0)
    cfg = FamilyConfig(
        kind=kind,
        layers=2,
        hidden=[8],
        bins=4,
        units=3,
        noise_dim=3,
        log_q_samples=6,
        train_log_q_samples=4,
        log_q_stderr=None,  # K fixed: sizing K reads its error back (evaluation only)
        stack=STACK,
    )
    family = family_from_config(cfg, dim, C if amortized else None, parse_support(support, dim))
    with torch.no_grad():
        for p in family.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return family


def log_p(z: Tensor, context: Tensor | None) -> Tensor:
    """A Gaussian log-density whose mean follows the context, ``(S[, B], D) -> (S[, B])``."""
    mean = 0.5 if context is None else context.sum(-1, keepdim=True)
    return -0.5 * ((z - mean) ** 2).sum(-1)


def family_step(
    family: Family, context: Tensor | None, scoring=nullcontext
) -> tuple[Tensor, dict[str, Tensor]]:
    """A training step's forward pass through every objective and estimator the family
    allows; returns the loss and every tensor computed on the way. Scoring an arbitrary z
    (log_prob, STL, DReG) runs inside ``scoring()``."""
    out: dict[str, Tensor] = {}
    out["z"], out["log_q"] = family.rsample_and_log_prob(S, context)
    s = family.training_sample(S, context)
    out["ts_z"], out["ts_log_q"] = s.z, s.log_q
    ll, lp = log_p(s.z, context), std_normal_log_prob(s.z)
    log_w = ll + lp - s.log_q
    stop = s.log_q_surrogate if s.has_surrogate else None
    el = elbo_objective(ll, lp, s.log_q, log_q_stop=stop)
    out["elbo_value"], loss = el.value, -el.surrogate
    out["elbo"], out["iwae"] = elbo(log_w), iwae(log_w)
    loss = loss - annealed_elbo_surrogate(ll + lp, s.log_q_surrogate, 0.5).mean()
    if s.kl_per_dim is not None:  # the mean-field Gaussian's analytic KL, with free bits
        kl = s.kl_per_dim.sum(-1)
        fb = elbo_objective(ll, lp, s.log_q, kl, 0.5, 0.1, s.kl_per_dim)
        out["kl_per_dim"], out["elbo_kl"] = s.kl_per_dim, fb.value
        loss = loss - fb.surrogate
    if not s.has_surrogate:
        iw = iwae_objective(log_w)
        out["iwae_value"], loss = iw.value, loss - iw.surrogate
    d = family.distribution(context, validate_args=False)  # validation reads the host
    out["dist_z"], out["dist_log_q"] = d.rsample_and_log_prob((2,))
    if isinstance(d, MeanFieldGaussianDistribution | FullRankGaussianDistribution):
        out["entropy"], out["variance"] = d.entropy(), d.variance
        out["kl_self"] = torch.distributions.kl_divergence(d, d)
    if family.has_log_prob:
        return score(family, context, out, loss, scoring)
    out["log_q_estimate"] = family.log_prob_estimate(out["z"].detach(), context)
    return loss, out


def score(family, context, out, loss, scoring) -> tuple[Tensor, dict[str, Tensor]]:
    """log q of an arbitrary z, and the STL and DReG surrogates (they need it)."""
    with scoring():
        z = out["z"].detach() + 0.1
        out["log_prob"] = family.log_prob(z, context)
        t = family.training_sample(S, context, stl=True)
        joint = log_p(t.z, context) + std_normal_log_prob(t.z)
        joint_z_stop = log_p(t.z.detach(), context) + std_normal_log_prob(t.z.detach())
        dr = dreg_objective(joint - t.log_q, joint, t.log_q_surrogate, joint_z_stop)
        out["stl_surrogate"], out["dreg_value"] = t.log_q_surrogate, dr.value
    return loss - dr.surrogate, out


def grads(module: nn.Module) -> dict[str, Tensor]:
    return {f"grad:{n}": p.grad for n, p in module.named_parameters() if p.grad is not None}


# --- the harness catches what it should ------------------------------------------------------


class Shift(Flow):
    """z + 1: with the ones made on z's device (right) or on the default device (wrong)."""

    def __init__(self, dim: int, right: bool) -> None:
        super().__init__()
        self.dim, self.right = dim, right

    def forward(self, z, context=None, trace=None):
        kw = {"dtype": z.dtype, "device": z.device} if self.right else {}
        return z + torch.ones(z.shape[-1], **kw), z.new_zeros(z.shape[:-1])


def test_harness_catches_a_tensor_made_without_its_inputs_device(off) -> None:
    with off.place():
        x = off.randn(5, 3)
        with raises_device_mismatch():
            x + torch.ones(x.shape)
        with raises_device_mismatch():
            torch.ones(x.shape) * x
        off.check(x + torch.ones(x.shape, dtype=x.dtype, device=x.device))
        off.check(x + torch.tensor(1.0))  # a 0-d CPU tensor mixes with CUDA ones too
        assert x.device.type == ("meta" if off.kind == "meta" else FAKE_DEVICE.type)


def test_harness_catches_a_flow_that_makes_its_tensors_on_the_cpu(off) -> None:
    wrong = FlowFamily(MeanFieldGaussian(D), [Shift(D, right=False)])
    with off.place(wrong), raises_device_mismatch():
        wrong.rsample_and_log_prob(S)
    right = FlowFamily(MeanFieldGaussian(D), [Shift(D, right=True)])
    with off.place(right):
        z, log_q = right.rsample_and_log_prob(S)
        off.check(z, log_q)
    z_cpu, _ = FlowFamily(MeanFieldGaussian(D), [Shift(D, right=False)]).rsample_and_log_prob(S)
    assert z_cpu.device.type == "cpu"  # the wrong flow is right on the CPU: only this catches it


def test_harness_catches_a_dtype_other_than_the_inputs() -> None:
    off = OffCPU("fake_gpu")  # float32: a float64 constant promotes the result
    with off.place():
        x = off.randn(5, 3)
        y = x + torch.ones(3, dtype=torch.float64, device=x.device)
        with pytest.raises(AssertionError, match="float64"):
            off.check(y)


def test_harness_leaves_no_fake_tensor_in_the_spline_cache(off) -> None:
    family = make_family("spline_coupling", amortized=False)
    with off.place(family):
        family.rsample_and_log_prob(S)
    assert _ramp.cache_info().currsize == 0


# --- families, objectives and estimators off the CPU -----------------------------------------


@AMORTIZED
@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_family_training_step_off_cpu(kind, amortized, off) -> None:
    """Sampling, the training sample, every objective and the backward pass read nothing
    back to the host (they run on tensors without values); only scoring an arbitrary z
    (log_prob, STL, DReG) is given :func:`assume_converged`."""
    family = make_family(kind, amortized)
    with off.place(family):
        context = off.randn(B, C) if amortized else None
        loss, out = family_step(family, context, assume_converged)
        off.check(loss, *out.values())
        batch = (S, B) if amortized else (S,)
        assert out["z"].shape == (*batch, D) and out["log_q"].shape == batch
        loss.backward()
        got = grads(family)
        assert got, "no parameter got a gradient"
        off.check(*got.values())


@pytest.mark.parametrize(
    "kind,support",
    [("mean_field", [[0, None], [None, None], [-1, 1]]), ("iaf", "positive")],
    ids=["mean_field-box", "iaf-positive"],
)
def test_family_on_a_bounded_support_off_cpu(kind, support, off) -> None:
    family = make_family(kind, amortized=True, support=support)
    with off.place(family):
        context = off.randn(B, C)
        loss, out = family_step(family, context)
        off.check(loss, *out.values())
        loss.backward()
        off.check(*grads(family).values())


def test_family_at_a_fixed_context_off_cpu(off) -> None:
    inner = make_family("planar", amortized=True)
    with off.place(inner), assume_converged():
        q = AtContext(inner, off.randn(1, C))
        z, log_q = q.rsample_and_log_prob(S)
        s = q.training_sample(S, stl=True)
        off.check(z, log_q, s.z, s.log_q, s.log_q_surrogate, q.log_prob(z.detach()))


def test_importance_sampled_log_likelihood_off_cpu(off) -> None:
    family = make_family("iaf", amortized=True)
    with off.place(family):
        context = off.randn(B, C)

        def log_weights(k: int) -> Tensor:
            z, log_q = family.rsample_and_log_prob(k, context)
            return log_p(z, context) - log_q

        est = importance_log_likelihood(log_weights, num_samples=7, chunk=3, iwae_k=2)
        off.check(est.log_px, est.stderr, est.elbo, est.iwae, dtype=torch.float64)
        assert est.log_px.shape == (B,)


def test_hmc_transitions_off_cpu(off) -> None:
    target = Banana()
    with off.place():
        x = off.randn(4, 2, 2)
        eps = torch.full((4, 2), 0.1, dtype=off.dtype, device=off.device)
        inv_mass = torch.ones(2, dtype=off.dtype, device=off.device)
        adapter = DualAveraging(eps, 0.8)
        current = log_prob_and_grad(target.log_prob, x)
        for mass in (inv_mass, None):
            x, lp, g, prob, accepted = hmc_step(target.log_prob, x, eps, 3, mass, current, 0.5)
            current = (lp, g)
            eps = adapter.update(prob)
        off.check(x, lp, g, prob, eps, adapter.final)
        assert accepted.device.type == off.device.type and accepted.dtype == torch.bool


def test_annealed_importance_sampling_on_meta() -> None:
    """AIS reads each transition's acceptance rate to the host (``float(prob.mean())``),
    which meta tensors answer with a stub; its schedule is a CPU tensor by design."""
    off = OffCPU("meta")
    target = Banana()

    def stub(t: object) -> float:
        return builtins.float(t) if t.device.type == "cpu" else 0.5  # type: ignore[union-attr]

    with off.place(), mock.patch.object(ais_module, "float", stub, create=True):
        res = ais(
            std_normal_log_prob,
            lambda c: off.randn(c, B, 2),
            target.log_prob,
            num_chains=3,
            num_dists=3,
            num_leapfrog=2,
        )
    off.check(res.log_z, res.stderr, res.log_w)
    assert res.log_z.shape == (B,) and res.log_w.shape == (3, B)


# --- the VAE path ---------------------------------------------------------------------------

OBJECTIVES = {
    "elbo": {"kind": "elbo", "samples": 2},
    "elbo_warmup_free_bits": {"kind": "elbo", "samples": 2, "beta_steps": 10, "free_bits": 0.1},
    "stl": {"kind": "elbo", "samples": 2, "stl": True},
    "iwae": {"kind": "iwae", "samples": 3},
    "dreg": {"kind": "dreg", "samples": 3},
}
VAE_CASES = [
    *[("mean_field", "mlp", k) for k in OBJECTIVES],
    *[("iaf", "mlp", k) for k in OBJECTIVES if k != "elbo_warmup_free_bits"],
    ("planar", "mlp", "dreg"),
    ("uivi", "mlp", "elbo"),
    ("mean_field", "resnet", "elbo"),
    ("mean_field", "gated", "iwae"),
]


def vae_config(posterior: str, net: str, objective: str) -> TrainConfig:
    nets = {
        "mlp": NetConfig(hidden=[16]),
        "resnet": NetConfig(kind="resnet", channels=4, features=16),
        "gated": NetConfig(kind="gated", features=16),
    }
    return TrainConfig(
        data=DataConfig(name="tiny"),
        latent_dim=D,
        encoder=nets[net],
        decoder=nets[net],
        posterior=PosteriorConfig(
            kind=posterior,
            layers=1,
            hidden=[8],
            noise_dim=3,
            log_q_samples=6,
            train_log_q_samples=4,
        ),
        objective=ObjectiveConfig(**OBJECTIVES[objective]),
    )


def vae_step(vae, x: Tensor, cfg: TrainConfig) -> tuple[Tensor, dict[str, Tensor]]:
    obj = vae_objective(vae, x, cfg.objective, step=3)
    out = {"value": obj.value, "surrogate": obj.surrogate}
    out["log_weights"] = vae.log_weights(x, 2)
    return -obj.surrogate, out


@pytest.mark.parametrize("posterior,net,objective", VAE_CASES)
def test_vae_training_step_off_cpu(posterior, net, objective, off) -> None:
    """No host read in the step either, but for the planar inverse of DReG's log q."""
    cfg = vae_config(posterior, net, objective)
    torch.manual_seed(0)
    vae = build_vae(cfg)
    stubs = assume_converged() if posterior == "planar" else nullcontext()
    with off.place(vae), stubs:
        x = (off.rand(B, 784) < 0.5).to(off.dtype)
        loss, out = vae_step(vae, x, cfg)
        off.check(loss, *out.values())
        assert out["value"].shape == (B,) and out["log_weights"].shape == (2, B)
        off.check(vae.sample(2), vae.reconstruct(x))
        loss.backward()
        got = grads(vae)
        assert got, "no parameter got a gradient"
        off.check(*got.values())


# --- targets off the CPU ---------------------------------------------------------------------

TARGETS = {**BUILTIN_TARGETS, **SUITE_TARGETS}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_log_prob_off_cpu(name, off) -> None:
    target = TARGETS[name]()
    fixed = None
    if target.context_dim is not None:  # at a context row given on the CPU
        fixed = target.at(torch.ones(target.context_dim))
    with off.place():
        z = off.randn(5, B, target.dim)
        if fixed is None:
            off.check(target.log_prob(z))
        else:
            context = 0.5 + off.rand(B, target.context_dim)
            off.check(target.log_prob(z, context), fixed.log_prob(z))


def test_linear_gaussian_model_off_cpu(off) -> None:
    g = torch.Generator().manual_seed(0)
    model = LinearGaussianModel(torch.randn(6, D, generator=g), torch.randn(6, generator=g), 0.7)
    no_validation = mock.patch.object(torch.distributions.Distribution, "_validate_args", False)
    with off.place(model), no_validation:  # torch's argument checks read the host
        x = off.randn(B, 6)
        off.check(model.log_marginal(x), *model.posterior())
        q = FullRankGaussian.from_linear_gaussian(*model.posterior())
        off.check(*q.parameters())
        z, log_q = q.rsample_and_log_prob(S, x)
        off.check(z, log_q, model.log_joint(x, z))


# --- on every available device, against the CPU ----------------------------------------------


def on(device, module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to(device)


@AMORTIZED
@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_family_training_step_matches_cpu(kind, amortized, device) -> None:
    family = make_family(kind, amortized).double()
    context = torch.randn(B, C, dtype=torch.float64) if amortized else None
    runs = {}
    for where in ("cpu", device):
        f = on(where, family)
        with same_noise(1):
            loss, out = family_step(f, None if context is None else context.to(where))
        loss.backward()
        runs[str(where)] = {"loss": loss, **out, **grads(f)}
    ref = {k: v.detach() for k, v in runs["cpu"].items()}
    assert_matches_cpu(runs[str(device)], ref, device)


@pytest.mark.parametrize("posterior,net,objective", [c for c in VAE_CASES if c[1] == "mlp"])
def test_vae_training_step_matches_cpu(posterior, net, objective, device) -> None:
    cfg = vae_config(posterior, net, objective)
    torch.manual_seed(0)
    vae = build_vae(cfg).double()
    x = (torch.rand(B, 784, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    runs = {}
    for where in ("cpu", device):
        v = on(where, vae)
        with same_noise(1):
            loss, out = vae_step(v, x.to(where), cfg)
        loss.backward()
        runs[str(where)] = {"loss": loss, **out, **grads(v)}
    ref = {k: v.detach() for k, v in runs["cpu"].items()}
    assert_matches_cpu(runs[str(device)], ref, device)


def test_vae_in_bf16_trains_on_the_device(device) -> None:
    cfg = vae_config("mean_field", "mlp", "elbo").model_copy(update={"precision": "bf16"})
    vae = build_vae(cfg).to(device)
    x = (torch.rand(B, 784, device=device) < 0.5).float()
    loss, out = vae_step(vae, x, cfg)
    loss.backward()
    for t in [loss, *out.values(), *grads(vae).values()]:
        assert t.device.type == device.type and t.dtype == torch.float32
        assert torch.isfinite(t).all()


def test_samplers_and_estimators_match_cpu(device) -> None:
    target = Banana()
    family = make_family("mean_field", amortized=True).double()
    context = torch.randn(B, C, dtype=torch.float64)
    runs = {}
    for where in ("cpu", device):
        q, c = on(where, family), context.to(where)

        def log_weights(k: int, q=q, c=c) -> Tensor:
            z, log_q = q.rsample_and_log_prob(k, c)
            return log_p(z, c) - log_q

        x0 = torch.zeros(4, 2, dtype=torch.float64, device=where)
        with same_noise(3):
            chain = hmc(target.log_prob, x0, num_samples=3, burn_in=4, num_leapfrog=3)
            est = importance_log_likelihood(log_weights, num_samples=7, chunk=3, iwae_k=2)
            res = ais(
                std_normal_log_prob,
                lambda n, w=where: torch.randn(n, B, 2, dtype=torch.float64, device=w),
                target.log_prob,
                num_chains=3,
                num_dists=4,
                num_leapfrog=2,
            )
        log_w = res.log_w.T  # (B, chains)
        runs[str(where)] = {
            "hmc_samples": chain.samples,
            "hmc_step_size": chain.step_size,
            "hmc_accept_rate": chain.accept_rate,
            "log_px": est.log_px,
            "log_px_stderr": est.stderr,
            "elbo": est.elbo,
            "iwae": est.iwae,
            "ais_log_z": res.log_z,
            "ais_log_w": res.log_w,
            "ess": effective_sample_size(log_w),
            "log_mean_exp": log_mean_exp_stderr(log_w)[0],
            "kl_estimate": kl_estimate(log_w)[0],
        }
    assert_matches_cpu(runs[str(device)], runs["cpu"], device)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_log_prob_matches_cpu(name, device) -> None:
    target = TARGETS[name]()
    z = torch.randn(5, B, target.dim, dtype=torch.float64, generator=torch.Generator())
    context = None
    if target.context_dim is not None:
        context = 0.5 + torch.rand(B, target.context_dim, dtype=torch.float64)
    runs = {}
    for where in ("cpu", device):
        c = None if context is None else context.to(where)
        runs[str(where)] = {"log_prob": target.log_prob(z.to(where), c)}
        if context is not None:
            fixed = target.at(torch.ones(target.context_dim))
            runs[str(where)]["fixed"] = fixed.log_prob(z[:, 0].to(where))
    assert_matches_cpu(runs[str(device)], runs["cpu"], device)


def test_exact_kl_and_linear_gaussian_model_match_cpu(device) -> None:
    g = torch.Generator().manual_seed(0)
    model = LinearGaussianModel(
        torch.randn(6, D, generator=g, dtype=torch.float64),
        torch.randn(6, generator=g, dtype=torch.float64),
        0.7,
    )
    x = torch.randn(B, 6, generator=g, dtype=torch.float64)
    family = make_family("sylvester_orthogonal", amortized=False, dim=2).double()
    target = Banana()
    runs, kls = {}, {}
    for where in ("cpu", device):
        m = on(where, model)
        q = FullRankGaussian.from_linear_gaussian(*m.posterior())
        assert all(p.device.type == torch.device(where).type for p in q.parameters())
        with same_noise(4):
            z, log_q = q.rsample_and_log_prob(S, x.to(where))
            kls[str(where)] = exact_kl(on(where, family), target, 0.0, n=200, chunk=64)
        runs[str(where)] = {
            "log_marginal": m.log_marginal(x.to(where)),
            "log_w": m.log_joint(x.to(where), z) - log_q,
            **dict(zip(("a", "c", "cov"), m.posterior())),
        }
    assert_matches_cpu(runs[str(device)], runs["cpu"], device)
    cpu, dev = kls["cpu"], kls[str(device)]
    assert math.isclose(dev.kl, cpu.kl, rel_tol=1e-9) and math.isfinite(dev.kl_stderr)
