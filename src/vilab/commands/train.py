"""``vilab train``: train a VAE with an amortized flexible posterior.

:func:`train_vae` runs the :class:`~vilab.train.vae.VAETrainer` through the run lifecycle
(:func:`vilab.train.run.execute`) with :class:`VAEJob`: the train bound every
``log_every`` steps, validation every ``eval_every`` (``best.pt`` keeps the best
validation log p(x); image grids and the latent animation in TensorBoard and the run
directory), and at the end the test log p(x) by importance sampling of the best (else
last) weights, and the figures.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

from vilab.config import TrainConfig
from vilab.core.checkpoint import load_checkpoint, save_checkpoint
from vilab.core.device import fork_rng
from vilab.core.seeding import Stream, derive_seed
from vilab.data.vae_data import VAEData
from vilab.distributed import SINGLE, World, main_only, on_main
from vilab.evaluation import FINAL_EVAL_HINT, KHAT_MIN_SAMPLES, evaluate
from vilab.plots.vae import LatentTracker, final_figures, sample_images
from vilab.train.logging import RunLogger, read_metrics
from vilab.train.run import execute
from vilab.train.steps import Hooks
from vilab.train.vae import VAETrainer


def validate(trainer: VAETrainer) -> dict[str, float]:
    """The quick validation estimate: ``eval.valid_samples`` per image on the first
    ``eval.valid_images`` validation images, seeded by the step."""
    e = trainer.config.eval
    valid = trainer.data.valid[: e.valid_images]
    seed = derive_seed(trainer.config.seed, Stream.VALIDATION, trainer.step)
    chunk = None if e.chunk is None else min(e.chunk, e.valid_samples)
    r = evaluate(
        trainer.eval_vae, valid, e.valid_samples, chunk, e.batch, seed=seed, world=trainer.world
    )
    return {"valid_elbo": r["elbo"], "valid_log_px": r["log_px"]}


def evaluate_test(trainer: VAETrainer, run_dir: Path, progress: bool) -> dict[str, Any]:
    """The test log p(x) (``eval.samples`` per image, with IWAE_50 and per-image k̂) of
    ``best.pt``'s weights if the run has them, else the last."""
    world, e = trainer.world, trainer.config.eval
    best = run_dir / "best.pt"
    if on_main(world, best.exists):
        state = on_main(world, lambda: load_checkpoint(best))
        trainer.eval_vae.load_state_dict(state["model"])
    t0 = time.perf_counter()
    out = evaluate(
        trainer.eval_vae,
        trainer.data.test,
        e.samples,
        e.chunk,
        e.batch,
        iwae_k=50,
        seed=derive_seed(trainer.config.seed, Stream.TEST),
        world=world,
        progress=progress,
        hint=FINAL_EVAL_HINT,
        khat=e.samples >= KHAT_MIN_SAMPLES,
    )
    out["seconds"] = time.perf_counter() - t0
    return out


class VAEJob:
    """The VAE's side of the run (:class:`vilab.train.run.Job`): records through rank 0,
    validation with ``best.pt``, pictures and the latent animation, the test evaluation."""

    def __init__(self) -> None:
        self.latent: LatentTracker | None = None

    def hooks(self, trainer: VAETrainer, run_dir: Path, logger: RunLogger) -> Hooks:
        config, world = trainer.config, trainer.world
        if config.latent_dim == 2 and world.is_main:
            data = trainer.data
            self.latent = LatentTracker(lambda: trainer.eval_vae, data.test, data.test_labels)

        def log(step: int, values: dict[str, float]) -> None:
            if "bound" in values:
                values["images_per_second"] = step * config.data.batch_size / trainer.seconds
            main_only(world, logger.log, step, values)

        def after_step(step: int) -> None:
            if step % config.eval_every == 0 or step == config.steps:
                self.validation(trainer, run_dir, logger, step)

        return Hooks(log, partial(main_only, world, logger.rewind), logger.advance, after_step)

    def validation(self, trainer: VAETrainer, run_dir: Path, logger: RunLogger, step: int) -> None:
        """Validate (forking every RNG stream: training's do not move), keep the best
        weights in ``best.pt``, record on rank 0; validation is not training time."""
        world = trainer.world
        with fork_rng(trainer.device):
            v = validate(trainer)
        if v["valid_log_px"] > trainer.best.get("valid_log_px", -math.inf):
            trainer.best = {"step": step, **v}
            best = {"step": step, "model": trainer.eval_vae.state_dict()}
            main_only(world, save_checkpoint, run_dir / "best.pt", best)
        with fork_rng(trainer.device):
            main_only(world, self._record, trainer, run_dir, logger, step, v)
        trainer.start_clock()

    def _record(
        self, trainer: VAETrainer, run_dir: Path, logger: RunLogger, step: int, values: dict
    ) -> None:
        """Rank 0's records of a validation: the values, the pictures, the latent frame."""
        logger.log(step, values)
        sample_images(trainer.eval_vae, trainer.data.test, run_dir, step, logger.writer)
        if self.latent is not None:
            self.latent.snapshot(step)

    def describe(self, trainer: VAETrainer) -> dict[str, Any]:
        c = trainer.config
        return {
            "device": str(trainer.device),
            "data": c.data.name,
            "image_shape": list(trainer.data.image_shape),
            "likelihood": c.likelihood,
            "posterior": c.posterior.kind,
            "objective": c.objective.kind,
            "latent_dim": c.latent_dim,
            "parameters": sum(p.numel() for p in trainer.vae.parameters()),
        }

    def finish(
        self, trainer: VAETrainer, run_dir: Path, interrupted: bool, progress: bool
    ) -> dict[str, Any]:
        """The test log p(x) unless interrupted or ``final_eval=false``; the figures."""
        config, world = trainer.config, trainer.world
        out: dict[str, Any] = {
            "images_per_second": trainer.step * config.data.batch_size / max(trainer.seconds, 1e-9),
            "world_size": world.size,
            "best_valid": trainer.best,
        }
        if config.final_eval and not interrupted:
            out["test"] = evaluate_test(trainer, run_dir, progress)
        if world.is_main:
            records = read_metrics(run_dir / "metrics.jsonl")
            vae, test_x = trainer.eval_vae, trainer.data.test
            final_figures(vae, test_x, records, run_dir, trainer.step, self.latent)
        return out


def train_vae(
    config: TrainConfig,
    run_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    data: VAEData | None = None,
    tensorboard: bool = True,
    world: World = SINGLE,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, evaluate on the test set, and write the run directory; returns metrics.

    ``config.threads`` (if set) sets torch's thread count for the process. Everything is
    validated (the directory, config, data, and with ``resume`` the checkpoint and the
    run's own config.yaml) before the first file is written, by the one run lifecycle
    (:func:`vilab.train.run.execute`). A checkpoint is written at the start, every
    ``checkpoint_every`` steps (once the next step is finite) and at the end; a
    non-finite step is skipped, and repeated ones roll back to the last checkpoint
    (:mod:`vilab.train.guard`). SIGINT or SIGTERM stops at the end of the current step and
    writes its checkpoint (a second one, or one under torchrun, stops at once and keeps
    the last checkpoint written). In a multi-process ``world`` only rank 0 writes, and
    every rank returns the same metrics.
    """
    return execute(
        lambda: VAETrainer(config, data, world),
        VAEJob(),
        run_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        tensorboard=tensorboard,
        world=world,
    )
