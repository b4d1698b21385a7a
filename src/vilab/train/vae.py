"""Train a VAE with an amortized flexible posterior.

:class:`VAETrainer` owns the model, the optimizer, the data and one step; :func:`train_vae`
runs it through the run lifecycle. The run directory (DESIGN.md) holds ``config.yaml``,
``metrics.jsonl`` (train bound every ``log_every`` steps, validation every ``eval_every``),
TensorBoard scalars and image grids, ``checkpoint.pt`` (atomic; resumes exactly: the batch
at step s depends only on (seed, s), and the RNG state is saved), ``best.pt`` (best
validation log p(x)), figures, and ``metrics.json`` with the test log p(x) by importance
sampling.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vilab.config import TrainConfig
from vilab.core.checkpoint import (
    brief,
    encode_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vilab.core.device import (
    fork_rng,
    resolve_device,
    rng_state,
    set_matmul_precision,
    set_rng_state,
)
from vilab.core.seeding import Stream, derive_seed
from vilab.data.vae_data import VAEData, load_vae_data
from vilab.distributed import SINGLE, World, main_only, on_main
from vilab.evaluation import FINAL_EVAL_HINT, KHAT_MIN_SAMPLES, evaluate
from vilab.plots.vae import LatentTracker, final_figures, sample_images
from vilab.train.guard import (
    StepGuard,
    backward_finite,
    ema_update_if_finite,
    step_if_finite,
)
from vilab.train.logging import RunLogger, read_metrics
from vilab.train.run import execute
from vilab.train.schedule import apply_lr, progress
from vilab.train.steps import Hooks
from vilab.vae import VAE, build_vae, vae_objective

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamax": torch.optim.Adamax,
    "rmsprop": lambda p, **kw: torch.optim.RMSprop(p, centered=True, **kw),
}


def make_optimizer(
    name: str, params: Any, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer ``name`` for parameters on ``device``. On a GPU: fused Adam (one
    kernel for all parameters, and it skips a non-finite step on the device itself), and
    ``capturable`` Adamax and RMSprop (their state on the GPU, so that
    :func:`~vilab.train.guard.step_if_finite` can undo a step there); on the CPU torch's
    defaults."""
    options = optimizer_options(name, device)
    return OPTIMIZERS[name](params, lr=lr, **options)


def sync_free(device: torch.device) -> bool:
    """Whether a trainer on ``device`` applies its steps conditionally on the device and
    reads the finite flags back only at the loop's sync points (a GPU; on the CPU a
    read-back costs nothing)."""
    return device.type == "cuda"


def optimizer_options(name: str, device: torch.device) -> dict[str, bool]:
    """The device-dependent flags :func:`make_optimizer` sets (a checkpoint written on
    another kind of device is loaded with these, not its own)."""
    if device.type != "cuda":
        return {}
    return {"fused": True} if name == "adam" else {"capturable": True}


class _Loss(torch.nn.Module):
    """The training loss as a module, so that ``DistributedDataParallel`` (which hooks
    the backward pass of its module's forward) can wrap it. ``scale`` turns this rank's
    batch mean into its share of the global batch mean (see :mod:`.distributed`)."""

    def __init__(self, vae: VAE, objective: Any) -> None:
        super().__init__()
        self.vae, self.objective = vae, objective

    def forward(
        self, x: Tensor, step: int, need_value: bool, scale: float
    ) -> tuple[Tensor, Tensor]:
        obj = vae_objective(self.vae, x, self.objective, step, need_value)
        loss = -obj.surrogate if scale == 1.0 else -obj.surrogate * scale
        return loss, obj.value.sum()


