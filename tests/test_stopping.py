"""Stopping on convergence (vilab.train.stopping): the rule on streams whose answer is known,
its checkpoint state, and a fit that stops by it and says why."""

from __future__ import annotations

import json
import math
import random
import signal

import pytest
import torch

from vilab.commands.fit import run_fit
from vilab.config import StopConfig, load_fit_config
from vilab.train.fit import Fitter
from vilab.train.stopping import Convergence

NOISE = 0.05  # sd of one step's bound; a window mean of 100 steps has s.e. 0.005


def feed(rule: Convergence, bound, steps: int, seed: int = 0, noise: float = NOISE) -> int | None:
    """Feeds ``bound(step, lr_scale) + noise`` at every step, window by window as a fit
    does; the step it stops at, or None."""
    rng = random.Random(seed)
    n = total = total_sq = 0.0
    for step in range(1, steps + 1):
        v = bound(step, rule.lr_scale) + rng.gauss(0.0, noise)
        n, total, total_sq = n + 1, total + v, total_sq + v * v
        if step % rule.settings.window == 0:
            rule.observe(step, int(n), total, total_sq)
            n = total = total_sq = 0.0
            if rule.reason is not None:
                return step
    return None


def test_a_settled_bound_stops_after_the_least_number_of_windows() -> None:
    s = StopConfig()
    rule = Convergence(s)
    stop = feed(rule, lambda step, lr: 1.0, 20_000)
    least = (5 + 3 * s.reductions) * s.window  # the module docstring's bound
    assert stop == least and rule.reductions_done == s.reductions
    assert rule.lr_scale == pytest.approx(s.lr_factor**s.reductions)
    assert f"converged at step {least}" in rule.reason


def test_a_bound_too_noisy_to_judge_never_stalls() -> None:
    """A flat bound whose steps have sd 50 (window s.e. 5, se_Δ 5 > ``max_se`` = 1)
    neither lowers the learning rate nor stops; the same stream with ``max_se`` = 100
    stops at the least number of windows (so ``max_se`` alone is what keeps it going)."""
    rule = Convergence(StopConfig())
    assert feed(rule, lambda step, lr: 1.0, 20_000, noise=50.0) is None
    assert rule.reductions_done == 0 and rule.lr_scale == 1.0
    s = StopConfig(max_se=100.0)
    least = (5 + 3 * s.reductions) * s.window
    assert feed(Convergence(s), lambda step, lr: 1.0, 20_000, noise=50.0) == least


def test_a_bound_that_settles_stops_only_after_it_has_settled() -> None:
    """1 − e^{−t/τ}: the rule stops once the gain over the last 200 steps,
    about 200/τ · e^{−t/τ}, is within 2 s.e. of a half-difference (2 × ½ √(4 × 0.005²) =
    0.01), so never while it is larger than 0.01: what is left to gain, e^{−t/τ}, is then
    at most a few hundredths."""
    tau = 800.0
    rule = Convergence(StopConfig())
    stop = feed(rule, lambda step, lr: 1.0 - math.exp(-step / tau), 50_000)
    assert stop is not None and 200 / tau * math.exp(-stop / tau) < 0.01
    assert math.exp(-stop / tau) < 0.04


@pytest.mark.parametrize("seed", range(5))
def test_an_improvement_larger_than_its_noise_is_never_stopped(seed) -> None:
    """A steady rise of 0.15 nats per 1000 steps: over two windows it gains 0.03, six times
    the half-difference's standard error (½ √(4 × 0.005²) = 0.005)."""
    rule = Convergence(StopConfig())
    assert feed(rule, lambda step, lr: step * 1.5e-4, 20_000, seed) is None
    assert rule.reductions_done == 0


def test_a_late_improvement_after_a_short_plateau_is_reached() -> None:
    """A plateau of 400 steps (too short to act on), then a rise that exceeds its noise:
    the rule is still running when it comes, and runs on through it."""
    rule = Convergence(StopConfig())

    def bound(step: int, lr: float) -> float:
        return 0.0 if step < 400 else (step - 400) * 1.5e-4

    assert feed(rule, bound, 6_000) is None


