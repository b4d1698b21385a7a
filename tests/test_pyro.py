"""Pyro models as targets: the density on the unconstrained space, batched, checked."""

from __future__ import annotations

import math

import pytest
import torch

pyro = pytest.importorskip("pyro")
dist = pytest.importorskip("pyro.distributions")

from pyro_schools import SCHOOLS  # noqa: E402

from vilab.targets.pyro import PyroTargetError, from_pyro  # noqa: E402

F64 = torch.float64
Y = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12], dtype=F64)
SIGMA = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18], dtype=F64)


def eight_schools(y=Y, sigma=SIGMA):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=F64), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.full((), 5.0, dtype=F64)))
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def by_hand(z: torch.Tensor) -> torch.Tensor:
    """Eight schools on (mu, log tau, theta): the densities and log tau's Jacobian."""
    mu, log_tau, theta = z[..., 0], z[..., 1], z[..., 2:]
    tau = log_tau.exp()
    normal = torch.distributions.Normal
    lp = normal(0.0, 5.0).log_prob(mu)
    lp = lp + math.log(2 / (math.pi * 5.0)) - torch.log1p((tau / 5.0) ** 2) + log_tau
    lp = lp + normal(mu[..., None], tau[..., None]).log_prob(theta).sum(-1)
    return lp + normal(theta, SIGMA).log_prob(Y).sum(-1)


@pytest.fixture(scope="module")
def target():
    return from_pyro(eight_schools)


def test_names_dim_and_the_hand_written_density_with_its_gradient(target) -> None:
    assert target.dim == 10
    assert target.param_names() == ("mu", "tau", *(f"theta[{i}]" for i in range(1, 9)))
    z = torch.randn(5, 10, dtype=F64, generator=torch.Generator().manual_seed(1))
    z.requires_grad_(True)
    got, want = target.log_prob(z), by_hand(z)
    torch.testing.assert_close(got - got[0], want - want[0], rtol=0, atol=1e-10)
    g_got = torch.autograd.grad(got.sum(), z)[0]
    g_want = torch.autograd.grad(want.sum(), z)[0]
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-10)


def test_batched_equals_one_draw_at_a_time_in_any_batch_shape(target) -> None:
    z = torch.randn(2, 3, 10, dtype=F64, generator=torch.Generator().manual_seed(2))
    got = target.log_prob(z)
    assert got.shape == (2, 3)
    loop = sum(target.site_log_probs_loop(z.reshape(6, 10)).values()).reshape(2, 3)
    torch.testing.assert_close(got, loop, rtol=1e-12, atol=1e-12)
    assert target.log_prob(z[0, 0]).shape == ()


def test_float32_draws_give_float32_log_probs() -> None:
    def model():
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, s), obs=torch.tensor(0.3))

    t = from_pyro(model)
    lp = t.log_prob(torch.zeros(4, 1))
    assert lp.dtype == torch.float32 and lp.shape == (4,)


def test_constrain_round_trips_onto_the_support(target) -> None:
    z = torch.randn(7, 10, dtype=F64)
    x = target.constrain(z)
    assert x.shape == (7, 10)
    torch.testing.assert_close(x[:, 0], z[:, 0])
    torch.testing.assert_close(x[:, 1].log(), z[:, 1])
    torch.testing.assert_close(x[:, 2:], z[:, 2:])


def test_a_sum_over_an_undeclared_plate_is_caught_naming_the_site() -> None:
    def summed():
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=F64), 5.0))
        with pyro.plate("schools", 8):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.factor("lik", dist.Normal(theta, SIGMA).log_prob(Y).sum())

    with pytest.raises(PyroTargetError, match="'lik'"):
        from_pyro(summed)


