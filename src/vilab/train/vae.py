"""The VAE's trainer: builds the model, its data and optimizer, and takes one step.

:class:`VAETrainer` builds what it trains, steps and saves and restores its state
(:class:`~vilab.train.state.TrainerState`); validation, ``best.pt``, the test evaluation
and the figures are the run's (:mod:`vilab.commands.train`). The batch at step s depends
only on (seed, s), and the RNG state is in the checkpoint, so a resumed run continues
exactly.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vilab.config import TrainConfig
from vilab.config.train import BINARY_SETS
from vilab.core.device import resolve_device, rng_state, set_matmul_precision, set_rng_state
from vilab.core.seeding import Stream, derive_seed
from vilab.data.sources import source_from
from vilab.data.vae_data import VAEData, load_vae_data, vae_data_from_source
from vilab.distributed import SINGLE, World
from vilab.train.guard import backward_finite, ema_update_if_finite, step_if_finite
from vilab.train.optim import load_optimizer_state, make_optimizer, sync_free
from vilab.train.schedule import apply_lr, progress
from vilab.train.state import TrainerState
from vilab.train.steps import StepResult
from vilab.vae import VAE, build_vae, likelihood_of, vae_objective

LEGACY = (*BINARY_SETS, "mnist_gray")


def vae_data_for(config: TrainConfig, data: Any, world: World = SINGLE) -> VAEData:
    """The run's data: ``data`` itself if a :class:`VAEData`; a tensor, array, torch
    ``Dataset`` or dict of splits (:func:`~vilab.data.sources.source_from`); else the
    ``data`` section's set. Served as the likelihood takes it, checked before training."""
    values = likelihood_of(config).values
    if config.data.name == "mnist_gray" and config.likelihood == "gaussian":
        values = "continuous"
    if data is None:
        return load_vae_data(config.data, config.seed, world, values)
    if isinstance(data, VAEData):
        return data
    source = source_from(data, config.data)
    return vae_data_from_source(source, config.data, config.seed, world, values)


def describe_data(config: TrainConfig, data: VAEData) -> str:
    """One line: the data set, its split sizes, (C, H, W) and what the likelihood gets."""
    sizes = f"{len(data.train.dataset)} / {len(data.valid)} / {len(data.test)}"
    values = likelihood_of(config).values
    return (
        f"data: {config.data.name}, {sizes} images of (C, H, W) = {tuple(data.image_shape)}, "
        f"likelihood={config.likelihood} on {values} values"
    )


def as_python_data(config: TrainConfig) -> TrainConfig:
    """``config`` with ``data.name=python`` (data handed in from Python), revalidated."""
    if config.data.name == "python":
        return config
    dumped = config.model_dump()
    dumped["data"]["name"] = "python"
    return type(config).model_validate(dumped)


def with_image_shape(
    config: TrainConfig, shape: tuple[int, int, int], sha256: str | None = None
) -> TrainConfig:
    """``config`` with ``data.image_shape`` set to the data's (C, H, W) and ``data.sha256``
    to its files' digest, so that the run's config.yaml records them (MNIST-sized runs of
    the MNIST sets keep the shape unset, as before); a different shape given in the config
    is refused."""
    given = config.data.image_shape
    if given is not None and tuple(given) != tuple(shape):
        raise ValueError(f"data.image_shape={list(given)}, but the images are {list(shape)}")
    if given is None and tuple(shape) == (1, 28, 28) and config.data.name in LEGACY:
        return config
    update: dict[str, Any] = {"image_shape": tuple(shape)}
    if sha256 is not None:
        update["sha256"] = sha256
    data = config.data.model_copy(update=update)
    return config.model_copy(update={"data": data})


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


