"""Faults: SIGKILL at random moments, non-finite steps (skip, roll back, stop), disk full."""

from __future__ import annotations

import errno
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_vae import SMALL_RUN

import vilab.core.io as io_module
import vilab.train.run as run_module
import vilab.train.vae as loop_module
from vilab.build import target_from_config
from vilab.commands.fit import run_fit
from vilab.commands.train import train_vae
from vilab.config import load_fit_config, load_train_config
from vilab.core.checkpoint import load_checkpoint, save_checkpoint
from vilab.estimators.objectives import Objective
from vilab.train.guard import GoodCheckpoints
from vilab.train.vae import VAETrainer

REPO = Path(__file__).resolve().parents[1]

SMALL = [*SMALL_RUN, "log_every=1"]


pytestmark = pytest.mark.usefixtures("keep_threads")


def params(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").open()]


# -- SIGKILL ----------------------------------------------------------------------------------
KILL_RUN = [
    "--config",
    str(REPO / "configs" / "vae_tiny.yaml"),
    *("--set", "steps=1200", "--set", "threads=1", "--set", "latent_dim=4"),
    *("--set", "final_eval=false", "--set", "eval_every=100000", "--set", "log_every=10"),
    *("--set", "checkpoint_every=20", "--set", "eval.valid_images=50"),
    *("--set", "eval.valid_samples=2", "--no-progress"),
]


def vilab_train(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vilab", "train", *KILL_RUN, "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    p = vilab_train(straight)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode() if p.stderr else ""

    rng = random.Random(2026)
    kills = 0
    for attempt in range(3):
        ckpt = killed / "checkpoint.pt"
        p = vilab_train(killed, *(["--resume"] if ckpt.exists() else []))
        start = time.monotonic()
        if attempt == 0:  # first kill: any moment, start-up included
            time.sleep(rng.uniform(0.5, 6.0))
        else:  # then somewhere in training, often during a checkpoint write
            while not (killed / "metrics.jsonl").exists() and time.monotonic() - start < 60:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 2.0))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        kills += 1
        if ckpt.exists():  # loads (not corrupt), and loses at most one checkpoint interval
            step = load_checkpoint(ckpt)["step"]
            logged = (
                [r["step"] for r in records(killed)] if (killed / "metrics.jsonl").exists() else []
            )
            assert step >= max(logged, default=0) - 21  # checkpoint_every + 1
    assert kills >= 2

    resume = ["--resume"] if (killed / "checkpoint.pt").exists() else []
    p = vilab_train(killed, *resume)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode() if p.stderr else ""
    a, b = params(straight), params(killed)
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == 1200
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not list(killed.glob(".*.tmp")), "a temporary file was left behind"
    assert [r["step"] for r in records(killed) if "bound" in r] == list(range(10, 1201, 10))


# -- non-finite steps -------------------------------------------------------------------------
def nan_on_calls(monkeypatch, bad: set[int] | None) -> list[int]:
    """Make the objective's surrogate NaN on the given calls (1-based; all if None)."""
    original = loop_module.vae_objective
    calls = [0]

    def patched(*args, **kwargs) -> Objective:
        obj = original(*args, **kwargs)
        calls[0] += 1
        if bad is None or calls[0] in bad:
            return Objective(obj.value, obj.surrogate * math.nan)
        return obj

    monkeypatch.setattr(loop_module, "vae_objective", patched)
    return calls


def test_a_non_finite_step_changes_nothing_but_the_step(monkeypatch) -> None:
    trainer = VAETrainer(load_train_config(overrides=SMALL))
    trainer.train_step()
    before = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
    adam = {
        k: v.clone() for k, v in trainer.optimizer.state[next(trainer.vae.parameters())].items()
    }
    nan_on_calls(monkeypatch, None)
    out = trainer.train_step()
    assert out.finite == 0.0 and trainer.step == 2
    for k, v in trainer.vae.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in trainer.optimizer.state[next(trainer.vae.parameters())].items():
        assert torch.equal(v, adam[k]), k


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped() -> None:
    trainer = VAETrainer(load_train_config(overrides=SMALL))
    p = next(trainer.vae.parameters())
    before = p.detach().clone()
    hook = p.register_hook(lambda g: g * math.inf)
    out = trainer.train_step()
    hook.remove()
    assert math.isfinite(out.values["bound"]) and out.finite == 0.0
    assert torch.equal(p.detach(), before)
    assert trainer.train_step().finite == 1.0 and not torch.equal(p.detach(), before)


