"""The report card of a fit (vilab.report) and ``vilab compare`` (vilab.commands.compare)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal

from vilab.cli import main
from vilab.commands.compare import compare
from vilab.families.base import Family
from vilab.families.gaussian import StandardNormal
from vilab.report import KL_EXACT, KL_IS, format_card, report_card
from vilab.targets import BUILTIN_TARGETS
from vilab.targets.suite import SUITE, SquareMixture
from vilab.targets.user import CallableTarget

USER_TARGET = '''
import torch

def logp(z):
    """A 10-D Gaussian: N(1, 2²) in z0, N(0, 1) elsewhere; log Z = log (2π)^5 · 2."""
    return -0.5 * (z[..., 1:] ** 2).sum(-1) - 0.5 * (z[..., 0] - 1.0) ** 2 / 4.0
'''
LOG_Z_USER = 5 * math.log(2 * math.pi) + math.log(2.0)


def test_report_card_appears_for_a_10d_user_target(tmp_path, capsys) -> None:
    (tmp_path / "t.py").write_text(USER_TARGET)
    out = tmp_path / "run"
    argv = ["fit", "--target", f"{tmp_path / 't.py'}:logp", "--dim", "10", "--family"]
    argv += ["full_rank", "--steps", "600", "--beta-steps", "0", "--out", str(out)]
    argv += ["--no-progress", "--no-figures"]
    argv += ["--set", "report_samples=5000"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "report card: logp · full_rank (10-D, 5,000 draws of q)" in printed
    assert "Pareto k̂" in printed and "KL(q‖p), importance-sampled" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    card = metrics["report"]
    assert metrics["kl"] is None  # the flat KL is exact or nothing
    assert card["kl_kind"] == KL_IS and card["dim"] == 10 and card["samples"] == 5000
    assert len(card["mean_psis"]) == 10 and len(card["sd_q"]) == 10
    assert card["khat"] < 0.7, card["khat_reading"]
    # the importance-sampled log Z is right within 3 standard errors
    assert abs(card["log_z_is"] - LOG_Z_USER) < 3 * card["log_z_is_stderr"]
    assert card["mean_psis"][0] == pytest.approx(1.0, abs=0.1)
    assert card["sd_psis"][0] == pytest.approx(2.0, abs=0.1)


def _gauss_target(log_z: float = 0.0) -> CallableTarget:
    def logp(z: torch.Tensor) -> torch.Tensor:
        return log_z - 0.5 * (z**2).sum(-1) - math.log(2 * math.pi)

    return CallableTarget(logp, 2, "gauss")


def test_card_of_q_equal_to_the_target_is_exact() -> None:
    """q = p: every weight equals Z (to rounding), so log Ẑ = log Z, ESS = S, KL = 0."""
    torch.manual_seed(0)
    q = StandardNormal(2).double()
    card = report_card(q, _gauss_target(0.7), samples=1000, log_z=0.7)
    assert card["log_z_is"] == pytest.approx(0.7, abs=1e-9)
    assert card["kl"] == pytest.approx(0.0, abs=1e-9) and card["kl_kind"] == KL_EXACT
    assert card["ess_fraction"] == pytest.approx(1.0)
    assert card["khat"] < 0.5 and card["khat_reading"].startswith("good")
    # weights equal to rounding: the Pareto fit fails on them (NaN), the weights are plain
    assert all(math.isfinite(v) for v in card["mean_psis"] + card["sd_psis"])
    text = format_card(card)
    assert "KL(q‖p), exact" in text and "(known 0.700000; z = " in text
    with pytest.raises(ValueError, match="at least 100 draws"):
        report_card(q, _gauss_target(), samples=10)


def _fake_run(path: Path, target: str, family: str, seed: int, kl: float, khat: float) -> Path:
    path.mkdir(parents=True)
    card = {
        "kl": kl,
        "kl_stderr": 0.01,
        "kl_kind": KL_EXACT,
        "elbo": -kl,
        "elbo_stderr": 0.01,
        "log_z_is": 0.0,
        "log_z_is_stderr": 0.001,
        "khat": khat,
        "ess_fraction": 0.5,
        "reference": {"mean_error_q": 0.05, "sd_error_q": 0.2},
    }
    metrics = {"target": target, "family": family, "steps": 10, "seconds": 1.0, "report": card}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.yaml").write_text(f"seed: {seed}\n")
    return path


def test_compare_tables_runs_and_summarizes_seeds(tmp_path, capsys) -> None:
    _fake_run(tmp_path / "sweep" / "a0", "funnel2", "mean_field", 0, 0.30, 0.9)
    _fake_run(tmp_path / "sweep" / "a1", "funnel2", "mean_field", 1, 0.50, 0.8)
    one = _fake_run(tmp_path / "b", "funnel2", "full_rank", 0, 0.10, 0.4)
    text, rows = compare([tmp_path / "sweep", one])
    assert len(rows) == 4  # three runs and one summary of two seeds
    summary = rows[-1]
    assert summary["seed"] == "2 seeds" and summary["kl"] == pytest.approx(0.4)
    assert summary["kl_stderr"] == pytest.approx(0.1)  # sd 0.1414 / √2
    assert summary["khat"] == 0.9  # the worst seed
    assert "| funnel2 | mean_field | 2 seeds | 0.4000 ± 0.1000 |" in text
    assert "| funnel2 | full_rank | 0 | 0.1000 ± 0.0100 |" in text
    figure = tmp_path / "cmp.png"
    assert main(["compare", str(tmp_path / "sweep"), str(one), "--figure", str(figure)]) == 0
    assert figure.stat().st_size > 0 and "| funnel2 |" in capsys.readouterr().out


def test_compare_shows_a_vae_run_with_its_test_log_likelihood(tmp_path) -> None:
    run = tmp_path / "vae"
    run.mkdir()
    test = {"log_px": -95.4321, "log_px_stderr": 0.0312, "khat": {"median": 0.41}}
    (run / "metrics.json").write_text(json.dumps({"steps": 30, "seconds": 2.0, "test": test}))
    config = "seed: 3\ndata: {name: binarized_mnist}\nposterior: {kind: iaf}\n"
    (run / "config.yaml").write_text(config)
    text, rows = compare([run])
    assert rows[0]["kind"] == "vae" and rows[0]["family"] == "iaf"
    assert "| binarized_mnist | iaf | 3 | -95.43 ± 0.03 | 0.41 | 30 |" in text


def test_compare_refuses_what_is_not_a_run(tmp_path, capsys) -> None:
    assert main(["compare", str(tmp_path / "missing"), "--no-figure"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--no-figure"]) == 2
    assert "no metrics.json" in capsys.readouterr().err


class _Exact(Family):
    """A user's q given by a sampler and its log-density (float64)."""

    def __init__(self, dim: int, sample, log_prob) -> None:
        super().__init__()
        self.dim, self._sample, self._log_prob = dim, sample, log_prob

    def rsample_and_log_prob(self, n, context=None):
        z = self._sample(n)
        return z, self._log_prob(z)

    def log_prob(self, z, context=None):
        return self._log_prob(z)