def test_a_lower_learning_rate_that_pays_is_kept_going() -> None:
    """The bound's floor depends on the step size: each reduction raises it, which the rule
    sees as progress, so it stops later than on a bound that a reduction leaves flat."""
    s = StopConfig()
    flat = feed(Convergence(s), lambda step, lr: 1.0, 20_000)
    rule = Convergence(s)
    stop = feed(rule, lambda step, lr: -0.5 * lr, 20_000)
    assert flat == (5 + 3 * s.reductions) * s.window
    assert stop is not None and stop > flat and rule.reductions_done == s.reductions


def test_the_state_resumes_to_the_same_decisions() -> None:
    s = StopConfig()
    whole = Convergence(s)
    stop = feed(whole, lambda step, lr: 1.0 - math.exp(-step / 500.0), 30_000, seed=3)
    first = Convergence(s)
    feed(first, lambda step, lr: 1.0 - math.exp(-step / 500.0), 700, seed=3)
    resumed = Convergence(s)  # through JSON, as a checkpoint carries it
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed == first
    rng = random.Random(3)
    n = total = total_sq = 0.0
    for t in range(1, 30_001):
        v = 1.0 - math.exp(-t / 500.0) + rng.gauss(0.0, NOISE)
        if t <= 700:
            continue  # (what the first part saw)
        n, total, total_sq = n + 1, total + v, total_sq + v * v
        if t % s.window == 0:
            resumed.observe(t, int(n), total, total_sq)
            n = total = total_sq = 0.0
            if resumed.reason is not None:
                break
    assert resumed.reason == whole.reason and resumed.stopped_at == stop


def test_steps_given_means_exactly_steps_and_auto_is_the_default() -> None:
    assert load_fit_config().stop.auto
    assert not load_fit_config(overrides=["steps=50"]).stop.auto
    assert load_fit_config(overrides=["steps=50", "stop.auto=true"]).stop.auto


#: a short fit of the banana (log Z = 0), evaluated cheaply
QUICK = ["target.name=banana", "eval_samples=1000", "report_samples=500", "figures=false",
         "threads=1"]  # fmt: skip


def test_a_fit_stops_on_convergence_and_says_why(tmp_path) -> None:
    """A full-rank Gaussian on the banana: its bound settles (below 0: q cannot be exact),
    and the fit stops there and says so; ``steps`` given runs exactly that many."""
    over = [*QUICK, "family.kind=full_rank", "samples=200", "stop.anneal_steps=0",
            "stop.window=50", "optim.lr=0.02"]  # fmt: skip
    cfg = load_fit_config(overrides=over)
    m = run_fit(cfg, tmp_path / "auto", progress=False, tensorboard=False).metrics
    assert m["stop"] == "converged" and m["stopped_at_step"] < cfg.steps
    assert f"converged at step {m['stopped_at_step']}" in m["stop_reason"]
    exact = load_fit_config(overrides=[*over, "steps=120"])
    m = run_fit(exact, tmp_path / "exact", progress=False, tensorboard=False).metrics
    assert m["stop"] == "steps" and m["stopped_at_step"] == 120


def test_an_interrupted_fit_resumes_to_the_same_stop(tmp_path, monkeypatch) -> None:
    """SIGINT mid-window; the resumed fit stops at the same step with the same family."""
    over = [*QUICK, "family.kind=mean_field", "samples=100", "stop.anneal_steps=20",
            "stop.window=20", "checkpoint_every=50"]  # fmt: skip
    cfg = load_fit_config(overrides=over)
    straight = run_fit(cfg, tmp_path / "whole", progress=False, tensorboard=False)
    whole = straight.metrics
    assert whole["stop"] == "converged"
    original = Fitter.train_step

    def interrupt(self, **kwargs):
        if self.step == 137:  # mid-window, after the rule has seen windows
            signal.raise_signal(signal.SIGINT)
        return original(self, **kwargs)

    monkeypatch.setattr(Fitter, "train_step", interrupt)
    part = run_fit(cfg, tmp_path / "resumed", progress=False, tensorboard=False).metrics
    assert part["interrupted"] and part["stop"] == "interrupted"
    monkeypatch.setattr(Fitter, "train_step", original)
    done = run_fit(cfg, tmp_path / "resumed", resume=True, progress=False, tensorboard=False)
    m = done.metrics
    assert (m["stopped_at_step"], m["stop_reason"]) == (
        whole["stopped_at_step"],
        whole["stop_reason"],
    )
    a, b = straight.family.state_dict(), done.family.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="finished run .*converged at step"):
        run_fit(cfg, tmp_path / "resumed", resume=True, progress=False, tensorboard=False)
