"""Run a function in W processes joined by a gloo process group (as torchrun would)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from vilab.commands.train import train_vae
from vilab.config import load_train_config
from vilab.distributed import World, shutdown, world_from_env
from vilab.evaluation import evaluate, evaluate_ais
from vilab.train.vae import VAETrainer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, size: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    world = world_from_env(timeout_s=120)
    try:
        fn(world, *args)
    finally:
        shutdown(world)


def run_ranks(size: int, fn: Callable[..., None], *args: Any) -> None:
    """``fn(world, *args)`` in ``size`` fresh processes; raises if any of them fails."""
    mp.start_processes(
        _entry, args=(size, free_port(), fn, args), nprocs=size, start_method="spawn"
    )


# -- workers (module level, so the spawned processes can import them) -----------------------
def train_and_evaluate(world: World, overrides: list[str], steps: int, out: Path) -> None:
    """``steps`` updates, then sharded IS and AIS on the first test images; rank 0 saves
    the bounds, the final model, every rank's RNG state and the estimates to ``out``."""
    trainer = VAETrainer(load_train_config(overrides=overrides), world=world)
    bounds = [trainer.train_step().values["bound"] for _ in range(steps)]
    state = trainer.state_dict()
    test = trainer.data.test[:30]
    is_ = evaluate(trainer.vae, test, 20, 10, 7, iwae_k=5, seed=11, world=world)
    ais = evaluate_ais(trainer.vae, test[:8], 2, 4, 2, batch=3, seed=11, world=world)
    if world.is_main:
        torch.save(
            {"bounds": bounds, "model": state["model"], "rng": state["rng"], "is": is_, "ais": ais},
            out,
        )


def train_runs(world: World, runs: list[tuple[list[str], Path, bool]]) -> None:
    """``train_vae`` for each (overrides, run directory, resume), in order."""
    for overrides, run_dir, resume in runs:
        cfg = load_train_config(overrides=overrides)
        train_vae(cfg, run_dir, progress=False, resume=resume, tensorboard=False, world=world)
