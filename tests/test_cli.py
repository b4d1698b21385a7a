"""The command line: fit, demo, and clear errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from vilab.cli import main

FAST = [
    "--steps",
    "30",
    "--samples",
    "64",
    "--eval-samples",
    "500",
    "--layers",
    "2",
    "--no-progress",
]


def test_fit_command_writes_run_and_prints_metrics(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["fit", "--target", "U2", "--family", "radial", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target"] == "U2" and metrics["family"] == "radial" and metrics["steps"] == 30
    assert str(out) in printed


def test_fit_resume_continues_to_more_steps(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["fit", "--target", "banana", "--family", "mean_field", "--out", str(out), *FAST]
    assert main([*args, "--set", "optim.schedule=constant", "--set", "figures=false"]) == 0
    more = [
        *args,
        "--steps",
        "50",
        "--resume",
        "--set",
        "optim.schedule=constant",
        "--set",
        "figures=false",
    ]
    assert main(more) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 50


def test_user_target_file_from_the_command_line(tmp_path) -> None:
    src = tmp_path / "mine.py"
    src.write_text("def logp(z):\n    return -0.5 * (z ** 2).sum(-1)\n")
    out = tmp_path / "run"
    argv = [
        "fit",
        "--target",
        f"{src}:logp",
        "--box",
        "-8",
        "8",
        "-8",
        "8",
        "--family",
        "full_rank",
    ]
    assert main([*argv, "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["log_z"] == pytest.approx(1.8378770664, abs=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "--family", "maf"], "unknown family 'maf'"),
        (["fit", "--target", "U7"], "unknown target 'U7'"),
        (["fit", "--steps", "-1"], "steps"),
        (["fit", "--set", "family.layers=abc"], "family.layers"),
        (["fit", "--resume"], "--resume needs --out"),
        (["fit", "--box", "1", "0", "0", "1", "--target", "x.py:f"], "does not exist"),
        (["demo", "--set", "steps=zero"], "steps"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vilab: error:") and message in err
    assert "Traceback" not in err


def test_resume_without_checkpoint(tmp_path, capsys) -> None:
    assert main(["fit", "--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_demo_runs_every_target_and_writes_figure_and_table(tmp_path, capsys) -> None:
    argv = ["demo", "--out", str(tmp_path), "--workers", "1"]
    for kv in ["steps=15", "samples=64", "eval_samples=500", "family.layers=2"]:
        argv += ["--set", kv]
    assert main(argv) == 0
    table = (tmp_path / "kl_table.md").read_text()
    for name in ["U1", "U2", "U3", "U4", "banana"]:
        assert f"| {name} |" in table
        assert (tmp_path / name / "metrics.json").is_file()
    assert (tmp_path / "demo.png").is_file()
    assert "| U1 |" in capsys.readouterr().out


def test_ctrl_c_outside_training_exits_130_without_a_traceback(monkeypatch, capsys) -> None:
    import vilab.commands.demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vilab.commands.demo, "run_demo", interrupted)
    assert main(["demo"]) == 130
    assert capsys.readouterr().err == "vilab: interrupted\n"
