"""VAEs: every amortized posterior builds and trains, exact resume, run directory, eval."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from tiny_vae import TINY_VAE

from vilab.cli import main
from vilab.commands.train import train_vae
from vilab.config import load_train_config
from vilab.core.checkpoint import load_checkpoint
from vilab.evaluation import evaluate
from vilab.train.vae import VAETrainer
from vilab.vae import build_vae, vae_objective

SMALL = [
    *TINY_VAE,
    "posterior.hidden=[16]",
    "eval.samples=20",
    "eval.chunk=10",
    "eval.batch=200",
    "eval.valid_images=100",
    "eval.valid_samples=10",
]

POSTERIORS = [
    "mean_field",
    "planar",
    "radial",
    "iaf",
    "sylvester_orthogonal",
    "sylvester_householder",
    "sylvester_triangular",
]


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_every_posterior_trains_with_every_objective(posterior: str, objective: str) -> None:
    torch.manual_seed(0)
    cfg = load_train_config(
        overrides=[
            *SMALL,
            f"posterior.kind={posterior}",
            f"objective.kind={objective}",
            "objective.samples=3",
        ]
    )
    vae = build_vae(cfg)
    x = (torch.rand(8, 784) < 0.3).float()
    obj = vae_objective(vae, x, cfg.objective)
    assert obj.value.shape == (8,) and torch.isfinite(obj.value).all()
    obj.surrogate.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(
    "extra",
    [
        ["objective.stl=true"],
        ["objective.kind=dreg", "objective.samples=4"],
        ["objective.free_bits=0.1", "objective.beta_steps=10"],
    ],
)
def test_gradient_estimators_run(extra: list[str]) -> None:
    cfg = load_train_config(overrides=[*SMALL, *extra])
    vae = build_vae(cfg)
    obj = vae_objective(vae, (torch.rand(8, 784) < 0.3).float(), cfg.objective, step=5)
    obj.surrogate.backward()
    assert all(p.grad is not None for p in vae.parameters())


def test_bad_objective_combinations_are_refused() -> None:
    from vilab.config import ConfigError

    with pytest.raises(ConfigError, match="apply to kind=elbo"):
        load_train_config(overrides=["objective.kind=iwae", "objective.stl=true"])
    with pytest.raises(ConfigError, match="mnist_gray"):
        load_train_config(overrides=["likelihood=gaussian"])
    cfg = load_train_config(overrides=[*SMALL, "posterior.kind=planar", "objective.free_bits=1"])
    with pytest.raises(ValueError, match="free_bits needs a mean_field"):
        vae_objective(build_vae(cfg), torch.zeros(2, 784), cfg.objective)
    cfg = load_train_config(overrides=[*SMALL, "posterior.kind=planar", "objective.stl=true"])
    obj = vae_objective(build_vae(cfg), torch.zeros(2, 784), cfg.objective)
    assert torch.isfinite(obj.surrogate)  # planar flows score any z through their inverses


def test_training_improves_the_bound_on_tiny() -> None:
    cfg = load_train_config(overrides=[*SMALL, "steps=150"])
    trainer = VAETrainer(cfg)
    first = trainer.train_step().values["bound"]
    for _ in range(149):
        last = trainer.train_step().values["bound"]
    assert last > first + 100


@pytest.mark.parametrize("ema", [[], ["optim.ema=0.9"]], ids=["plain", "ema"])
def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path, monkeypatch, ema) -> None:
    cfg = load_train_config(
        overrides=[
            *SMALL,
            "steps=30",
            "eval_every=10",
            "checkpoint_every=5",
            "final_eval=false",
            "posterior.kind=iaf",
            *ema,
        ]
    )
    train_vae(cfg, tmp_path / "straight", progress=False)
    original = VAETrainer.train_step

    def stop_at_17(self, **kwargs):
        if self.step == 17:  # Ctrl-C twice in the middle of step 18: it stops at once
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return original(self, **kwargs)

    monkeypatch.setattr(VAETrainer, "train_step", stop_at_17)
    m = train_vae(cfg, tmp_path / "resumed", progress=False)
    assert m["interrupted"] and m["steps"] == 17
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 15  # the last one
    monkeypatch.setattr(VAETrainer, "train_step", original)
    train_vae(cfg, tmp_path / "resumed", progress=False, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 30
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert a["best"] == b["best"]
    assert ("ema" in a) == bool(ema)
    for k in a.get("ema", {}):
        torch.testing.assert_close(a["ema"][k], b["ema"][k], rtol=0, atol=0)


def test_the_moving_average_of_the_weights_is_what_gets_evaluated(tmp_path) -> None:
    """θ̄ ← δ θ̄ + (1 − δ) θ after each update, starting from the first update's θ; the
    validation, best.pt and the test use θ̄."""
    cfg = load_train_config(overrides=[*SMALL, "optim.ema=0.75", "steps=3", "eval_every=3"])
    trainer = VAETrainer(cfg)
    thetas = []
    for _ in range(3):
        trainer.train_step()
        thetas.append({k: v.detach().clone() for k, v in trainer.vae.named_parameters()})
    for k, v in trainer.eval_vae.named_parameters():
        expected = 0.75 * (0.75 * thetas[0][k] + 0.25 * thetas[1][k]) + 0.25 * thetas[2][k]
        torch.testing.assert_close(v, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(v, thetas[2][k])
    train_vae(cfg, tmp_path, progress=False, tensorboard=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    for k, v in best.items():
        assert torch.equal(v, state["ema"][f"module.{k}"]), k


def test_run_directory_and_eval_command(tmp_path, capsys) -> None:
    cfg = load_train_config(overrides=[*SMALL, "steps=40", "eval_every=20", "latent_dim=2"])
    metrics = train_vae(cfg, tmp_path, progress=False)
    for name in [
        "config.yaml",
        "metrics.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "best.pt",
        "samples.png",
        "reconstructions.png",
        "training.png",
        "latent.png",
        "manifold.png",
        "latent.gif",
    ]:
        assert (tmp_path / name).is_file(), name
    test = metrics["test"]
    assert test["elbo"] <= test["iwae_10"] + 0.5 and test["iwae_10"] <= test["log_px"] + 0.5
    assert test["log_px_stderr"] > 0
    assert main(["eval", str(tmp_path), "--samples", "30", "--chunk", "7"]) == 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval_test"]["samples"] == 30 and saved["test"] == test
    assert json.loads(capsys.readouterr().out)["samples"] == 30


def test_evaluate_is_consistent_across_chunk_and_batch_sizes() -> None:
    cfg = load_train_config(overrides=SMALL)
    vae = build_vae(cfg)
    x = (torch.rand(64, 784) < 0.2).float()
    torch.manual_seed(0)
    a = evaluate(vae, x, samples=2000, chunk=2000, batch=64)
    torch.manual_seed(1)
    b = evaluate(vae, x, samples=2000, chunk=130, batch=17)
    se = (a["log_px_stderr"] ** 2 + b["log_px_stderr"] ** 2) ** 0.5
    assert abs(a["log_px"] - b["log_px"]) < 5 * se + 1e-3


def test_train_and_eval_cli_errors(tmp_path, capsys) -> None:
    assert main(["train", "--set", "posterior.kind=maf"]) == 2
    assert "unknown posterior 'maf'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["train", "--resume"]) == 2


def test_static_binarized_mnist_trains_a_few_steps(shared_data, tmp_path) -> None:
    cfg = load_train_config(
        overrides=[
            "data.name=binarized_mnist",
            f"data.data_dir={shared_data}",
            "steps=5",
            "final_eval=false",
            "eval_every=5",
            "eval.valid_images=50",
            "eval.valid_samples=5",
        ]
    )
    metrics = train_vae(cfg, tmp_path, progress=False)
    assert metrics["steps"] == 5 and metrics["best_valid"]["valid_log_px"] < 0
