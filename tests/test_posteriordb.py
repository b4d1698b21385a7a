"""posteriordb's reader (no Stan needed) and the scores against reference draws."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from vilab.estimators.reference import (
    moment_errors,
    reference_mcse,
    w1_vs_reference,
    wasserstein1,
)
from vilab.targets.posteriordb import (
    ENV,
    find_database,
    load_posterior,
    posterior_names,
    posteriordb_target,
)

DB = os.environ.get(ENV) or "/work/shared/posteriordb"
needs_db = pytest.mark.skipif(
    not Path(DB).is_dir(), reason="no posteriordb copy (set POSTERIOR_DB_PATH)"
)
CENTERED = "eight_schools-eight_schools_centered"


@needs_db
def test_the_database_is_found_from_its_folder_or_its_parent() -> None:
    inner = find_database(DB)
    assert (inner / "posteriors").is_dir()
    assert find_database(inner.parent) == inner == find_database(inner)
    names = posterior_names(DB)
    assert CENTERED in names and len(names) > 100


def test_without_a_path_or_the_variable_the_message_says_how_to_get_one(monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ValueError, match="git clone https://github.com/stan-dev/posteriordb"):
        find_database()
    with pytest.raises(ValueError, match="not a posteriordb database"):
        find_database("/nonexistent/folder")


@needs_db
def test_an_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match=f"did you mean '{CENTERED}'"):
        load_posterior("eight_schools-eight_schools_centred", DB)


@needs_db
def test_eight_schools_code_data_and_reference_draws(monkeypatch) -> None:
    monkeypatch.setenv(ENV, DB)
    post = load_posterior(CENTERED)
    assert post.model_name == "eight_schools_centered"
    assert "theta ~ normal(mu, tau)" in post.code.replace("  ", " ")
    assert post.data["J"] == 8 and post.data["y"][0] == 28
    ref = post.reference
    assert ref is not None and post.reference_name == "eight_schools-eight_schools_noncentered"
    assert ref.draws.shape == (10_000, 10) and ref.chains == 10 and ref.draws.dtype == np.float64
    assert set(ref.names) == {"mu", "tau", *(f"theta[{i}]" for i in range(1, 9))}
    mu_tau = ref.columns(["mu", "tau"])
    assert 3.5 < mu_tau[:, 0].mean() < 5.0 and (mu_tau[:, 1] > 0).all()
    assert ref.info["diagnostics"]["ndraws"] == 10_000
    assert "stan benchmark" in post.keywords


@needs_db
def test_a_declared_reference_whose_file_is_absent_is_none_with_a_note() -> None:
    with pytest.warns(UserWarning, match="declared but its draws are absent"):
        post = load_posterior("arma-arma11", DB)
    assert post.reference is None and "arma-arma11" in post.note


@needs_db
def test_a_posterior_with_no_reference_declared() -> None:
    post = load_posterior("GLMM_data-GLMM1_model", DB)
    assert post.reference is None and post.reference_name is None and post.note is None


@needs_db
def test_the_target_is_built_by_from_stan_with_the_reference_attached(monkeypatch) -> None:
    calls = {}  # (a real build compiles: tests/test_stan.py)

    def from_stan(code, data, name):
        calls.update(code=code, data=data, name=name)
        return types.SimpleNamespace()

    monkeypatch.setitem(
        sys.modules, "vilab.targets.stan", types.SimpleNamespace(from_stan=from_stan)
    )
    target = posteriordb_target(f"posteriordb:{CENTERED}", DB)
    assert calls["name"] == CENTERED and calls["data"]["J"] == 8
    assert target.reference_draws.draws.shape == (10_000, 10)


# --- the scores, as maths ------------------------------------------------------------


def test_w1_of_identical_sets_is_zero_and_of_a_shift_is_the_shift() -> None:
    x = np.random.default_rng(0).normal(size=(50, 3))
    assert wasserstein1(x, x) == pytest.approx(0.0, abs=1e-12)
    shift = np.array([0.3, -0.4, 0.0])  # |shift| = 0.5: moving every point is optimal
    assert wasserstein1(x, x + shift) == pytest.approx(0.5, rel=1e-9)
    y = np.random.default_rng(1).normal(size=(40, 1))
    assert wasserstein1(y, y + 2.0) == pytest.approx(2.0, rel=1e-9)


@pytest.mark.parametrize(("n", "m"), [(30, 30), (20, 60), (45, 15), (20, 70), (25, 40)])
def test_w1_matches_scipy_in_one_dimension(n, m) -> None:
    rng = np.random.default_rng(n + m)
    x, y = rng.normal(size=n), rng.gamma(2.0, size=m)
    assert wasserstein1(x, y) == pytest.approx(scipy.stats.wasserstein_distance(x, y), rel=1e-7)


def test_w1_by_assignment_equals_the_linear_program(monkeypatch) -> None:
    from vilab.estimators import reference

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(10, 4)), rng.standard_t(3, size=(50, 4))
    by_assignment = wasserstein1(x, y)
    monkeypatch.setattr(reference, "MAX_ASSIGNMENT", 0)
    assert wasserstein1(x, y) == pytest.approx(by_assignment, rel=1e-9)


def test_moment_errors_on_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200_000, 2)) * np.array([1.0, 2.0])
    q = rng.normal(size=(200_000, 2)) * np.array([1.5, 2.0]) + np.array([0.5, -1.0])
    e_mean, e_sd = moment_errors(q, ref)
    np.testing.assert_allclose(e_mean, [0.5, 0.5], atol=0.02)
    np.testing.assert_allclose(e_sd, [0.5, 0.0], atol=0.02)
    # importance weights p/q make q's draws p's: the weighted errors vanish
    log_w = scipy.stats.norm(0, [1.0, 2.0]).logpdf(q).sum(-1)
    log_w -= scipy.stats.norm([0.5, -1.0], [1.5, 2.0]).logpdf(q).sum(-1)
    e_mean_w, e_sd_w = moment_errors(q, ref, log_w)
    assert e_mean_w.max() < 0.03 and e_sd_w.max() < 0.03
    # equal weights are the plain moments (the weighted sd without Bessel's correction)
    e_mean_1, e_sd_1 = moment_errors(q, ref, np.zeros(len(q)))
    np.testing.assert_allclose(e_mean_1, e_mean, rtol=1e-9)
    np.testing.assert_allclose(e_sd_1, e_sd, atol=1e-5)


def test_reference_mcse_follows_the_effective_sample_size_of_its_chains() -> None:
    # 4 AR(1) chains of 5,000 draws, x_t = ρ x_{t−1} + √(1−ρ²) ε_t (stationary N(0, 1)):
    # ESS of the mean N (1−ρ)/(1+ρ), so MCSE(mean) = √((1+ρ)/((1−ρ) N)) in sds; iid draws
    # (ρ = 0) give MCSE(mean) = 1/√N and MCSE(sd) = 1/√(2N) for a normal
    rng = np.random.default_rng(0)
    chains, n = 4, 5_000
    for rho in (0.0, 0.8):
        x = np.empty((chains, n))
        x[:, 0] = rng.normal(size=chains)
        for t in range(1, n):
            x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * rng.normal(size=chains)
        draws = np.column_stack([x.reshape(-1), 3.0 * x.reshape(-1) + 1.0])
        mean, sd = reference_mcse(draws, chains)
        expected = np.sqrt((1 + rho) / ((1 - rho) * chains * n))
        np.testing.assert_allclose(mean, expected, rtol=0.15)  # the scale does not matter
        if rho == 0.0:
            np.testing.assert_allclose(sd, 1 / np.sqrt(2 * chains * n), rtol=0.15)
    # chains that do not split evenly are read as one
    assert reference_mcse(draws[:-1], chains)[0].shape == (2,)


def test_pathfinder_score_a_perfect_q_sits_on_the_floor_and_a_shifted_one_above() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(1_000, 2))
    good = w1_vs_reference(rng.normal(size=(500, 2)), ref, reference_size=300)
    bad = w1_vs_reference(rng.normal(size=(500, 2)) + 1.0, ref, reference_size=300)
    assert good.draws == 100 and good.reference_size == 300 and good.repeats == 10
    assert 0 < good.w1_se < 0.1 * good.w1 and 0 < good.floor_se < 0.1 * good.floor
    assert good.w1 < 1.5 * good.floor and bad.w1 > good.floor + 1.0
    with pytest.raises(ValueError, match="needs 100 draws of q"):
        w1_vs_reference(ref[:50], ref)
    with pytest.raises(ValueError, match="repeats must be ≥ 1"):
        w1_vs_reference(ref, ref, repeats=0)


def test_pathfinder_score_averaged_over_splits_scatters_less_than_one_split() -> None:
    # a perfect q in 2-D: one split's W1 / floor scatters by ~±10 %, the mean of ten ~±3 %
    rng = np.random.default_rng(5)
    ref, q = rng.normal(size=(4_000, 2)), rng.normal(size=(4_000, 2))

    def ratios(repeats: int) -> np.ndarray:
        scores = [w1_vs_reference(q, ref, seed=k, repeats=repeats) for k in range(12)]
        return np.array([s.w1 / s.floor for s in scores])

    one, ten = ratios(1), ratios(10)
    assert one.std() > 1.8 * ten.std() and abs(ten.mean() - 1.0) < 0.05


def test_pathfinder_score_of_psis_resampled_draws_corrects_a_wide_q() -> None:
    # q = N(0, 2²) for p = N(0, 1) in 2-D: drawn as they are, q's draws sit far above the
    # floor; resampled by the exact log-weights log p − log q they are draws of p (SIR)
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(1_100, 2))
    x = 2.0 * rng.normal(size=(20_000, 2))
    log_w = scipy.stats.norm(0, 1).logpdf(x).sum(-1) - scipy.stats.norm(0, 2).logpdf(x).sum(-1)
    plain = w1_vs_reference(x, ref)
    resampled = w1_vs_reference(x, ref, log_w=log_w)
    assert resampled.floor == plain.floor  # the same split of the reference
    assert plain.w1 > 1.5 * plain.floor and resampled.w1 < 1.25 * resampled.floor
    # a single draw carrying all the weight: 100 copies of it
    one = w1_vs_reference(x, ref, log_w=np.where(np.arange(len(x)) == 7, 0.0, -np.inf))
    assert one.w1 == pytest.approx(np.linalg.norm(ref[None] - x[7], axis=-1).mean(), rel=0.3)
    with pytest.raises(ValueError, match="20000 log-weights"):
        w1_vs_reference(x, ref, log_w=log_w[:10])
    with pytest.raises(ValueError, match="not all −inf"):
        w1_vs_reference(x, ref, log_w=np.full(len(x), -np.inf))


@needs_db
def test_the_report_card_scores_q_against_reference_draws_on_the_constrained_scale() -> None:
    pytest.importorskip("pyro")
    import torch
    from test_pyro import eight_schools

    from vilab.build import build_family
    from vilab.report import format_card, report_card
    from vilab.targets.pyro import from_pyro

    target = from_pyro(eight_schools)
    target.reference_draws = load_posterior(CENTERED, DB).reference
    torch.manual_seed(0)
    card = report_card(build_family("mean_field", target.dim), target, samples=400)
    r = card["reference_draws"]
    assert r["names"] == list(target.param_names()) and r["w1_draws"] == 100
    assert all(np.isfinite(r[k]) for k in ("mean_error_q", "sd_error_psis", "w1", "w1_floor"))
    assert 0 < r["w1_floor"] < r["w1"]  # an untrained q is far from the posterior
    assert "W1" in format_card(card)
    assert r["sd_error_psis_at"] in r["names"] and 0 < r["sd_error_psis_ref_mcse"] < 0.1
    assert f"at {r['sd_error_psis_at']}, reference's own MCSE" in format_card(card)


@needs_db
def test_vilab_fit_posteriordb_option_reaches_the_builder(monkeypatch) -> None:
    from vilab.build import target_from_config, target_kind
    from vilab.cli.parser import _fit_overrides, build_parser
    from vilab.config import load_fit_config

    monkeypatch.delenv(ENV, raising=False)
    args = build_parser().parse_args(
        ["fit", "--target", f"posteriordb:{CENTERED}", "--posteriordb", DB]
    )
    cfg = load_fit_config(None, _fit_overrides(args))
    assert cfg.target.posteriordb == DB and target_kind(cfg.target.name) == "posteriordb"
    fake = types.SimpleNamespace(from_stan=lambda code, data, name: types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "vilab.targets.stan", fake)  # (compiling: test_stan.py)
    assert target_from_config(cfg.target).posterior.name == CENTERED
    cfg.target.name = "posteriordb:eight_schools"
    with pytest.raises(ValueError, match="did you mean"):
        target_from_config(cfg.target)
