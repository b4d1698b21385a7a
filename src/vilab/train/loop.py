"""Train a VAE with an amortized flexible posterior, and evaluate it honestly.

One run directory holds everything (DESIGN.md): ``config.yaml``, ``metrics.jsonl`` (train
bound every ``log_every`` steps, validation every ``eval_every``), TensorBoard scalars and
image grids, ``checkpoint.pt`` (atomic, resumes exactly: the batch at step s depends only
on (seed, s), and the RNG state is saved), ``best.pt`` (best validation log p(x)),
figures, and ``metrics.json`` with the test log p(x) by importance sampling.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vilab.config import DataConfig, TrainConfig, dump_config
from vilab.data import Batches, load_dataset
from vilab.data.binarize import derive_seed
from vilab.data.mnist import load_mnist
from vilab.estimators.loglik import importance_log_likelihood, mean_with_stderr
from vilab.train.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    brief,
    encode_checkpoint,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from vilab.train.distributed import SINGLE, World
from vilab.train.guard import GoodCheckpoints, StepGuard, grads_finite
from vilab.train.interrupt import stop_at_step_boundary
from vilab.train.logging import RunLogger, read_metrics
from vilab.train.schedule import lr_factor, progress
from vilab.train.steps import Hooks, run_steps
from vilab.vae import VAE, build_vae, vae_objective


@dataclass
class VAEData:
    """Training batches and fixed validation/test tensors ``(N, 784)``."""

    train: Batches
    valid: Tensor
    test: Tensor
    valid_labels: Tensor | None
    test_labels: Tensor | None


class _GreyBatches(Batches):
    """Batches of grey levels in [0, 1] (continuous data for a Gaussian likelihood)."""

    def batch(self, step: int) -> Tensor:
        return self.dataset.images[self.indices(step)].to(self.dtype) / 255.0


def load_vae_data(cfg: DataConfig, seed: int, world: World = SINGLE) -> VAEData:
    """The data set of a run (see :class:`~vilab.config.DataConfig`); the training batches
    are this rank's shares of the global batches (:class:`~vilab.data.Batches`)."""
    shard = {"seed": seed, "rank": world.rank, "world_size": world.size}
    if cfg.name == "mnist_gray":
        from vilab.data.binarize import ImageDataset

        images, labels = load_mnist("train", cfg.data_dir)
        test, test_labels = load_mnist("test", cfg.data_dir)
        n = len(images) - 10_000
        train = ImageDataset(images[:n], labels[:n], False, "mnist_gray", "train")
        return VAEData(
            _GreyBatches(train, cfg.batch_size, **shard),
            images[n:].float() / 255,
            test.float() / 255,
            labels[n:],
            test_labels,
        )
    sets = {s: load_dataset(cfg.name, s, cfg.data_dir) for s in ("train", "valid", "test")}
    return VAEData(
        Batches(sets["train"], cfg.batch_size, **shard),
        sets["valid"].tensor(),
        sets["test"].tensor(),
        sets["valid"].labels,
        sets["test"].labels,
    )


def _check_positive(**values: int) -> None:
    """Every rank checks its arguments before any work (one rank failing alone would
    leave the others waiting in a collective)."""
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}; accepted: a positive integer")


def _per_batch(
    images: Tensor,
    batch: int,
    fn: Callable[[Tensor], tuple[Tensor, ...]],
    seed: int | None,
    world: World,
) -> list[Tensor]:
    """``fn`` on each batch of ``images``, results concatenated over all images in order.

    With ``seed``, batch b draws its random numbers from ``derive_seed(seed, 3, b)`` (the
    global RNG is left as it was), so the result does not depend on which process did
    which batch: rank r of W does batches r, r + W, …, and the per-image results are
    gathered on every rank — the same numbers as one process, exactly.
    """
    if world.distributed and seed is None:
        raise ValueError("a sharded evaluation needs a seed (the result must not depend on W)")
    starts = range(0, images.shape[0], batch)
    mine: dict[int, tuple[Tensor, ...]] = {}
    for b in range(world.rank, len(starts), world.size):
        x = images[starts[b] : starts[b] + batch]
        if seed is None:
            mine[b] = fn(x)
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, 3, b))
            mine[b] = fn(x)
    merged: dict[int, tuple[Tensor, ...]] = {}
    for part in world.gather(mine):
        merged.update(part)
    columns = zip(*(merged[b] for b in range(len(starts))))
    return [torch.cat(c) for c in columns]