def _wider_q(name: str, target) -> _Exact:
    """A q slightly wider than the suite target p (so the weights p/q are bounded)."""
    d = torch.float64
    if name.startswith("funnel"):
        v_law = torch.distributions.Normal(torch.tensor(0.0, dtype=d), torch.tensor(3.3, dtype=d))

        def sample(n):
            v = v_law.sample((n, 1))
            return torch.cat([v, torch.exp(0.5 * v) * torch.randn(n, target.dim - 1, dtype=d)], -1)

        def log_prob(z):
            v = z[..., 0]
            return v_law.log_prob(v) + target.log_prob(z) - _log_pv(v)  # same x | v as p

        return _Exact(target.dim, sample, log_prob)
    if name.startswith("gaussian"):
        law = MultivariateNormal(
            target.mu.double(),
            covariance_matrix=(1 + 0.5 / target.dim**0.5) * target.covariance.double(),
        )
        return _Exact(target.dim, lambda n: law.sample((n,)), law.log_prob)
    if name == "mixture":
        wide = SquareMixture(scale=0.6)
        return _Exact(2, wide.sample, wide.log_prob)
    if name == "banana":
        cov = 1.44 * torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=d)
        law = MultivariateNormal(torch.zeros(2, dtype=d), covariance_matrix=cov)

        def sample(n):
            x = law.sample((n,))
            return torch.stack([x[:, 0], x[:, 1] - (x[:, 0] ** 2 + 1.0)], -1)

        def log_prob(z):  # the map z ↦ x has unit Jacobian
            return law.log_prob(torch.stack([z[..., 0], z[..., 1] + z[..., 0] ** 2 + 1.0], -1))

        return _Exact(2, sample, log_prob)
    raise AssertionError(name)


def _log_pv(v: torch.Tensor) -> torch.Tensor:
    return -0.5 * (v / 3.0) ** 2 - math.log(3.0) - 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("name", [n for n in SUITE if n != "logistic_breast_cancer"])
def test_importance_sampled_log_z_within_3_se_on_every_normalized_suite_target(name) -> None:
    """With a q that covers p, the card's log Ẑ lies within 3 standard errors of the known
    log Z = 0, k̂ reads good, and the PSIS-corrected moments match the reference."""
    torch.manual_seed(1)
    target = BUILTIN_TARGETS[name]()
    assert target.log_z == 0.0
    card = report_card(_wider_q(name, target), target, samples=20_000, log_z=0.0)
    assert abs(card["log_z_is"]) < 3 * card["log_z_is_stderr"], card
    assert card["khat"] < 0.5, card["khat_reading"]
    assert card["reference"]["mean_error_psis"] < 0.1
    # the sd of a funnel's x is the root of a log-normal mean: slow to estimate
    assert card["reference"]["sd_error_psis"] < (0.2 if name.startswith("funnel") else 0.1)
