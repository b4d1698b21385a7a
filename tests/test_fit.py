"""The fitting loop: exact KL estimator, STL, run directory, interruption and exact resume."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch

from vilab.build import target_from_config
from vilab.commands.fit import run_fit
from vilab.config import load_fit_config
from vilab.core.checkpoint import load_checkpoint
from vilab.estimators.kl import exact_kl
from vilab.families import FullRankGaussian
from vilab.targets.base import TargetError
from vilab.targets.user import CallableTarget
from vilab.train.fit import Fitter

MEAN = torch.tensor([0.5, -1.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)


def gaussian_logp(z: torch.Tensor) -> torch.Tensor:
    d = torch.distributions.MultivariateNormal(MEAN.to(z.dtype), COV.to(z.dtype))
    return d.log_prob(z)


def gaussian_target(log_z: float | None = 0.0) -> CallableTarget:
    return CallableTarget(gaussian_logp, 2, "gauss", box=(-9, 9, -11, 9), log_z=log_z)


def set_full_rank(q: FullRankGaussian, mean: torch.Tensor, cov: torch.Tensor) -> None:
    tril = torch.linalg.cholesky(cov)
    raw = tril.clone()
    raw.diagonal().copy_(torch.log(torch.expm1(tril.diagonal())))
    with torch.no_grad():
        q.params.values["loc"].copy_(mean)
        q.params.values["tril"].copy_(raw)


def test_exact_kl_is_zero_when_q_equals_the_gaussian_target() -> None:
    q = FullRankGaussian(2).double()
    set_full_rank(q, MEAN, COV)
    est = exact_kl(q, gaussian_target(), 0.0, n=100_000)
    assert abs(est.kl) < 1e-10 and est.kl_stderr < 1e-10


def test_exact_kl_matches_the_analytic_gaussian_kl() -> None:
    torch.manual_seed(0)
    q = FullRankGaussian(2).double()
    cov_q = torch.tensor([[0.5, -0.1], [-0.1, 0.8]], dtype=torch.float64)
    mean_q = torch.tensor([0.0, 0.3], dtype=torch.float64)
    set_full_rank(q, mean_q, cov_q)
    # the target is given unnormalized (log Z = 1.7 subtracted); exact_kl adds log Z back
    target = CallableTarget(lambda z: gaussian_logp(z) - 1.7, 2, box=(-9, 9, -11, 9))
    est = exact_kl(q, target, -1.7, n=200_000)
    pq = torch.distributions.MultivariateNormal(mean_q, cov_q)
    pp = torch.distributions.MultivariateNormal(MEAN, COV)
    analytic = float(torch.distributions.kl_divergence(pq, pp))
    assert est.kl > 0
    assert abs(est.kl - analytic) < 4 * est.kl_stderr


def test_stl_gradient_vanishes_at_the_optimum_and_plain_does_not() -> None:
    """Roeder et al. 2017: with q = p the STL gradient is exactly zero."""
    torch.manual_seed(0)
    cfg = load_fit_config(
        overrides=["family.kind=full_rank", "objective.stl=true", "dtype=float64"]
    )
    fitter = Fitter(cfg, target=gaussian_target())
    set_full_rank(fitter.family, MEAN, COV)

    def grad_norm(stl: bool) -> float:
        z, log_q = fitter.family.rsample_and_log_prob(64)
        lq = fitter.family.stopped_log_prob(z) if stl else log_q
        loss = (lq - fitter.target.log_prob(z)).mean()
        grads = torch.autograd.grad(loss, list(fitter.family.parameters()))
        return float(sum(g.norm() ** 2 for g in grads).sqrt())

    assert grad_norm(stl=True) < 1e-12
    assert grad_norm(stl=False) > 1e-3


@pytest.mark.parametrize("kind", ["planar", "radial", "sylvester_orthogonal", "stack"])
def test_stl_runs_for_every_flow_and_is_refused_for_uivi(kind) -> None:
    """Planar, radial and Sylvester flows score any z through their inverses."""
    over = [f"family.kind={kind}", "family.layers=2", "objective.stl=true", "samples=64"]
    fitter = Fitter(load_fit_config(overrides=over))
    assert math.isfinite(fitter.train_step().values["bound"])
    with pytest.raises(ValueError, match="stl=true needs a family"):
        Fitter(load_fit_config(overrides=["family.kind=uivi", "objective.stl=true"]))


def small(*extra: str) -> list[str]:
    return [
        "steps=40",
        "samples=128",
        "eval_samples=2000",
        "log_every=5",
        "checkpoint_every=10",
        "family.layers=4",
        *extra,
    ]


def test_fit_writes_a_complete_run_directory(tmp_path) -> None:
    cfg = load_fit_config(overrides=small("target.name=banana", "family.kind=planar"))
    metrics = run_fit(cfg, tmp_path, progress=False).metrics
    for name in [
        "config.yaml",
        "metrics.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "true_density.png",
        "learned_density.png",
        "layers.png",
        "training.png",
        "summary.png",
    ]:
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tensorboard").iterdir())
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ["kl", "kl_stderr", "elbo", "log_z", "steps", "seconds"]:
        assert key in saved
    assert saved["steps"] == 40 and saved["log_z"] == 0.0
    assert saved["kl"] > -3 * saved["kl_stderr"]
    assert saved["kl"] == pytest.approx(saved["log_z"] - saved["elbo"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(5, 41, 5))
    assert metrics["interrupted"] is False


def final_params(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["family"]


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch) -> None:
    overrides = small("target.name=U1", "family.kind=sylvester_orthogonal", "figures=false")
    cfg = load_fit_config(overrides=overrides)
    run_fit(cfg, tmp_path / "straight", progress=False, tensorboard=False)

    original = Fitter.train_step

    def interrupt_at_23(self, **kwargs):
        if self.step == 23:  # Ctrl-C in the middle of step 24: it finishes, then the run stops
            signal.raise_signal(signal.SIGINT)
        return original(self, **kwargs)

    monkeypatch.setattr(Fitter, "train_step", interrupt_at_23)
    m1 = run_fit(cfg, tmp_path / "resumed", progress=False, tensorboard=False).metrics
    assert m1["interrupted"] is True and m1["steps"] == 24
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 24
    monkeypatch.setattr(Fitter, "train_step", original)
    m2 = run_fit(cfg, tmp_path / "resumed", progress=False, resume=True, tensorboard=False).metrics
    assert m2["steps"] == 40 and m2["interrupted"] is False
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert steps == list(range(5, 41, 5))


def test_a_target_that_is_always_nan_stops_with_a_clear_error(monkeypatch, tmp_path) -> None:
    cfg = load_fit_config(overrides=small("target.name=U1", "family.kind=mean_field"))
    target = target_from_config(cfg.target)
    monkeypatch.setattr(target, "log_prob", lambda z, c=None: z.sum(-1) * math.nan)
    with pytest.raises(TargetError, match="target 'U1'"):
        run_fit(cfg, tmp_path, progress=False, target=target, tensorboard=False)


def test_amortized_fit_on_the_banana_family_reports_unseen_contexts(tmp_path) -> None:
    cfg = load_fit_config(
        overrides=small("target.name=banana_family", "family.kind=iaf", "family.hidden=[16]")
    )
    metrics = run_fit(cfg, tmp_path, progress=False, tensorboard=False).metrics
    per = metrics["kl_by_context"]
    assert len(per) == 4
    for row in per:
        assert 0.5 < row["context"][0] < 1.5
        assert row["kl"] > -3 * row["kl_stderr"]
    assert metrics["kl"] == pytest.approx(sum(r["kl"] for r in per) / 4)
    card = metrics["report"]  # one report card per held-out context, and the worst k̂
    assert card["contexts"] == 4 and len(card["by_context"]) == 4
    assert card["khat"] == max(c["khat"] for c in card["by_context"])
    assert [c["context"] for c in card["by_context"]] == [r["context"] for r in per]
    assert card["kl"] == pytest.approx(metrics["kl"])  # the exact KL, per context


def test_user_target_in_five_dimensions(tmp_path) -> None:
    def logp(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(-1)

    cfg = load_fit_config(overrides=small("family.kind=full_rank", "figures=true"))
    unknown = run_fit(
        cfg, tmp_path / "a", progress=False, target=CallableTarget(logp, 5), tensorboard=False
    ).metrics
    assert unknown["kl"] is None and math.isfinite(unknown["elbo"])
    known_z = 2.5 * math.log(2 * math.pi)
    known = run_fit(
        cfg,
        tmp_path / "b",
        progress=False,
        target=CallableTarget(logp, 5, log_z=known_z),
        tensorboard=False,
    ).metrics
    assert known["kl"] > -3 * known["kl_stderr"] and known["log_z"] == known_z
    assert (tmp_path / "b" / "training.png").is_file()