@torch.no_grad()
def evaluate(
    vae: VAE,
    images: Tensor,
    samples: int,
    chunk: int,
    batch: int,
    iwae_k: int | None = None,
    seed: int | None = None,
    world: World = SINGLE,
) -> dict[str, float]:
    """Importance-sampled log p(x) over ``images`` with K = ``samples`` per image.

    Batched over images (``batch`` at a time) and samples (``chunk`` at a time) with a
    streaming log-sum-exp; returns the mean log p(x), its Monte Carlo standard error, the
    NLL, and from the same samples the ELBO and IWAE_k (k = ``iwae_k``). With ``seed``
    the estimate is reproducible and independent of how it is sharded; with a
    multi-process ``world`` the batches are shared out and the result gathered exactly
    (:func:`_per_batch`).
    """
    _check_positive(samples=samples, chunk=chunk, batch=batch)
    was_training = vae.training
    vae.eval()
    k = None if iwae_k is None else min(iwae_k, chunk, samples)

    def one(x: Tensor) -> tuple[Tensor, ...]:
        h = vae.posterior.context(x)
        est = importance_log_likelihood(partial(vae.log_weights, x, h=h), samples, chunk, k)
        assert est.elbo is not None
        iwae = est.iwae if est.iwae is not None else torch.full_like(est.elbo, math.nan)
        return est.log_px, est.stderr, est.elbo, iwae

    try:
        lp, se, el, iw = _per_batch(images, batch, one, seed, world)
    finally:
        vae.train(was_training)
    log_px, stderr = mean_with_stderr(lp, se)
    out = {
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "elbo": float(el.mean()),
        "samples": samples,
        "images": int(images.shape[0]),
    }
    if k is not None:
        out[f"iwae_{k}"] = float(iw.mean())
    return out