class VAETrainer(TrainerState):
    """Owns the model, optimizer, data and the step; ``train_step`` does one update.

    In a multi-process ``world`` (``torchrun``) the loss is wrapped in
    ``DistributedDataParallel`` and each rank trains on its share of the global batch.
    ``best`` (the best validation so far, set by the run) is part of the checkpoint and
    survives a rollback.
    """

    kept_on_rollback = ("seconds", "best")

    def __init__(self, config: TrainConfig, data: Any = None, world: World = SINGLE) -> None:
        super().__init__(config.faults, world)
        self.config = config
        self.device = resolve_device(config.device, world.local_rank if world.distributed else None)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            set_matmul_precision(config.tf32)  # process-wide: set only for a GPU run
        torch.manual_seed(config.seed)
        if data is not None and not isinstance(data, VAEData):
            config = as_python_data(config)
        data = vae_data_for(config, data, world)
        self.config = config = with_image_shape(config, data.image_shape, data.sha256)
        if world.is_main and config.data.name not in LEGACY:
            print(describe_data(config, data), file=sys.stderr)
        self.data = data.to(self.device)
        self.vae = build_vae(config).to(self.device)  # built on the CPU: the same weights anywhere
        if world.rank > 0:  # one seed per rank; rank 0 continues the single-process stream
            torch.manual_seed(derive_seed(config.seed, Stream.RANK, world.rank))
        self.loss = _Loss(self.vae, config.objective)
        self.forward, self.cuda_graphs = self._wrapped_loss()
        o = config.optim
        self.optimizer = make_optimizer(o.name, self.vae.parameters(), o.lr, self.device)
        #: Apply steps conditionally on the device and read the finite flags back at the
        #: loop's sync points (:mod:`vilab.train.guard`): on a GPU, where a read-back
        #: every step stalls it.
        self.sync_free = sync_free(self.device)
        self.ema: AveragedModel | None = None
        if o.ema is not None:
            avg = get_ema_multi_avg_fn(o.ema)
            self.ema = AveragedModel(self.vae, multi_avg_fn=avg, use_buffers=True)
        self.best: dict[str, Any] = {}

    def _wrapped_loss(self) -> tuple[Any, bool]:
        """The loss as the step calls it — wrapped in ``DistributedDataParallel`` with
        several processes and in ``torch.compile`` with ``compile`` (CUDA graphs on one
        GPU: the step's launches replayed at once) — and whether CUDA graphs are used."""
        forward: Any = self.loss
        world = self.world
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(
                self.loss, device_ids=ids, gradient_as_bucket_view=True
            )
        if not self.config.compile:
            return forward, False
        cuda_graphs = self.device.type == "cuda" and not world.distributed
        return torch.compile(forward, mode="reduce-overhead" if cuda_graphs else None), cuda_graphs

    @property
    def eval_vae(self) -> VAE:
        """The model to evaluate: the moving average of the weights if ``optim.ema``."""
        return self.vae if self.ema is None else self.ema.module  # type: ignore[return-value]

    def train_step(self, log_value: bool = True) -> StepResult:
        """One update; ``log_value=False`` may skip work only the logged bound needs (and,
        with several processes, the collective that averages it).

        A non-finite loss or gradient (on any rank) leaves the parameters and optimizer
        state unchanged; the step still counts and ``finite`` is False — or, with
        ``sync_free`` (a GPU), a 0-d bool tensor on the device that the loop reads back
        later (:mod:`vilab.train.steps`): the step then reads nothing back unless its
        bound is logged. The returned bound is the global batch mean (NaN if not
        ``log_value``). With several processes, ``self.seconds`` is rank 0's clock on
        every rank whenever the run has a ``max_seconds`` budget.
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
        bound, self.seconds = self._bound_and_clock(value_sum, n, log_value)
        finite: bool | Tensor
        if self.sync_free and self.optimizer.state:  # the first step is checked on the host
            step_if_finite(self.optimizer, ok)
            if self.ema is not None:
                ema_update_if_finite(self.ema, self.vae, cfg.optim.ema or 0.0, ok)
            finite = ok
        else:
            finite = bool(ok)
            if finite:
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.vae)
        self.step += 1
        return StepResult({"bound": bound, "lr": lr}, finite)

    def _bound_and_clock(self, value_sum: Tensor, n: int, log_value: bool) -> tuple[float, float]:
        """The global batch mean of the bound (NaN unless ``log_value``) and the clock:
        rank 0's on every rank when the run has a ``max_seconds`` budget (one collective
        carries both)."""
        elapsed, bound = self.clock(), math.nan
        if self.world.distributed and (log_value or self.config.max_seconds is not None):
            f64, cpu = torch.float64, torch.device("cpu")
            value = value_sum.detach().to(cpu, f64) if log_value else torch.zeros((), dtype=f64)
            local = torch.stack([value, torch.tensor(elapsed, dtype=f64)])
            if not self.world.is_main:
                local[1] = 0.0
            status = self.world.sum(local)  # the bound's sum over ranks, rank 0's clock
            return float(status[0]) / n, float(status[1])
        if log_value:
            bound = float(value_sum) / n
        return bound, elapsed

    def own_state(self) -> dict[str, Any]:
        """Model, optimizer, the best validation, every rank's RNG state (gathered: a
        collective, so every rank must call it at the same step) and the moving average."""
        return {
            "best": self.best,
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.world.gather(rng_state(self.device)),
            "world_size": self.world.size,
            "optimizer_name": self.config.optim.name,
            **({} if self.ema is None else {"ema": self.ema.state_dict()}),
        }

    def load_own_state(self, state: dict[str, Any]) -> None:
        """Written at any world size: rank r takes the RNG state saved by rank r; a rank
        the checkpoint did not have gets a fresh stream seeded from (seed, rank, step)."""
        name = state.get("optimizer_name", self.config.optim.name)
        if name != self.config.optim.name:
            raise ValueError(
                f"it was written with optim.name={name}, this config has "
                f"optim.name={self.config.optim.name}"
            )
        self.vae.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        best = dict(state["best"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if self.world.rank < len(rng):
            set_rng_state(rng[self.world.rank], self.device)
        else:
            step = int(state["step"])
            torch.manual_seed(derive_seed(self.config.seed, Stream.RANK, self.world.rank, step))
        self.best = best
