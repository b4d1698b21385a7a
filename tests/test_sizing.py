"""Evaluation sized by a target standard error (vilab.estimators.sizing): the exact KL and
the report card draw until their standard errors are under target, within a floor and a
cap; a count given by the user is exactly honoured; long phases announce their cost."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

import vilab.estimators.sizing as sizing_module
from vilab.commands.fit import run_fit
from vilab.config import ConfigError, load_fit_config
from vilab.estimators.kl import exact_kl, pm
from vilab.estimators.sizing import Sizing, draws_needed, run_sized
from vilab.evaluation.fit import evaluate_fit
from vilab.families import FullRankGaussian
from vilab.report import format_card, report_card
from vilab.targets.user import CallableTarget

MU = (0.3, -0.2)


def standard_normal_target() -> CallableTarget:
    """p = N(0, I₂), normalized: log Z = 0."""

    def logp(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)

    return CallableTarget(logp, 2, "std_normal", log_z=0.0)


def gaussian_q(sigma: float, mu: tuple[float, float] = MU) -> FullRankGaussian:
    """q = N(μ, σ² I₂) in float64."""
    q = FullRankGaussian(2).double()
    with torch.no_grad():
        q.params.values["loc"].copy_(torch.tensor(mu, dtype=torch.float64))
        raw = torch.zeros(2, 2, dtype=torch.float64)
        raw.diagonal().fill_(math.log(math.expm1(sigma)))  # the diagonal's softplus⁻¹
        q.params.values["tril"].copy_(raw)
    return q


def gap_moments(sigma: float, mu: tuple[float, float] = MU) -> tuple[float, float]:
    """KL(q‖p) and Var_q(log q − log p) for q = N(μ, σ² I), p = N(0, I):
    g = Σ_d ½(σ² − 1) ε_d² + μ_d σ ε_d + ½ μ_d² − log σ, ε ~ N(0, I), so
    E g = Σ_d ½(σ² + μ_d² − 1) − log σ and Var g = Σ_d ½(σ² − 1)² + σ² μ_d²."""
    kl = sum(0.5 * (sigma**2 + m**2 - 1) - math.log(sigma) for m in mu)
    var = sum(0.5 * (sigma**2 - 1) ** 2 + sigma**2 * m**2 for m in mu)
    return kl, var


def weight_rel_var(sigma: float, mu: tuple[float, float] = MU) -> float:
    """Var_q(w) / (E_q w)² for w = p/q: E_q[w²] = Π_d σ²/√(2σ²−1) · exp(μ_d²/(2σ²−1))
    (σ² > ½), E_q w = 1."""
    c = 2 * sigma**2 - 1
    return math.prod(sigma**2 / math.sqrt(c) * math.exp(m**2 / c) for m in mu) - 1


def test_q_and_its_known_moments_agree() -> None:
    """The helper's q is the N(μ, σ² I) the formulas describe."""
    torch.manual_seed(0)
    q = gaussian_q(0.8)
    with torch.no_grad():
        z, log_q = q.rsample_and_log_prob(200_000)
    assert z.mean(0).tolist() == pytest.approx(list(MU), abs=0.01)
    assert z.std(0).tolist() == pytest.approx([0.8, 0.8], abs=0.01)
    g = log_q - standard_normal_target().log_prob(z)
    kl, var = gap_moments(0.8)
    assert float(g.mean()) == pytest.approx(kl, abs=0.005)
    assert float(g.var()) == pytest.approx(var, rel=0.02)


def test_sized_kl_meets_its_target_and_its_stderr_is_the_spread_over_seeds() -> None:
    """KL(N(μ, 0.64 I) ‖ N(0, I)) = 0.1512 with Var(g) = 0.2128: a target s.e. of 0.005
    needs about Var/τ² = 8,512 draws. Every seed's s.e. is ≤ the target, its estimate
    within 3 s.e. of the truth, the reported s.e. the spread of the estimates over seeds."""
    kl_true, var = gap_moments(0.8)
    tau = 0.005
    sized = Sizing(tau, 1_000, 1_000_000)
    q, p = gaussian_q(0.8), standard_normal_target()
    kls, ses, counts = [], [], []
    for seed in range(30):
        torch.manual_seed(seed)
        est = exact_kl(q, p, 0.0, sizing=sized)
        assert est.kl_stderr <= tau and not est.capped and est.stderr_target == tau
        assert abs(est.kl - kl_true) < 3 * est.kl_stderr
        kls.append(est.kl)
        ses.append(est.kl_stderr)
        counts.append(est.samples)
    need = var / tau**2
    assert need <= statistics.mean(counts) <= 1.3 * need
    spread = statistics.stdev(kls)  # relative s.e. about 1/√(2·29) = 13%
    assert 0.7 < spread / statistics.mean(ses) < 1.35
    assert abs(statistics.mean(kls) - kl_true) < 3 * spread / math.sqrt(len(kls))