OPTIMIZERS = {
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "adamax": lambda p, lr: torch.optim.Adamax(p, lr=lr),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr, centered=True),
}


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
        torch.manual_seed(config.seed)
        self.data = data if data is not None else load_vae_data(config.data, config.seed, world)
        self.vae = build_vae(config)
        if world.rank > 0:  # one seed per rank; rank 0 continues the single-process stream
            torch.manual_seed(derive_seed(config.seed, 2, world.rank))
        self.loss = _Loss(self.vae, config.objective)
        self.forward: torch.nn.Module = self.loss
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(self.loss, gradient_as_bucket_view=True)
        self.optimizer = OPTIMIZERS[config.optim.name](self.vae.parameters(), config.optim.lr)
        self.ema: AveragedModel | None = None
        if config.optim.ema is not None:
            avg = get_ema_multi_avg_fn(config.optim.ema)
            self.ema = AveragedModel(self.vae, multi_avg_fn=avg, use_buffers=True)
        self.guard = StepGuard(config.faults)
        self.step = 0
        self.seconds = 0.0
        self.best: dict[str, Any] = {}
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
        state unchanged; the step still counts and ``"finite"`` is 0. The returned bound
        is the global batch mean (NaN if not ``log_value``). With several processes,
        ``self.seconds`` is rank 0's clock on every rank whenever the run has a
        ``max_seconds`` budget (its schedule and its stop follow the clock).
        """
        cfg = self.config
        frac = progress(self.step, self.seconds, cfg.steps, cfg.max_seconds)
        lr = cfg.optim.lr * self.guard.lr_scale * lr_factor(self.step, frac, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = self.data.train
        x = batches.batch(self.step)
        n = batches.global_size(self.step)  # all ranks' images in this step
        self.optimizer.zero_grad(set_to_none=True)
        loss, value_sum = self.forward(x, self.step, log_value, len(x) * self.world.size / n)
        # × (1 + 0·loss) is × 1 exactly for a finite loss and × NaN otherwise: a non-finite
        # loss on any rank makes the averaged gradient non-finite on every rank, so one
        # local check of the (identical) gradients is a decision all ranks share.
        (loss * (1.0 + 0.0 * loss.detach())).backward()
        params = list(self.vae.parameters())
        if cfg.optim.grad_clip is not None:
            finite = bool(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip).isfinite())
        else:
            finite = bool(grads_finite(params))
        elapsed = time.perf_counter() - self._t0
        bound = math.nan
        if self.world.distributed and (log_value or cfg.max_seconds is not None):
            f64 = torch.float64
            local = torch.stack([value_sum.detach().to(f64), torch.tensor(elapsed, dtype=f64)])
            if not self.world.is_main:
                local[1] = 0.0
            status = self.world.sum(local)  # the bound's sum over ranks, rank 0's clock
            bound, elapsed = float(status[0]) / n, float(status[1])
        elif log_value:
            bound = float(value_sum) / n
        self.seconds = elapsed
        if finite:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.vae)
        self.step += 1
        return {"bound": bound, "lr": lr, "finite": float(finite)}

    def encode(self) -> bytes | None:
        """The checkpoint file's bytes on rank 0, None elsewhere (a collective)."""
        return _main_only(self.world, encode_checkpoint, self.state_dict())

    def rollback(self, path: Path) -> None:
        """Go back to the checkpoint at ``path`` (:func:`_restore` with ``rollback``)."""
        _restore(self, path, rollback=True)

    def validate(self) -> dict[str, float]:
        e = self.config.eval
        valid = self.data.valid[: e.valid_images]
        seed = derive_seed(self.config.seed, 4, self.step)
        chunk = min(e.chunk, e.valid_samples)
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
            "rng": self.world.gather(torch.get_rng_state()),
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
            self.optimizer.load_state_dict(state["optimizer"])
            step, seconds = int(state["step"]), float(state["seconds"])
            best = dict(state["best"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
            if self.world.rank < len(rng):
                torch.set_rng_state(rng[self.world.rank])
            else:
                torch.manual_seed(derive_seed(self.config.seed, 2, self.world.rank, step))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{source} does not fit this configuration ({brief(err)}); "
                "resume with the config the run was started with, or start a new run"
            ) from None
        self.step, self.seconds, self.best = step, seconds, best
        self.guard.load_state_dict(state.get("guard", {}))


def _after_validation(
    trainer: VAETrainer,
    run_dir: Path,
    logger: RunLogger,
    latent: _LatentTracker | None,
    step: int,
    values: dict[str, float],
) -> None:
    logger.log(step, values)
    _images(trainer, run_dir, logger, step)
    if latent is not None:
        latent.snapshot(step)


def _images(trainer: VAETrainer, run_dir: Path, logger: RunLogger | None, step: int) -> None:
    from vilab.plots.images import grid, pairs, save_grid

    vae = trainer.eval_vae
    torch.manual_seed(1234 + step)  # fixed pictures, independent of the training RNG
    samples = grid(vae.sample(64), nrow=8)
    x = trainer.data.test[:32]
    recon = pairs(x, vae.reconstruct(x))
    save_grid(samples, run_dir / "samples.png", "samples")
    save_grid(recon, run_dir / "reconstructions.png", "input | reconstruction")
    if logger is not None and logger.writer is not None:
        logger.writer.add_image("samples", samples.unsqueeze(0), step)
        logger.writer.add_image("reconstructions", recon.unsqueeze(0), step)


def _on_main(world: World, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on rank 0, its result (or its exception, raised) on every rank."""
    result: tuple[bool, Any] = (True, None)
    if world.is_main:
        try:
            result = (True, fn(*args))
        except BaseException as err:  # noqa: BLE001 - re-raised on every rank below
            result = (False, err)
    ok, value = world.broadcast(result)
    if not ok:
        raise value
    return value


def _main_only(world: World, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on rank 0 — file writes, logging — with its exception raised on every
    rank (so that no rank waits for a crashed one); its result on rank 0, None elsewhere."""
    out: list[Any] = []
    _on_main(world, lambda: out.append(fn(*args)))
    return out[0] if out else None


def _restore(trainer: VAETrainer, path: Path, rollback: bool = False) -> None:
    """Load ``path`` into the trainer on every rank (rank 0 reads it). A rollback keeps
    the fault counts, the lowered learning rate, the best validation so far and the
    training clock (a time budget counts the lost steps too)."""
    state = _on_main(trainer.world, load_checkpoint, path)
    kept = (trainer.guard.state_dict(), trainer.best, trainer.seconds)
    trainer.load_state_dict(state, f"checkpoint {str(path)!r}")
    if rollback:
        trainer.guard.load_state_dict(kept[0])
        trainer.best, trainer.seconds = kept[1], kept[2]


def _hooks(
    trainer: VAETrainer, run_dir: Path, logger: RunLogger, latent: _LatentTracker | None
) -> Hooks:
    """The VAE's side of the step loop: records through rank 0, and validation (with
    ``best.pt``, pictures and the latent animation) every ``eval_every`` steps."""
    config, world = trainer.config, trainer.world

    def log(step: int, values: dict[str, float]) -> None:
        if "bound" in values:
            values["images_per_second"] = step * config.data.batch_size / trainer.seconds
        _main_only(world, logger.log, step, values)

    def validate(step: int) -> None:
        if step % config.eval_every and step != config.steps:
            return
        rng_state = torch.get_rng_state()
        v = trainer.validate()
        if v["valid_log_px"] > trainer.best.get("valid_log_px", -math.inf):
            trainer.best = {"step": step, **v}
            best = {"step": step, "model": trainer.eval_vae.state_dict()}
            _main_only(world, save_checkpoint, run_dir / "best.pt", best)
        _main_only(world, _after_validation, trainer, run_dir, logger, latent, step, v)
        torch.set_rng_state(rng_state)
        trainer.start_clock()  # evaluation is not training time

    return Hooks(log, partial(_main_only, world, logger.rewind), logger.advance, validate)


def train_vae(
    config: TrainConfig,
    run_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    data: VAEData | None = None,
    tensorboard: bool = True,
    world: World = SINGLE,
) -> dict[str, Any]:
    """Train, evaluate on the test set, and write the run directory; returns metrics.

    ``config.threads`` (if set) sets torch's thread count for the process. Everything is
    validated (config, data, and with ``resume`` the checkpoint) before the first file is
    written. A checkpoint is written at the start, every ``checkpoint_every`` steps (once
    the next step is finite) and at the end; a non-finite step is skipped, and repeated
    ones roll back to the last checkpoint (:mod:`vilab.train.guard`). Ctrl-C stops at the
    end of the current step and writes its checkpoint (a second one, or one under
    torchrun, stops at once and keeps the last checkpoint written). In a multi-process
    ``world`` only rank 0 writes, and every rank returns the same metrics.
    """
    run_dir = Path(run_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    trainer = VAETrainer(config, data, world)
    ckpt = run_dir / "checkpoint.pt"
    resume = resume and _on_main(world, ckpt.exists)
    if resume:
        _restore(trainer, ckpt)
    main = world.is_main

    def prepare() -> RunLogger:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)
        if not resume:
            (run_dir / "best.pt").unlink(missing_ok=True)  # never evaluate an earlier run's
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
        return RunLogger(run_dir, config.steps, trainer.step, progress, tensorboard)

    logger = _main_only(world, prepare) or RunLogger(run_dir, 0, enabled=False)
    latent = _LatentTracker(trainer) if config.latent_dim == 2 and main else None
    guard = trainer.guard
    ckpts = GoodCheckpoints(ckpt, partial(_main_only, world, atomic_write_bytes))
    interrupted = False
    with contextlib.ExitStack() as stack:
        stop_requested = stack.enter_context(stop_at_step_boundary(not world.distributed))
        stack.callback(logger.close)
        if not resume:  # what a rollback before the first checkpoint finds
            ckpts.write(trainer.encode())
        try:
            hooks = _hooks(trainer, run_dir, logger, latent)
            interrupted = run_steps(trainer, config, ckpts, hooks, stop_requested)
        except KeyboardInterrupt:  # a second Ctrl-C, or one under torchrun: no new file
            interrupted = True
    metrics: dict[str, Any] = {
        "data": config.data.name,
        "posterior": config.posterior.kind,
        "objective": config.objective.kind,
        "latent_dim": config.latent_dim,
        "parameters": sum(p.numel() for p in trainer.vae.parameters()),
        "steps": trainer.step,
        "seconds": trainer.seconds,
        "images_per_second": trainer.step * config.data.batch_size / max(trainer.seconds, 1e-9),
        "world_size": world.size,
        "best_valid": trainer.best,
        **guard.metrics(),
        "interrupted": interrupted,
    }
    if config.final_eval and not interrupted:
        best = run_dir / "best.pt"
        if _on_main(world, best.exists):
            state = _on_main(world, lambda: load_checkpoint(best))
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
            seed=derive_seed(config.seed, 5),
            world=world,
        )
        test["seconds"] = time.perf_counter() - t0
        metrics["test"] = test
    if main:
        _figures(trainer, run_dir, latent)
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _figures(trainer: VAETrainer, run_dir: Path, latent: _LatentTracker | None) -> None:
    from vilab.plots.curves import plot_vae_curves

    plot_vae_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "training.png")
    _images(trainer, run_dir, None, trainer.step)
    if latent is not None:
        latent.save(run_dir)