class VAETrainer:
    """Owns the model, optimizer, data and the step; ``train_step`` does one update.

    In a multi-process ``world`` (``torchrun``) the loss is wrapped in
    ``DistributedDataParallel`` and each rank trains on its share of the global batch.
    """

    def __init__(
        self, config: TrainConfig, data: VAEData | None = None, world: World = SINGLE
    ) -> None:
        self.config, self.world = config, world
        self.device = resolve_device(config.device, world.local_rank if world.distributed else None)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            set_matmul_precision(config.tf32)  # process-wide: set only for a GPU run
        torch.manual_seed(config.seed)
        if data is None:
            data = load_vae_data(config.data, config.seed, world)
        self.data = data.to(self.device)
        self.vae = build_vae(config).to(self.device)  # built on the CPU: the same weights anywhere
        if world.rank > 0:  # one seed per rank; rank 0 continues the single-process stream
            torch.manual_seed(derive_seed(config.seed, Stream.RANK, world.rank))
        self.loss = _Loss(self.vae, config.objective)
        self.forward: Any = self.loss
        self.cuda_graphs = False
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(
                self.loss, device_ids=ids, gradient_as_bucket_view=True
            )
        if config.compile:  # on one GPU with CUDA graphs: the step's launches replayed at once
            cuda_graphs = self.cuda_graphs = self.device.type == "cuda" and not world.distributed
            self.forward = torch.compile(
                self.forward, mode="reduce-overhead" if cuda_graphs else None
            )
        self.optimizer = make_optimizer(
            config.optim.name, self.vae.parameters(), config.optim.lr, self.device
        )
        #: Apply steps conditionally on the device and read the finite flags back at the
        #: loop's sync points (:mod:`vilab.train.guard`): on a GPU, where a read-back
        #: every step stalls it.
        self.sync_free = sync_free(self.device)
        self.ema: AveragedModel | None = None
        if config.optim.ema is not None:
            avg = get_ema_multi_avg_fn(config.optim.ema)
            self.ema = AveragedModel(self.vae, multi_avg_fn=avg, use_buffers=True)
        self.guard = StepGuard(config.faults)
        self.step = 0
        self.seconds = 0.0
        self.best: dict[str, Any] = {}
        self.latent: LatentTracker | None = None
        self._t0 = time.perf_counter()

    @property
    def eval_vae(self) -> VAE:
        """The model to evaluate: the moving average of the weights if ``optim.ema``."""
        return self.vae if self.ema is None else self.ema.module  # type: ignore[return-value]

    def start_clock(self) -> None:
        """(Re)start the training clock at ``self.seconds`` (time outside train_step,
        such as validation, is not training time)."""
        self._t0 = time.perf_counter() - self.seconds

    def train_step(self, log_value: bool = True) -> dict[str, float]:
        """One update; ``log_value=False`` may skip work only the logged bound needs (and,
        with several processes, the collective that averages it).

        A non-finite loss or gradient (on any rank) leaves the parameters and optimizer
        state unchanged; the step still counts and ``"finite"`` is False — or, with
        ``sync_free`` (a GPU), a 0-d bool tensor on the device that the loop reads back
        later (:mod:`vilab.train.steps`): the step then reads nothing back unless its
        bound is logged. The returned bound
        is the global batch mean (NaN if not ``log_value``). With several processes,
        ``self.seconds`` is rank 0's clock on every rank whenever the run has a
        ``max_seconds`` budget (its schedule and its stop follow the clock).
        """
        cfg = self.config
        frac = progress(self.step, self.seconds, cfg.steps, cfg.max_seconds)
        lr = apply_lr(self.optimizer, cfg.optim, self.step, frac, self.guard.lr_scale)
        batches = self.data.train
        x = batches.batch(self.step)
        n = batches.global_size(self.step)  # all ranks' images in this step
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda_graphs:  # a new iteration: the previous step's graph outputs are done
            torch.compiler.cudagraph_mark_step_begin()
        loss, value_sum = self.forward(x, self.step, log_value, len(x) * self.world.size / n)
        ok = backward_finite(loss, list(self.vae.parameters()), cfg.optim.grad_clip)
        elapsed = time.perf_counter() - self._t0
        bound = math.nan
        if self.world.distributed and (log_value or cfg.max_seconds is not None):
            f64, cpu = torch.float64, torch.device("cpu")
            value = value_sum.detach().to(cpu, f64) if log_value else torch.zeros((), dtype=f64)
            local = torch.stack([value, torch.tensor(elapsed, dtype=f64)])
            if not self.world.is_main:
                local[1] = 0.0
            status = self.world.sum(local)  # the bound's sum over ranks, rank 0's clock
            bound, elapsed = float(status[0]) / n, float(status[1])
        elif log_value:
            bound = float(value_sum) / n
        self.seconds = elapsed
        finite: bool | torch.Tensor
        if self.sync_free and self.optimizer.state:  # the first step is checked on the host
            step_if_finite(self.optimizer, ok)
            if self.ema is not None:
                ema_update_if_finite(self.ema, self.vae, self.config.optim.ema or 0.0, ok)
            finite = ok
        else:
            finite = bool(ok)
            if finite:
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.vae)
        self.step += 1
        return {"bound": bound, "lr": lr, "finite": finite}

    def encode(self) -> bytes | None:
        """The checkpoint file's bytes on rank 0, None elsewhere (a collective)."""
        return main_only(self.world, encode_checkpoint, self.state_dict())

    def rollback(self, path: Path) -> None:
        """Go back to the checkpoint at ``path`` (rank 0 reads it), keeping the fault
        counts, the lowered learning rate, the best validation so far and the training
        clock (a time budget counts the lost steps too)."""
        kept = (self.guard.state_dict(), self.best, self.seconds)
        self.load_state_dict(
            on_main(self.world, load_checkpoint, path), f"checkpoint {str(path)!r}"
        )
        self.guard.load_state_dict(kept[0])
        self.best, self.seconds = kept[1], kept[2]

    # -- the lifecycle's side (vilab.train.run.Trainer) -----------------------------------
    def hooks(self, run_dir: Path, logger: RunLogger) -> Hooks:
        if self.config.latent_dim == 2 and self.world.is_main:
            self.latent = LatentTracker(
                lambda: self.eval_vae, self.data.test, self.data.test_labels
            )
        return _hooks(self, run_dir, logger)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "device": str(self.device),
            "data": c.data.name,
            "posterior": c.posterior.kind,
            "objective": c.objective.kind,
            "latent_dim": c.latent_dim,
            "parameters": sum(p.numel() for p in self.vae.parameters()),
        }

    def finish(self, run_dir: Path, interrupted: bool, progress: bool) -> dict[str, Any]:
        return _finish(self, run_dir, interrupted, progress)

    def validate(self) -> dict[str, float]:
        e = self.config.eval
        valid = self.data.valid[: e.valid_images]
        seed = derive_seed(self.config.seed, Stream.VALIDATION, self.step)
        chunk = None if e.chunk is None else min(e.chunk, e.valid_samples)
        r = evaluate(
            self.eval_vae, valid, e.valid_samples, chunk, e.batch, seed=seed, world=self.world
        )
        return {"valid_elbo": r["elbo"], "valid_log_px": r["log_px"]}

    def state_dict(self) -> dict[str, Any]:
        """The whole training state; a collective in a multi-process world (every rank's
        RNG state is gathered), so every rank must call it at the same step."""
        return {
            "step": self.step,
            "seconds": self.seconds,
            "best": self.best,
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.world.gather(rng_state(self.device)),
            "world_size": self.world.size,
            "optimizer_name": self.config.optim.name,
            "guard": self.guard.state_dict(),
            **({} if self.ema is None else {"ema": self.ema.state_dict()}),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "the checkpoint") -> None:
        """Continue from ``state`` (written at any world size). The RNG state of rank r is
        the one saved by rank r; a rank the checkpoint did not have gets a fresh stream
        seeded from (seed, rank, step).

        Raises:
            ValueError: ``state`` does not belong to a run of this configuration.
        """
        name = state.get("optimizer_name", self.config.optim.name)
        if name != self.config.optim.name:
            raise ValueError(
                f"{source} was written with optim.name={name}, this config has "
                f"optim.name={self.config.optim.name}: resume with the run's config"
            )
        try:
            self.vae.load_state_dict(state["model"])
            self.optimizer.load_state_dict(_for_device(state["optimizer"], self.optimizer))
            step, seconds = int(state["step"]), float(state["seconds"])
            best = dict(state["best"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
            if self.world.rank < len(rng):
                set_rng_state(rng[self.world.rank], self.device)
            else:
                torch.manual_seed(derive_seed(self.config.seed, Stream.RANK, self.world.rank, step))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{source} does not fit this configuration ({brief(err)}); "
                "resume with the config the run was started with, or start a new run"
            ) from None
        self.step, self.seconds, self.best = step, seconds, best
        self.guard.load_state_dict(state.get("guard", {}))


def _for_device(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer's saved state with this optimizer's device flags (``fused``,
    ``capturable``, ``foreach``): a checkpoint written on a GPU resumes on a CPU and back,
    its step counts placed where this optimizer keeps them."""
    mine = optimizer.param_groups[0]
    flags = {k: mine[k] for k in ("fused", "capturable", "foreach") if k in mine}
    groups = [{**g, **flags} for g in saved["param_groups"]]
    return {**saved, "param_groups": groups}


def _after_validation(
    trainer: VAETrainer, run_dir: Path, logger: RunLogger, step: int, values: dict[str, float]
) -> None:
    """Rank 0's records of a validation: the values, the pictures, the latent frame."""
    logger.log(step, values)
    sample_images(trainer.eval_vae, trainer.data.test, run_dir, step, logger.writer)
    if trainer.latent is not None:
        trainer.latent.snapshot(step)


def _hooks(trainer: VAETrainer, run_dir: Path, logger: RunLogger) -> Hooks:
    """The VAE's side of the step loop: records through rank 0, and validation (with
    ``best.pt``, pictures and the latent animation) every ``eval_every`` steps."""
    config, world = trainer.config, trainer.world

    def log(step: int, values: dict[str, float]) -> None:
        if "bound" in values:
            values["images_per_second"] = step * config.data.batch_size / trainer.seconds
        main_only(world, logger.log, step, values)

    def validate(step: int) -> None:
        if step % config.eval_every and step != config.steps:
            return
        with fork_rng(trainer.device):  # validation does not move the training streams
            v = trainer.validate()
        if v["valid_log_px"] > trainer.best.get("valid_log_px", -math.inf):
            trainer.best = {"step": step, **v}
            best = {"step": step, "model": trainer.eval_vae.state_dict()}
            main_only(world, save_checkpoint, run_dir / "best.pt", best)
        with fork_rng(trainer.device):
            main_only(world, _after_validation, trainer, run_dir, logger, step, v)
        trainer.start_clock()  # evaluation is not training time

    return Hooks(log, partial(main_only, world, logger.rewind), logger.advance, validate)


def _finish(trainer: VAETrainer, run_dir: Path, interrupted: bool, progress: bool) -> dict:
    """The test log p(x) of the best (else last) weights, unless interrupted or
    ``final_eval=false``; then the figures (rank 0)."""
    config, world = trainer.config, trainer.world
    out: dict[str, Any] = {
        "images_per_second": trainer.step * config.data.batch_size / max(trainer.seconds, 1e-9),
        "world_size": world.size,
        "best_valid": trainer.best,
    }
    if config.final_eval and not interrupted:
        best = run_dir / "best.pt"
        if on_main(world, best.exists):
            state = on_main(world, lambda: load_checkpoint(best))
            trainer.eval_vae.load_state_dict(state["model"])
        e = config.eval
        t0 = time.perf_counter()
        test = evaluate(
            trainer.eval_vae,
            trainer.data.test,
            e.samples,
            e.chunk,
            e.batch,
            iwae_k=50,
            seed=derive_seed(config.seed, Stream.TEST),
            world=world,
            progress=progress,
            hint=FINAL_EVAL_HINT,
            khat=e.samples >= KHAT_MIN_SAMPLES,
        )
        test["seconds"] = time.perf_counter() - t0
        out["test"] = test
    if world.is_main:
        records = read_metrics(run_dir / "metrics.jsonl")
        vae, test_x = trainer.eval_vae, trainer.data.test
        final_figures(vae, test_x, records, run_dir, trainer.step, trainer.latent)
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
        run_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        tensorboard=tensorboard,
        world=world,
    )