def test_a_relative_target_spares_a_large_kl() -> None:
    """rel_stderr: a KL of 4 nats to 1% needs far fewer draws than to 0.001 nats."""
    torch.manual_seed(0)
    q, p = gaussian_q(0.3, (2.0, 1.0)), standard_normal_target()
    kl_true, var = gap_moments(0.3, (2.0, 1.0))
    est = exact_kl(q, p, 0.0, sizing=Sizing(1e-3, 2_000, 10**7, rel_stderr=0.01))
    assert est.stderr_target == pytest.approx(0.01 * est.kl)
    assert est.kl_stderr <= est.stderr_target
    # the pilot already meets 1% of 4 nats; 0.001 nats would take Var/τ² = 1.3 million
    assert est.samples == 2_000 and var / 1e-3**2 > 1_000_000
    assert abs(est.kl - kl_true) < 3 * est.kl_stderr


def test_the_cap_is_honoured_and_said() -> None:
    torch.manual_seed(0)
    est = exact_kl(gaussian_q(0.8), standard_normal_target(), 0.0, sizing=Sizing(1e-5, 500, 3_000))
    assert est.samples == 3_000 and est.capped
    assert est.kl_stderr > 1e-5
    assert "cap of 3,000 draws (kl.max_samples)" in (est.note or "")


def test_a_fixed_count_is_exactly_honoured() -> None:
    torch.manual_seed(0)
    q, p = gaussian_q(0.8), standard_normal_target()
    est = exact_kl(q, p, 0.0, n=1_234, chunk=500)
    assert est.samples == 1_234 and est.stderr_target is None and not est.capped
    card = report_card(q, p, samples=321, log_z=0.0)
    assert card["samples"] == 321 and card["log_z_is_stderr_target"] is None
    # a count given beside a sizing wins
    est = exact_kl(q, p, 0.0, n=777, sizing=Sizing(1e-6, 100, 10**6))
    assert est.samples == 777


def test_rounds_grow_geometrically_to_the_predicted_count() -> None:
    """A known s.e. 1/√n: the pilot predicts n(τ) = n₀(se₀/τ)² = 10,000 for τ = 0.01, and
    one round reaches 1.1 × that; from a small pilot a round at most multiplies the draws
    by 8."""
    drawn: list[int] = []

    def draw(m: int) -> None:
        drawn.append(m)

    def stderr() -> float:
        return 1.0 / math.sqrt(sum(drawn))

    run = run_sized(draw, stderr, Sizing(0.01, 2_000, 10**6), chunk=1_000)
    assert 11_000 <= run.samples <= 11_002 and run.rounds == 2  # (rounding up)
    assert run.stderr <= 0.01 and not run.capped
    assert sum(drawn) == run.samples and max(drawn) <= 1_000
    drawn.clear()
    run = run_sized(draw, stderr, Sizing(0.01, 100, 10**6), chunk=1_000)
    assert run.rounds == 4 and 11_000 <= run.samples <= 11_002  # 100, 800, 6,400, 11,000
    assert draws_needed(0.02, 100, 0.01) == 400


def test_sized_report_card_meets_its_log_z_target() -> None:
    """q = N(μ, 1.44 I) over p = N(0, I): Var(w)/E(w)² = 0.182, so log Ẑ's delta-method
    s.e. reaches τ = 0.005 at about 7,300 draws; log Ẑ lands within 3 s.e. of log Z = 0."""
    torch.manual_seed(1)
    tau, rel_var = 0.005, weight_rel_var(1.2)
    card = report_card(
        gaussian_q(1.2), standard_normal_target(), log_z=0.0, sizing=Sizing(tau, 1_000, 10**6)
    )
    assert card["log_z_is_stderr"] <= tau and card["log_z_is_stderr_target"] == tau
    assert not card["capped"] and "sizing_note" not in card
    assert 0.7 * rel_var / tau**2 < card["samples"] < 2 * rel_var / tau**2
    assert abs(card["log_z_is"]) < 3 * card["log_z_is_stderr"]
    assert card["khat"] < 0.5