def test_isolated_non_finite_steps_are_skipped_and_counted(monkeypatch, tmp_path) -> None:
    nan_on_calls(monkeypatch, {3, 4})
    m = train_vae(
        load_train_config(overrides=[*SMALL, "steps=8"]), tmp_path, False, tensorboard=False
    )
    assert (m["steps"], m["skipped_steps"], m["rollbacks"], m["lr_scale"]) == (8, 2, 0, 1.0)
    assert [r["step"] for r in records(tmp_path) if "bound" in r] == list(range(1, 9))
    skipped = [r.get("skipped_steps", 0) for r in records(tmp_path) if "bound" in r]
    assert skipped == [0, 0, 1, 2, 2, 2, 2, 2]


def test_non_finite_steps_in_a_row_roll_back_with_a_lower_learning_rate(
    monkeypatch, tmp_path
) -> None:
    nan_on_calls(monkeypatch, {6, 7, 8})
    cfg = load_train_config(
        overrides=[*SMALL, "steps=12", "checkpoint_every=4", "faults.max_bad_steps=3"]
    )
    m = train_vae(cfg, tmp_path, False, tensorboard=False)
    assert (m["steps"], m["skipped_steps"], m["rollbacks"], m["lr_scale"]) == (12, 3, 1, 0.5)
    rec = records(tmp_path)
    back = [r for r in rec if "rollback" in r]
    assert len(back) == 1 and back[0]["step"] == 4
    assert [r["step"] for r in rec if "bound" in r] == list(range(1, 13))  # rewound log
    assert [r["lr"] for r in rec if "bound" in r][-1] == pytest.approx(0.5 * cfg.optim.lr)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["guard"]["lr_scale"] == 0.5


def test_a_checkpoint_whose_next_step_fails_is_not_rolled_back_to(monkeypatch, tmp_path) -> None:
    """The update of step 4 may be what breaks step 5 on: the checkpoint of step 4 is
    written only once step 5 is finite, so the rollback goes back to step 0."""
    nan_on_calls(monkeypatch, {5, 6, 7})
    cfg = load_train_config(
        overrides=[*SMALL, "steps=10", "checkpoint_every=4", "faults.max_bad_steps=3"]
    )
    m = train_vae(cfg, tmp_path, False, tensorboard=False)
    assert (m["steps"], m["skipped_steps"], m["rollbacks"]) == (10, 3, 1)
    assert [r["step"] for r in records(tmp_path) if "rollback" in r] == [0]


def test_a_held_checkpoint_is_written_at_the_next_finite_step_and_dropped_by_a_write() -> None:
    written: list[bytes | None] = []
    ckpts = GoodCheckpoints(Path("unused"), lambda path, data: written.append(data))
    ckpts.hold(b"step 4")
    ckpts.step_done(False)  # a skipped step changes nothing: keep holding
    assert written == []
    ckpts.step_done(True)
    assert written == [b"step 4"]
    ckpts.step_done(True)
    assert written == [b"step 4"]
    ckpts.hold(b"step 8")
    ckpts.write(b"rolled back")  # a rollback's write forgets what was held
    ckpts.step_done(True)
    assert written == [b"step 4", b"rolled back"]


def test_a_run_ending_in_non_finite_steps_keeps_its_last_good_checkpoint(
    monkeypatch, tmp_path
) -> None:
    calls = nan_on_calls(monkeypatch, {9, 10})
    cfg = load_train_config(overrides=[*SMALL, "steps=10", "checkpoint_every=4"])
    m = train_vae(cfg, tmp_path, False, tensorboard=False)
    assert (m["steps"], m["skipped_steps"], m["rollbacks"]) == (10, 2, 0)
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # 8 was never followed by a good step
    assert state["step"] == 4 and state["guard"]["in_a_row"] == 0
    calls[0] = 100  # finite from here on
    m = train_vae(cfg, tmp_path, False, resume=True, tensorboard=False)
    assert m["steps"] == 10 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 10