class _LatentTracker:
    """For a 2-D latent: the test posterior means over training (seed 004's animation),
    the final latent scatter coloured by label and the decoded manifold (seed 003)."""

    def __init__(self, trainer: VAETrainer, n: int = 2000) -> None:
        self.trainer, self.n = trainer, n
        self.frames: list[tuple[int, Tensor]] = []

    @torch.no_grad()
    def means(self) -> Tensor:
        x = self.trainer.data.test[: self.n]
        z, _ = self.trainer.eval_vae.posterior.rsample_and_log_prob(16, x)
        return z.mean(0)

    def snapshot(self, step: int) -> None:
        self.frames.append((step, self.means()))

    def save(self, run_dir: Path) -> None:
        from vilab.plots.latent import latent_animation, latent_scatter, manifold

        labels = self.trainer.data.test_labels
        labels = None if labels is None else labels[: self.n]
        latent_scatter(self.means(), labels, run_dir / "latent.png")
        manifold(self.trainer.eval_vae, run_dir / "manifold.png")
        if self.frames:
            latent_animation(self.frames, labels, run_dir / "latent.gif")


@torch.no_grad()
def evaluate_ais(
    vae: VAE,
    images: Tensor,
    chains: int = 16,
    num_dists: int = 500,
    num_leapfrog: int = 5,
    batch: int = 100,
    init: str = "posterior",
    seed: int | None = None,
    world: World = SINGLE,
) -> dict[str, Any]:
    """log p(x) by annealed importance sampling (:func:`vilab.estimators.ais.ais`).

    The path starts at the encoder's q(z | x) — in the base space of a flow posterior,
    where the start density is the Gaussian base and the target is
    p(x, T(ε)) |det ∂T/∂ε| (seed 002) — or at the prior (``init="prior"``). Batched over
    ``batch`` images and ``chains`` chains each. A stochastic lower bound on log p(x).
    ``seed`` and ``world`` as for :func:`evaluate`.
    """
    from vilab.estimators.ais import ais
    from vilab.families.gaussian import StandardNormal
    from vilab.flows.flow import FlowFamily

    if init not in ("posterior", "prior"):
        raise ValueError(f"init must be 'posterior' or 'prior', got {init!r}")
    _check_positive(chains=chains, num_dists=num_dists, num_leapfrog=num_leapfrog, batch=batch)
    was_training = vae.training
    vae.eval()
    requires = [p.requires_grad for p in vae.parameters()]
    for p in vae.parameters():
        p.requires_grad_(False)
    family, model = vae.posterior.family, vae.model

    def one(x: Tensor) -> tuple[Tensor, ...]:
        h = vae.posterior.context(x)
        if init == "prior":
            base: Any = StandardNormal(vae.latent_dim, context_dim=h.shape[-1]).to(h.dtype)
            push = None
        elif isinstance(family, FlowFamily):
            base, push = family.base, family.push
        else:
            base, push = family, None

        def log_target(e: Tensor) -> Tensor:
            if push is None:
                return model.log_joint(x, e)
            z, logdet = push(e, h)
            return model.log_joint(x, z) + logdet

        est = ais(
            partial(base.log_prob, context=h),
            lambda c: base.rsample_and_log_prob(c, h)[0],
            log_target,
            chains,
            num_dists,
            num_leapfrog,
        )
        return est.log_z, est.stderr, torch.full_like(est.log_z, est.accept_rate)

    try:
        lp, se, acc = _per_batch(images, batch, one, seed, world)
    finally:
        for p, r in zip(vae.parameters(), requires):
            p.requires_grad_(r)
        vae.train(was_training)
    log_px, stderr = mean_with_stderr(lp, se)
    return {
        "method": "ais",
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "chains": chains,
        "num_dists": num_dists,
        "num_leapfrog": num_leapfrog,
        "init": init,
        "accept_rate": float(acc.mean()),
        "images": int(images.shape[0]),
    }


