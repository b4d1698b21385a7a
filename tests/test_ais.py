"""Annealed importance sampling recovers known normalizers."""

from __future__ import annotations

import math

import pytest
import torch

import vilab.estimators.ais as ais_module
from vilab.estimators.ais import ais, sigmoid_schedule
from vilab.estimators.loglik import delta_stderr
from vilab.samplers.hmc import hmc_step
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


# --- the fused transition and the fast settings --------------------------------------------

MEAN = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
SCALE = torch.tensor([0.5, 1.5, 0.2], dtype=torch.float64)
START = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 2.0)
#: log Z of γ(z) = exp(2 − ½ |(z − m)/s|²): 2 + Σ log s + (D/2) log 2π.
LOG_Z3 = 2.0 + float(SCALE.log().sum()) + 1.5 * math.log(2 * math.pi)


def start_log_prob(z: torch.Tensor) -> torch.Tensor:
    return START.log_prob(z).sum(-1)


def gamma3(z: torch.Tensor) -> torch.Tensor:
    return 2.0 - 0.5 * (((z - MEAN) / SCALE) ** 2).sum(-1)


def start_sample(batch: int = 1):
    return lambda c: START.sample((c, batch))


def test_the_fused_transition_is_hmc_on_the_intermediate_density() -> None:
    """Same random numbers, same proposal, same acceptance as hmc_step on f_β."""
    torch.manual_seed(3)
    z = START.sample((50,))
    eps = torch.full((50,), 0.4, dtype=torch.float64)
    beta = 0.3

    def f(v: torch.Tensor) -> torch.Tensor:
        return (1 - beta) * start_log_prob(v) + beta * gamma3(v)

    state = (z, *ais_module._values_and_grads(start_log_prob, gamma3, z), z)
    torch.manual_seed(4)
    new, prob = ais_module._fused_transition(start_log_prob, gamma3, state, beta, eps, 3)
    torch.manual_seed(4)
    x, lp, g, prob_ref, _ = hmc_step(f, z, eps, 3)
    torch.testing.assert_close(new[0], x)
    torch.testing.assert_close(prob, prob_ref)
    torch.testing.assert_close((1 - beta) * new[1] + beta * new[2], lp)
    torch.testing.assert_close((1 - beta) * new[3] + beta * new[4], g)
    torch.testing.assert_close(new[1], start_log_prob(x))  # the carried parts are exact
    torch.testing.assert_close(new[2], gamma3(x))
    assert 0 < prob.mean() < 1


def test_fused_and_unfused_loops_give_the_same_weights() -> None:
    runs = []
    for fused in (True, False):
        torch.manual_seed(5)
        runs.append(ais(start_log_prob, start_sample(7), gamma3, 5, 12, 2, 0.3, fused=fused).log_w)
    torch.testing.assert_close(runs[0], runs[1])


def test_the_fast_settings_recover_log_z() -> None:
    """Few distributions, two leapfrog steps, a bigger first ε adapted faster."""
    torch.manual_seed(6)
    est = ais(start_log_prob, start_sample(4), gamma3, 500, 30, 2, 0.3, adapt_rate=0.05)
    within(est, LOG_Z3)
    assert est.step_size is not None and est.step_size.shape == (500, 4)


def z_hat(
    num_dists: int = 3, adapt_rate: float = 0.0, eps: float = 0.9, momentum: float = 0.0
) -> tuple[float, float]:
    """(log Ẑ − log Z, its standard error) from 40 000 chains of a short path — Ẑ is
    unbiased whatever the number of distributions, so a wrong weight shows here."""
    torch.manual_seed(7)
    leapfrog = 1 if momentum else 2
    est = ais(
        start_log_prob,
        start_sample(),
        gamma3,
        40_000,
        num_dists,
        leapfrog,
        eps,
        adapt_rate=adapt_rate,
        momentum=momentum,
    )
    return float(est.log_z[0]) - LOG_Z3, float(est.stderr[0])


@pytest.mark.parametrize(
    ("num_dists", "adapt_rate", "momentum"), [(3, 0.0, 0.0), (3, 0.05, 0.0), (20, 0.05, 0.8)]
)
def test_the_weights_are_unbiased_on_a_short_path(
    num_dists: int, adapt_rate: float, momentum: float
) -> None:
    """Fixed ε, a pilot-steered ε, and partial momentum refreshment with its flip."""
    err, se = z_hat(num_dists, adapt_rate, momentum=momentum)
    assert abs(err) < 4 * se and se < 0.05, (err, se)


PLANTED = {
    "cumulative β instead of its step": lambda b0, b, li, lt: b * (lt - li).double(),
    "p₀ left out of the increment": lambda b0, b, li, lt: (b - b0) * lt.double(),
}


@pytest.mark.parametrize("bug", list(PLANTED))
def test_a_planted_wrong_increment_is_caught(bug: str, monkeypatch) -> None:
    monkeypatch.setattr(ais_module, "_increment", PLANTED[bug])
    err, se = z_hat()
    assert abs(err) > 4 * se, (bug, err, se)


def test_a_planted_missing_metropolis_correction_is_caught(monkeypatch) -> None:
    """Accepting every leapfrog end point leaves f_t no longer invariant: biased."""

    def accept_all(log_ratio, proposal, grad):
        return log_ratio.clamp(max=0.0).exp(), torch.ones_like(log_ratio, dtype=torch.bool)

    monkeypatch.setattr(ais_module, "metropolis", accept_all)
    err, se = z_hat(eps=0.9)
    assert abs(err) > 4 * se, (err, se)