def test_a_run_that_stays_non_finite_stops_with_a_clear_message(monkeypatch, tmp_path) -> None:
    nan_on_calls(monkeypatch, None)
    cfg = load_train_config(
        overrides=[*SMALL, "steps=50", "faults.max_bad_steps=2", "faults.max_rollbacks=2"]
    )
    with pytest.raises(FloatingPointError, match=r"diverged.*after 2 rollback.*optim\.lr"):
        train_vae(cfg, tmp_path, False, tensorboard=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # the last good one, intact
    assert state["step"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_the_2d_fit_rolls_back_too(monkeypatch, tmp_path) -> None:
    cfg = load_fit_config(
        overrides=[
            "target.name=U1",
            "family.kind=mean_field",
            "steps=30",
            "samples=50",
            "eval_samples=1000",
            "checkpoint_every=5",
            "faults.max_bad_steps=2",
            "figures=false",
        ]
    )
    target = target_from_config(cfg.target)
    original, calls = target.log_prob, [0]

    def log_prob(z, context=None):
        calls[0] += 1
        out = original(z, context)
        return out * math.nan if calls[0] in (12, 13) else out

    monkeypatch.setattr(target, "log_prob", log_prob)
    m = run_fit(cfg, tmp_path, progress=False, target=target, tensorboard=False).metrics
    assert (m["steps"], m["skipped_steps"], m["rollbacks"], m["lr_scale"]) == (30, 2, 1, 0.5)
    assert math.isfinite(m["kl"])


# -- disk full --------------------------------------------------------------------------------
class _FullDisk:
    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def fileno(self) -> int:
        return self.f.fileno()

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def full_disk(monkeypatch) -> None:
    real = os.fdopen
    monkeypatch.setattr(io_module.os, "fdopen", lambda fd, mode: _FullDisk(real(fd, mode)))


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(monkeypatch, tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(5.0)})
    full_disk(monkeypatch)
    with pytest.raises(OSError, match="disk is full.*previous version is intact"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_real_file_size_limit_leaves_the_previous_checkpoint_intact(tmp_path) -> None:
    """The operating system refuses the write (RLIMIT_FSIZE: EFBIG, as a full disk would)."""
    script = textwrap.dedent(
        f"""
        import resource, signal, torch
        from pathlib import Path
        from vilab.core.checkpoint import save_checkpoint
        path = Path({str(tmp_path / "checkpoint.pt")!r})
        save_checkpoint(path, {{"step": 1, "w": torch.ones(10)}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        try:
            save_checkpoint(path, {{"step": 2, "w": torch.ones(100_000)}})
        except OSError as err:
            print("refused:", err)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert "refused:" in out.stdout and "previous version is intact" in out.stdout, out.stderr
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_training_stops_clearly_on_a_full_disk_and_resumes_exactly(monkeypatch, tmp_path) -> None:
    cfg = load_train_config(overrides=[*SMALL, "steps=10", "checkpoint_every=4"])
    train_vae(cfg, tmp_path / "straight", False, tensorboard=False)

    real_write, writes = run_module.atomic_write_bytes, [0]

    def write_then_fill(path, data):
        writes[0] += 1
        if writes[0] == 3:  # initial, step 4, then the disk fills for step 8's checkpoint
            full_disk(monkeypatch)
        real_write(path, data)

    monkeypatch.setattr(run_module, "atomic_write_bytes", write_then_fill)
    run = tmp_path / "full"
    with pytest.raises(OSError, match="checkpoint.pt.*previous version is intact"):
        train_vae(cfg, run, False, tensorboard=False)
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    train_vae(cfg, run, False, resume=True, tensorboard=False)
    a, b = params(tmp_path / "straight"), params(run)
    for name in a:
        assert torch.equal(a[name], b[name]), name