def load_model(vae: VAE, path: Path) -> None:
    """Load the weights to evaluate from a checkpoint into ``vae``: ``best.pt``'s model, a
    training checkpoint's moving average of the weights if the run kept one
    (``optim.ema``), else its model.

    Raises:
        ValueError: the file is not a checkpoint of a model with this configuration.
    """
    state = load_checkpoint(path)
    try:
        if "ema" in state:  # a training checkpoint of a run with optim.ema: the average
            n = len("module.")
            weights = {k[n:]: v for k, v in state["ema"].items() if k.startswith("module.")}
        else:
            weights = state["model"]
        vae.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit the run's config.yaml ({brief(err)})"
        ) from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with a clear error if it is not one."""
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); delete or repair it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} holds a {type(value).__name__}, not a JSON object")
    return value


def evaluate_run(
    run_dir: str | Path,
    samples: int | None = None,
    chunk: int | None = None,
    batch: int | None = None,
    split: str = "test",
    data_dir: str | None = None,
    method: str = "is",
    chains: int = 16,
    num_dists: int = 500,
    num_leapfrog: int = 5,
    images: int | None = None,
    init: str = "posterior",
    world: World = SINGLE,
) -> dict[str, Any]:
    """``vilab eval``: log p(x) of a trained run's best (else last) model, by importance
    sampling (``method="is"``) or annealed importance sampling (``"ais"``); the result
    is merged into the run's ``metrics.json`` under ``eval_<split>`` / ``ais_<split>``.
    Seeded by the run's seed; in a multi-process ``world`` the images are shared out and
    the estimate is the same as in one process."""
    from vilab.config import load_train_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{str(run_dir)!r} is not a vilab train run (no config.yaml)")
    overrides = [f"data.data_dir={data_dir}"] if data_dir else []
    config = load_train_config(run_dir / "config.yaml", overrides)
    e = config.eval
    samples, chunk, batch = samples or e.samples, chunk or e.chunk, batch or e.batch
    vae = build_vae(config)
    weights = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "checkpoint.pt"
    load_model(vae, weights)
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    if method not in ("is", "ais"):
        raise ValueError(f"method must be 'is' or 'ais', got {method!r}")
    data = load_vae_data(config.data, config.seed)
    x = data.test if split == "test" else data.valid
    x = x[:images] if images else x
    seed = derive_seed(config.seed, 5)
    t0 = time.perf_counter()
    if method == "is":
        result = evaluate(vae, x, samples, min(chunk, samples), batch, 50, seed, world)
    else:
        result = evaluate_ais(
            vae, x, chains, num_dists, num_leapfrog, min(batch, 100), init, seed, world
        )
    result["seconds"] = time.perf_counter() - t0
    result["weights"] = weights.name
    result["world_size"] = world.size
    if world.is_main:
        path = run_dir / "metrics.json"
        metrics = read_json(path) if path.exists() else {}
        metrics[f"{'eval' if method == 'is' else 'ais'}_{split}"] = result
        atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return result