def test_each_estimate_is_a_lower_bound_in_expectation() -> None:
    """300 independent 4-chain estimates per image of the linear-Gaussian model at the
    fast settings (a pilot chain steering ε): the weights are unbiased — the mean of all
    1200 weights per image is Z — so the mean of the log-estimates lies below log p(x)
    (Jensen), and near it."""
    torch.manual_seed(8)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    model = LinearGaussianModel(w, torch.zeros(6, dtype=torch.float64), 0.5)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64) * 2
    reps = 300
    xr = x.repeat(reps, 1)  # (reps·3, 6)
    prior = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 1.0)
    est = ais(
        lambda z: prior.log_prob(z).sum(-1),
        lambda c: prior.sample((c, xr.shape[0])),
        lambda z: model.log_joint(xr, z),
        num_chains=4,
        num_dists=300,
        num_leapfrog=2,
        step_size=0.3,
        adapt_rate=0.05,
    )
    exact = model.log_marginal(x)
    gap = est.log_z.view(reps, 3) - exact  # (reps, 3)
    mean, se = gap.mean(0), gap.std(0) / math.sqrt(reps)
    assert (mean < 3 * se).all() and (mean > -0.5).all(), (mean, se)
    log_w = (est.log_w.view(4, reps, 3) - exact).reshape(4 * reps, 3)
    lse, n = torch.logsumexp(log_w, 0), 4 * reps
    z_err = lse - math.log(n)  # log of the mean weight over Z
    z_se = delta_stderr(lse, torch.logsumexp(2 * log_w, 0), n)
    assert (z_err.abs() < 4 * z_se + 0.02).all(), (z_err, z_se)


# --- a VAE: the fast path against importance sampling, the presets of `vilab eval` ----------


@pytest.fixture(scope="module")
def tiny_vae():
    from tiny_vae import TINY_VAE

    from vilab.config import load_train_config
    from vilab.vae import build_vae

    torch.manual_seed(0)
    over = [*TINY_VAE, "posterior.kind=iaf", "posterior.layers=1", "posterior.hidden=[16]"]
    return build_vae(load_train_config(overrides=over)), (torch.rand(12, 784) < 0.2).float()


def test_the_fast_path_agrees_with_importance_sampling_on_a_vae(tiny_vae) -> None:
    """Standardized or not, the fast settings land on the importance-sampled log p(x) of
    a small IAF VAE (its posterior near its q: IS with many samples is accurate), and the
    per-image values come back through ``per_image``."""
    from vilab.evaluation import evaluate, evaluate_ais

    vae, x = tiny_vae
    exact = evaluate(vae, x, 4000, 1000, 12, iwae_k=4, seed=0)["log_px"]
    for standardize in (True, False):
        per: list[torch.Tensor] = []
        res = evaluate_ais(vae, x, num_dists=100, seed=1, standardize=standardize, per_image=per)
        assert per[0].shape == (12,) and res["log_px"] == pytest.approx(float(per[0].mean()))
        assert abs(res["log_px"] - exact) < 4 * res["log_px_stderr"] + 0.05, (standardize, res)
        assert 0.3 < res["accept_rate"] < 0.95 and res["batch"] == 12


def test_the_presets_of_vilab_eval() -> None:
    from vilab.commands.eval import ais_settings
    from vilab.config import EvalRunConfig
    from vilab.evaluation.ais import CLASSIC, FAST

    assert ais_settings(EvalRunConfig()) == FAST
    issue = ais_settings(EvalRunConfig(ais="classic", chains=4, num_dists=1000), run_batch=500)
    assert issue == {**CLASSIC, "chains": 4, "num_dists": 1000, "batch": 100}
    assert ais_settings(EvalRunConfig(leapfrog=3, batch=7))["num_leapfrog"] == 3
    assert CLASSIC["pilots"] == 0 and FAST["pilots"] == 1


def test_the_benchmark_quick_run_and_vilab_eval_on_a_tiny_run(
    tmp_path, keep_threads, capsys, monkeypatch
):
    """``benchmarks/ais.py --quick`` prints old and new with their difference, and
    ``vilab eval --method ais`` records the fast preset (the classic one by option)."""
    import importlib.util
    import json
    from pathlib import Path

    from tiny_vae import SMALL_RUN

    from vilab.cli import main
    from vilab.commands.train import train_vae
    from vilab.config import load_train_config

    run = tmp_path / "run"
    train_vae(load_train_config(overrides=[*SMALL_RUN, "steps=3"]), run, False, tensorboard=False)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ais.py"
    monkeypatch.syspath_prepend(str(path.parent))  # its `import common`
    spec = importlib.util.spec_from_file_location("benchmark_ais", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main([str(run), "--quick", "--images", "6", "--threads", "1"])
    text = capsys.readouterr().out
    assert "| new |" in text and "| old |" in text and "new − old =" in text
    assert out["results"]["old"]["settings"]["fused"] is False
    assert len(out["results"]["new"]["per_image_log_px"]) == 6
    argv = ["eval", str(run), "--method", "ais", "--images", "5", "--num-dists", "3"]
    assert main(argv) == 0
    assert main([*argv, "--ais", "classic", "--chains", "2"]) == 0
    capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())["ais_test"]
    assert (metrics["chains"], metrics["pilots"], metrics["batch"]) == (2, 0, 100)