def test_a_discrete_latent_site_is_refused_by_name() -> None:
    def mixture():
        k = pyro.sample("k", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(k, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(PyroTargetError, match="'k' is discrete"):
        from_pyro(mixture)


def test_vilab_fit_on_a_pyro_model_in_a_file(tmp_path) -> None:
    from vilab.commands.fit import run_fit
    from vilab.config import load_fit_config

    path = tmp_path / "schools.py"
    path.write_text(SCHOOLS)
    cfg = load_fit_config(
        overrides=[
            f"target.name=pyro:{path}:model",
            "family.kind=mean_field",
            "steps=50",
            "samples=32",
            "eval_samples=500",
            "report_samples=500",
            "figures=false",
        ]
    )
    metrics = run_fit(cfg, tmp_path / "run", progress=False, tensorboard=False).metrics
    assert math.isfinite(metrics["elbo"])


def _nested(event_as_batch: bool):
    def model():
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
        scale = pyro.sample("scale", dist.LogNormal(torch.zeros(2), 1.0).to_event(1))
        pyro.deterministic("total", scale.sum(-1))
        with pyro.plate("rows", 4, dim=-2), pyro.plate("cols", 2, dim=-1):
            # scale's event dim used as the cols batch dim mixes the particle dim in
            b = pyro.sample("b", dist.Normal(0.0, scale if event_as_batch else scale.sum(-1)))
            pyro.sample("x", dist.Normal(b + w[..., 0], 1.0), obs=torch.ones(4, 2))

    return model


def test_a_simplex_nested_plates_an_event_site_and_a_deterministic_pass_the_check() -> None:
    t = from_pyro(_nested(event_as_batch=False))
    assert t.dim == 2 + 2 + 8 and t.nesting == 2
    names = t.param_names()
    assert names[:5] == ("w[1]", "w[2]", "w[3]", "scale[1]", "scale[2]") and "b[4,2]" in names
    x = t.constrain(torch.randn(5, t.dim))
    assert x.shape == (5, len(names)) and torch.allclose(x[:, :3].sum(-1), torch.ones(5))
    with pytest.raises(PyroTargetError, match="site 'b'"):
        from_pyro(_nested(event_as_batch=True))


def bounded(y, low, high):
    """A model with a support whose bounds are tensors (traced again on the draws' device)
    and a tensor it makes itself (made there by the default-device context)."""
    s = pyro.sample("s", dist.Uniform(low, high))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(torch.zeros(y.shape[0]), s), obs=y)


def test_draws_on_another_device_run_the_model_there() -> None:
    """z on the meta device (no GPU here): every tensor argument is moved there, the
    support's bounds follow by a trace on that device, and the result stays there; on
    the CPU the same target gives Uniform(0.5, 3)'s density times N(y; 0, s²)."""
    y, low, high = torch.randn(6), torch.tensor(0.5), torch.tensor(3.0)
    target = from_pyro(bounded, y, low, high)
    z = torch.zeros(4, 1)
    s = 0.5 + 2.5 * torch.sigmoid(z[:, 0])
    jac = math.log(2.5) + torch.nn.functional.logsigmoid(z[:, 0]) * 2 - z[:, 0]
    want = -math.log(2.5) + jac + torch.distributions.Normal(0.0, s[:, None]).log_prob(y).sum(-1)
    torch.testing.assert_close(target.log_prob(z), want)
    with pyro.validation_enabled(False):  # validation reads values: none on meta
        got = target.log_prob(z.to("meta"))
    assert got.device.type == "meta" and got.shape == (4,)
    assert target.on(torch.device("meta"))[0][0].device.type == "meta"


Y_BOUND = torch.randn(5)


def held_data():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("obs", 5):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=Y_BOUND)


def test_a_model_holding_its_data_on_the_cpu_is_named_off_the_cpu() -> None:
    target = from_pyro(held_data)
    with pyro.validation_enabled(False), pytest.raises(PyroTargetError, match="as arguments"):
        target.log_prob(torch.zeros(3, 1, device="meta"))


def test_a_target_on_every_device_matches_the_cpu(device) -> None:
    """The eight schools' density and gradient with draws on each available device (CUDA
    where present: `make bench-gpu` runs this file there too) equal the CPU's."""
    target = from_pyro(eight_schools, Y, SIGMA)
    z = torch.randn(7, 10, dtype=F64, generator=torch.Generator().manual_seed(5))
    runs = {}
    for where in ("cpu", device):
        zw = z.to(where).requires_grad_(True)
        lp = target.log_prob(zw)
        assert lp.device.type == torch.device(where).type
        runs[str(where)] = (lp.detach().cpu(), torch.autograd.grad(lp.sum(), zw)[0].cpu())
    for a, b in zip(runs[str(device)], runs["cpu"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
