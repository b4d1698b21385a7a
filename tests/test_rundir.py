"""A run directory never loses work: refusals, --overwrite, --resume from the run's own
config, signals that stop with a checkpoint and a resume command (vilab.train.rundir,
vilab.train.run, the CLI)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from tiny_vae import TINY_VAE

import vilab.train.rundir as rundir
from vilab.cli import build_parser, main
from vilab.core.checkpoint import load_checkpoint
from vilab.train.fit import Fitter

FIT = ["fit", "--target", "banana", "--family", "mean_field", "--samples", "32"]
FIT += ["--eval-samples", "500", "--no-progress", "--no-figures", "--steps", "6"]
TRAIN = ["train", "--no-progress", "--steps", "3", "--set", "final_eval=false"]
for kv in [*TINY_VAE, "eval.valid_images=20", "eval.valid_samples=2"]:
    TRAIN += ["--set", kv]


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("vilab: error:") and "Traceback" not in err
    return err


@pytest.fixture
def done(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert main([*FIT, "--out", str(run)]) == 0
    return run


def test_a_finished_run_is_never_overwritten(done: Path, capsys) -> None:
    before = files(done)
    capsys.readouterr()
    assert main([*FIT, "--out", str(done), "--set", "seed=3"]) == 2
    err = error(capsys)
    assert "already holds a finished run" in err and "--resume" in err and "--overwrite" in err
    assert files(done) == before


def test_overwrite_replaces_a_run_and_only_a_run(done: Path, capsys) -> None:
    old = json.loads((done / "metrics.json").read_text())
    assert main([*FIT, "--out", str(done), "--set", "seed=3", "--overwrite"]) == 0
    new = json.loads((done / "metrics.json").read_text())
    assert new["kl"] != old["kl"] and "seed: 3" in (done / "config.yaml").read_text()
    (done / "notes.txt").write_text("mine")
    assert main([*FIT, "--out", str(done), "--overwrite"]) == 2
    assert "notes.txt" in error(capsys) and (done / "notes.txt").read_text() == "mine"


def test_unusable_out_paths_are_refused_before_any_work(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("x")
    cases = {
        tmp_path / "file": "is a file",
        tmp_path / "file" / "sub": "is a file",
        tmp_path / "other": "not a vilab run directory",
    }
    for out, message in cases.items():
        assert main([*FIT, "--out", str(out)]) == 2
        assert message in error(capsys)
    assert (tmp_path / "other" / "thesis.tex").read_text() == "x"


def test_an_unwritable_out_path_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)  # root ignores modes
    assert main([*FIT, "--out", str(tmp_path / "run")]) == 2
    assert "not writable" in error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_run_killed_before_its_first_checkpoint_may_be_started_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")  # what a kill during start-up leaves
    assert main([*FIT, "--out", str(run)]) == 0


def test_resume_reads_the_runs_own_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    # no --config, no --set: without the run's config.yaml this would be binarized MNIST
    assert main(["train", "--out", str(run), "--resume", "--steps", "5", "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"] == "tiny" and metrics["steps"] == 5
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 5


def test_resume_refuses_a_change_to_what_is_trained(done: Path, capsys) -> None:
    before = files(done)
    capsys.readouterr()
    argv = ["fit", "--out", str(done), "--resume", "--steps", "9", "--lr", "0.01"]
    assert main(argv) == 2
    assert "optim.lr: 0.002 → 0.01" in error(capsys)
    assert main(["fit", "--out", str(done), "--resume", "--steps", "4"]) == 2
    assert "steps ≥ 6" in error(capsys)
    assert main(["fit", "--out", str(done), "--resume"]) == 2
    assert "finished run" in error(capsys)
    assert files(done) == before
    assert main(["fit", "--out", str(done), "--resume", "--steps", "9", "--no-progress"]) == 0
    assert json.loads((done / "metrics.json").read_text())["steps"] == 9


def test_config_changes_lists_only_what_may_not_change() -> None:
    from vilab.config import load_fit_config

    stored = load_fit_config().model_dump(mode="json")
    new = load_fit_config(overrides=["steps=9", "eval_samples=10", "optim.lr=0.1", "seed=2"])
    assert rundir.config_changes(stored, new) == ["optim.lr: 0.002 → 0.1", "seed: 0 → 2"]
    # how many draws the evaluation takes changes nothing trained
    sizing = ["report_samples=500", "kl.stderr=0.01", "report.max_samples=50000"]
    assert rundir.config_changes(stored, load_fit_config(overrides=sizing)) == []


def stop_at(monkeypatch, step: int, *signals: signal.Signals) -> None:
    original = Fitter.train_step

    def train_step(self, **kwargs):
        if self.step == step:
            for s in signals:
                signal.raise_signal(s)
        return original(self, **kwargs)

    monkeypatch.setattr(Fitter, "train_step", train_step)


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_says_how_to_resume(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    stop_at(monkeypatch, 3, signal.SIGTERM)
    assert main([*FIT, "--out", str(run)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM at step 4" in err
    assert f"vilab fit --out {run} --resume" in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["signal"] == "SIGTERM"
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    monkeypatch.undo()
    assert main(["fit", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["interrupted"] is False


def test_a_second_signal_stops_at_once_without_evaluation_or_figures(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    stop_at(monkeypatch, 3, signal.SIGINT, signal.SIGINT)
    argv = [a for a in FIT if a != "--no-figures"]
    assert main([*argv, "--out", str(run)]) == 130
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True and "kl" not in metrics
    assert not list(run.glob("*.png"))
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 0  # the last one written


def test_a_single_signal_still_evaluates_and_draws(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    stop_at(monkeypatch, 3, signal.SIGINT)
    argv = [a for a in FIT if a != "--no-figures"]
    assert main([*argv, "--out", str(run)]) == 130
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["kl"] is not None
    assert (run / "summary.png").is_file()


def test_run_directory_options_are_in_help() -> None:
    for command in ("fit", "train"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        text = sub.format_help()
        for flag in ("--out", "--resume", "--overwrite", "--no-progress"):
            assert flag in text, (command, flag)
    fit_help = build_parser()._subparsers._group_actions[0].choices["fit"].format_help()  # type: ignore[union-attr]
    assert "--no-figures" in fit_help and "figures=false" in fit_help


def test_the_python_api_is_the_cli_with_the_same_numbers(tmp_path: Path) -> None:
    import vilab

    assert main([*FIT, "--out", str(tmp_path / "cli")]) == 0
    settings = {"samples": 32, "eval_samples": 500, "steps": 6, "figures": False}
    api = vilab.fit("banana", "mean_field", run_dir=tmp_path / "api", progress=False, **settings)
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert api.metrics["kl"] == cli["kl"] and api.metrics["family"] == cli["family"]
    assert (tmp_path / "api" / "config.yaml").read_text() == (
        tmp_path / "cli" / "config.yaml"
    ).read_text()
    assert api.target.name == "banana"
    trained = load_checkpoint(tmp_path / "api" / "checkpoint.pt")["family"]
    for k, v in api.family.state_dict().items():  # the family returned is the trained one
        assert torch.equal(v, trained[k]), k
