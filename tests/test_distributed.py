"""Data-parallel training and evaluation (2 CPU processes, gloo) against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from ddp_helpers import run_ranks, train_and_evaluate, train_runs
from tiny_vae import TINY_VAE

from vilab.cli import _without_nproc
from vilab.commands.train import train_vae
from vilab.config import load_train_config
from vilab.core.checkpoint import load_checkpoint
from vilab.data import Batches, load_dataset
from vilab.data.binarize import derive_seed
from vilab.evaluation import evaluate, evaluate_ais
from vilab.train.vae import VAETrainer

SMALL = [
    *TINY_VAE,
    "eval.valid_images=40",
    "eval.valid_samples=4",
    "eval.chunk=4",
    "threads=1",
]


pytestmark = pytest.mark.usefixtures("keep_threads")


def one_process_reference(overrides: list[str], steps: int, size: int = 2):
    """One process doing what ``size`` ranks do: each global batch's loss is the mean over
    all its images, each shard's images with the noise of its rank's RNG stream; one
    update per batch."""
    cfg = load_train_config(overrides=overrides)
    torch.set_num_threads(1)
    trainer = VAETrainer(cfg)
    streams = [torch.get_rng_state()]
    for r in range(1, size):
        streams.append(torch.Generator().manual_seed(derive_seed(cfg.seed, 2, r)).get_state())
    bounds = []
    for step in range(steps):
        x = trainer.data.train.batch(step)
        n = len(x)
        trainer.optimizer.zero_grad()
        loss, total = 0.0, 0.0
        for r in range(size):
            torch.set_rng_state(streams[r])
            xr = x[r::size]
            shard_mean, value = trainer.loss(xr, step, True, 1.0)
            loss = loss + shard_mean * len(xr) / n  # the global batch mean
            total += float(value)
            streams[r] = torch.get_rng_state()
        loss.backward()
        trainer.optimizer.step()
        bounds.append(total / n)
    return trainer, bounds, streams


def test_shards_of_a_global_batch_are_the_one_process_batch() -> None:
    data = load_dataset("tiny", "train")
    one = Batches(data, 30, seed=3)
    two = [Batches(data, 30, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in (0, 5, one.steps_per_epoch - 1, one.steps_per_epoch):
        x = one.batch(step)
        torch.testing.assert_close(two[0].batch(step), x[0::2], rtol=0, atol=0)
        torch.testing.assert_close(two[1].batch(step), x[1::2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="world_size"):
        Batches(data, 30, rank=2, world_size=2)
    with pytest.raises(ValueError, match="smaller than world_size"):
        Batches(data, 3, world_size=4)
    with pytest.raises(ValueError, match="leaves 1 image"):  # 4000 = 129 × 31 + 1
        Batches(data, 31, world_size=2)


def test_two_processes_train_and_evaluate_like_one_process(tmp_path) -> None:
    overrides = [*SMALL, "posterior.kind=planar", "posterior.layers=2", "objective.samples=2"]
    overrides.append("data.batch_size=33")  # uneven shards (17 + 16 images) weigh exactly
    steps = 4
    run_ranks(2, train_and_evaluate, overrides, steps, tmp_path / "ddp.pt")
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    ref, bounds, streams = one_process_reference(overrides, steps)

    torch.testing.assert_close(torch.tensor(ddp["bounds"]), torch.tensor(bounds), rtol=1e-5, atol=0)
    for name, p in ref.vae.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], p, rtol=1e-5, atol=1e-6, msg=name)
    for r in range(2):  # every rank drew exactly the noise of its stream
        assert torch.equal(ddp["rng"][r]["cpu"], streams[r])

    ref.vae.load_state_dict(ddp["model"])  # sharded evaluation = one process, exactly
    test = ref.data.test[:30]
    assert evaluate(ref.vae, test, 20, 10, 7, iwae_k=5, seed=11) == ddp["is"]
    assert evaluate_ais(ref.vae, test[:8], 2, 4, 2, batch=3, seed=11) == ddp["ais"]


def test_a_checkpoint_resumes_at_any_world_size(tmp_path) -> None:
    base = [*SMALL, "final_eval=false", "eval_every=1000", "checkpoint_every=3", "log_every=1"]
    full, part2, part1 = tmp_path / "full", tmp_path / "part2", tmp_path / "part1"
    run_ranks(
        2, train_runs, [([*base, "steps=10"], full, False), ([*base, "steps=6"], part2, False)]
    )
    train_vae(load_train_config(overrides=[*base, "steps=6"]), part1, False, tensorboard=False)
    shutil.copytree(part2, tmp_path / "part2to1")
    assert len(load_checkpoint(part2 / "checkpoint.pt")["rng"]) == 2

    run_ranks(
        2, train_runs, [([*base, "steps=10"], part2, True), ([*base, "steps=10"], part1, True)]
    )
    cfg10 = load_train_config(overrides=[*base, "steps=10"])
    train_vae(cfg10, tmp_path / "part2to1", False, resume=True, tensorboard=False)

    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part2 / "checkpoint.pt")
    assert a["step"] == b["step"] == 10
    for name, p in a["model"].items():  # same world size: resumed = uninterrupted, exactly
        assert torch.equal(p, b["model"][name]), name
    for run, size in ((part1, 2), (tmp_path / "part2to1", 1)):  # 1 → 2 and 2 → 1 processes
        state = load_checkpoint(run / "checkpoint.pt")
        assert state["step"] == 10 and len(state["rng"]) == size
        assert all(torch.isfinite(p).all() for p in state["model"].values())
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["world_size"] == size and metrics["steps"] == 10
        logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
        assert sorted(set(logged)) == list(range(1, 11))


def test_nproc_is_removed_from_what_each_worker_runs() -> None:
    argv = ["train", "--nproc", "2", "--set", "steps=3", "--nproc=4", "--out", "d"]
    assert _without_nproc(argv) == ["train", "--set", "steps=3", "--out", "d"]


def vilab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vilab", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_the_nproc_option_trains_and_evaluates_in_two_processes(tmp_path) -> None:
    out = tmp_path / "run"
    sets = [f"--set={o}" for o in [*SMALL, "steps=4", "eval.samples=4", "final_eval=true"]]
    done = vilab("train", *sets, "--nproc", "2", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    assert len(load_checkpoint(out / "checkpoint.pt")["rng"]) == 2
    assert done.stdout.count("run directory:") == 1  # rank 0 alone prints
    one = vilab("eval", str(out), "--samples", "4", "--images", "30")
    two = vilab("eval", str(out), "--samples", "4", "--images", "30", "--nproc", "2")
    assert one.returncode == two.returncode == 0, two.stderr
    assert json.loads(one.stdout)["log_px"] == json.loads(two.stdout)["log_px"]


def test_the_nproc_option_refuses_bad_input_once_and_cleanly(tmp_path) -> None:
    out = tmp_path / "run"
    done = vilab("train", "--set=steps=0", "--nproc", "2", "--out", str(out))
    assert done.returncode == 2
    assert done.stderr.count("vilab: error") == 1 and "Traceback" not in done.stderr
    assert not out.exists()