def test_report_card_keeps_its_floor_when_khat_says_no_count_helps() -> None:
    """q = N(0, 0.09 I) under p = N(0, I): the weights' tail has Pareto shape 1 − σ² = 0.91,
    infinite variance. Their s.e. never reaches 10⁻⁴; the card stops at the first round
    whose k̂ says so (k̂ of 2,000 draws is noisy: 0.44 for this seed), far below the cap,
    and says why."""
    torch.manual_seed(0)
    q = gaussian_q(0.3, (0.0, 0.0))
    card = report_card(q, standard_normal_target(), log_z=0.0, sizing=Sizing(1e-4, 2_000, 10**7))
    assert card["khat"] >= 0.7 and card["log_z_is_stderr"] > 1e-4
    assert card["samples"] <= 2_000 * 8**2 and not card["capped"]
    assert "k̂" in card["sizing_note"] and "stopped there" in format_card(card)


def test_long_phases_announce_their_cost_and_the_kl_is_printed(monkeypatch, capsys) -> None:
    """Past FEW_SECONDS (here 0) a sized phase prints ``<what>: ~N draws, ~T s`` after its
    pilot; with progress the fit prints ``KL v ± se (s.e., N draws)``."""
    monkeypatch.setattr(sizing_module, "FEW_SECONDS", -1.0)
    torch.manual_seed(0)
    out = evaluate_fit(
        gaussian_q(0.8),
        standard_normal_target(),
        Sizing(0.005, 1_000, 10**6),
        Sizing(0.005, 1_000, 10**6),
        progress=True,
    )
    err = capsys.readouterr().err
    assert "exact KL: ~" in err and "report card: ~" in err and " draws, ~" in err
    line = f"KL {pm(out['kl'], out['kl_stderr'])} (s.e., {out['kl_samples']:,} draws)"
    assert line in err
    assert set(out["evaluation_seconds"]) == {"kl", "report"}
    # without progress: nothing
    evaluate_fit(gaussian_q(0.8), standard_normal_target(), 500, 500)
    assert capsys.readouterr().err == ""


def test_pm_rounds_to_the_stderr_first_digit() -> None:
    assert pm(0.002071, 0.0000912) == "0.00207 ± 0.00009"
    assert pm(19.1895, 0.1838) == "19.2 ± 0.2"
    assert pm(2.13974, 0.0034) == "2.140 ± 0.003"


def test_config_sizes_by_default_and_takes_counts_exactly(tmp_path) -> None:
    """A fit with the defaults is sized (its s.e. under target or the cap said); with
    ``eval_samples`` and ``report_samples`` it draws exactly those."""
    quick = {"steps": 20, "samples": 64, "figures": False, "threads": 1}
    base = ["target.name=banana", "family.kind=full_rank"]
    cfg = load_fit_config(overrides=base, base=quick)
    assert cfg.eval_samples is None and cfg.kl.stderr == 3e-4 and cfg.report.min_samples == 5_000
    m = run_fit(cfg, tmp_path / "sized", progress=False).metrics
    assert m["kl_stderr"] <= m["kl_stderr_target"] or m["kl_capped"]
    assert m["kl_stderr_target"] == pytest.approx(max(1e-3, 0.01 * m["kl"]))
    assert m["kl_samples"] >= 10_000 and m["report"]["samples"] >= 5_000
    assert set(m["evaluation_seconds"]) == {"kl", "report"}
    fixed = load_fit_config(overrides=[*base, "eval_samples=777", "report_samples=333"], base=quick)
    m = run_fit(fixed, tmp_path / "fixed", progress=False).metrics
    assert m["kl_samples"] == 777 and m["kl_stderr_target"] is None and not m["kl_capped"]
    assert m["report"]["samples"] == 333


def test_config_refuses_a_floor_above_the_cap() -> None:
    with pytest.raises(ConfigError, match="min_samples"):
        load_fit_config(overrides=["kl.min_samples=5000", "kl.max_samples=100"])
    with pytest.raises(ConfigError):
        load_fit_config(overrides=["report.min_samples=10"])  # k̂ needs a tail
    with pytest.raises(ValueError):
        Sizing(0.0)
