"""Data-parallel training with torch.distributed: the process group, collectives, launch.

``vilab train`` runs data-parallel when started by ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``)::

    torchrun --nproc_per_node=2 -m vilab train --config configs/vae_seed004_mean_field.yaml

or with ``vilab train --nproc 2 …``, which starts the same workers on this machine with
torchrun's launcher (:func:`launch`). The backends: gloo for CPU tensors and, on a machine
with CUDA, NCCL for CUDA tensors (one process group ``"cpu:gloo,cuda:nccl"``: the
gradients of a GPU run are averaged by NCCL, the small objects every rank exchanges —
checkpoints, per-image results, decisions — go through gloo). One process per GPU: rank r
on a machine trains on ``cuda:LOCAL_RANK`` (:func:`vilab.core.device.resolve_device`). The
division of labour (implemented in :mod:`vilab.train.vae`):

- **Data.** ``data.batch_size`` is the *global* batch. The batch at step s is the same
  for every world size (:class:`vilab.data.Batches`); rank r of W trains on its rows
  r, r + W, r + 2W, … — the rule of ``torch.utils.data.DistributedSampler`` applied to each
  global batch rather than to each epoch, so that the union of the shards is exactly the
  single-process batch and a checkpoint resumes at any world size.
- **Gradients.** ``DistributedDataParallel`` averages them across ranks; each rank's
  loss is its shard's sum divided by the global batch size times W, so the average is the
  gradient of the global batch mean, as in one process.
- **Randomness.** One seed per rank: rank 0 continues the stream seeded by ``seed``,
  rank r > 0 is seeded ``derive_seed(seed, 2, r)``; every rank's RNG state goes into the
  checkpoint.
- **Decisions.** Skipping a non-finite step (and so rolling back or stopping) is decided
  from the averaged gradients, identical on every rank; a non-finite loss on any rank is
  folded into them. The bound is summed across ranks on log steps, and rank 0's clock is
  shared every step of a run with ``max_seconds`` (its schedule and stop follow it), so
  all ranks take the same branch with no other per-step collective.
- **Files.** Only rank 0 writes the run directory and checkpoints, and an error while it
  writes is raised on every rank; on resume rank 0 reads the checkpoint and broadcasts it
  (no shared file system needed for that).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` (1 for a single process),
    and ``local_rank`` among the processes on this machine (its GPU, in a CUDA run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, logs and shows progress."""
        return self.rank == 0

    # -- collectives (no-ops in a single process) -----------------------------------------
    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum over ranks (a float64 copy; ``values`` is left unchanged)."""
        out = values.detach().to(torch.float64).clone()
        if self.distributed:
            dist.all_reduce(out)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled between our own processes only)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


SINGLE = World()


def world_from_env(timeout_s: float = 1800.0) -> World:
    """The :class:`World` of this process, joining the process group if ``torchrun``
    started it (``WORLD_SIZE`` > 1); a single process otherwise.

    Raises:
        ValueError: the ``torchrun`` environment is incomplete or inconsistent.
    """
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}, RANK={os.environ.get('RANK')!r}: "
            "expected integers (as set by torchrun)"
        ) from None
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} of WORLD_SIZE={size}: expected 0 ≤ RANK < WORLD_SIZE")
    if size == 1:
        return SINGLE
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed: run a single process")
    if not dist.is_initialized():
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise ValueError(f"WORLD_SIZE={size} but {key} is not set: start with torchrun")
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return World(dist.get_rank(), dist.get_world_size(), local)


def shutdown(world: World) -> None:
    """Leave the process group (if this process joined one), after a barrier so that no
    rank tears down its connections while another still uses them."""
    if world.distributed and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # a peer is gone already (it failed): nothing to wait for
            pass
        dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m vilab <argv>`` in ``nproc`` processes on this machine, as
    ``torchrun --standalone --nproc-per-node=nproc`` does (``torch.distributed.launcher``),
    and return 0 if every one succeeded, else the first failure's exit code. Each process
    gets ``$OMP_NUM_THREADS`` torch threads if set, else the CPU count divided among the
    processes; a ``threads`` key in the run's config still wins inside the run."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: expected a positive number of processes")
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_endpoint="localhost:0",
        rdzv_backend="c10d",
        max_restarts=0,
    )
    quiet = logging.getLogger("torch.distributed.elastic")
    level, quiet.level = quiet.level, logging.CRITICAL  # the workers report their own errors
    try:
        elastic_launch(config, sys.executable)("-m", "vilab", *argv)
    except ChildFailedError as err:  # each worker has printed its own "vilab: error: …"
        codes = [f.exitcode for f in err.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    except SignalException as err:  # Ctrl-C or a kill of the launcher: the workers stopped
        return 128 + int(err.sigval)
    finally:
        quiet.setLevel(level)
    return 0


def on_main(world: World, fn: Callable[..., Any], *args: Any) -> Any:
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


def main_only(world: World, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on rank 0 — file writes, logging — with its exception raised on every
    rank (so that no rank waits for a crashed one); its result on rank 0, None elsewhere."""
    out: list[Any] = []
    on_main(world, lambda: out.append(fn(*args)))
    return out[0] if out else None
