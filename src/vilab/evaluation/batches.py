"""Evaluation over many images: batched, seeded per batch, sharded over processes with
results identical to one process, sized for the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from vilab.core.device import fork_rng
from vilab.core.progress import Progress
from vilab.core.seeding import Stream, derive_seed
from vilab.distributed import World
from vilab.vae import VAE


def check_positive(**values: int) -> None:
    """Every rank checks its arguments before any work (one rank failing alone would
    leave the others waiting in a collective)."""
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}; accepted: a positive integer")


def per_batch(
    images: Tensor,
    batch: int,
    fn: Callable[[Tensor], tuple[Tensor, ...]],
    seed: int | None,
    world: World,
    progress: str | None = None,
    hint: str = "",
) -> list[Tensor]:
    """``fn`` on each batch of ``images``, results concatenated over all images in order.

    With ``seed``, batch b draws its random numbers from ``derive_seed(seed, 3, b)`` (the
    global RNG is left as it was), so the result does not depend on which process did
    which batch: rank r of W does batches r, r + W, …, and the per-image results are
    gathered on every rank — the same numbers as one process, exactly. The per-image
    results come back as CPU tensors, whatever the device of ``images``.

    With ``progress`` (a label, e.g. ``"log p(x), K=5000"``) rank 0 shows a bar of its
    images with an ETA and, after its first batch, the cost of the whole and ``hint``
    (:class:`vilab.core.progress.Progress`); it draws no random numbers.
    """
    if world.distributed and seed is None:
        raise ValueError("a sharded evaluation needs a seed (the result must not depend on W)")
    starts = range(0, images.shape[0], batch)
    todo = range(world.rank, len(starts), world.size)
    share = sum(min(batch, images.shape[0] - starts[b]) for b in todo)
    where = f" on {world.size} processes" if world.distributed else ""
    detail = f"{images.shape[0]} images in batches of {batch}{where}"
    what = progress if world.is_main else None
    mine: dict[int, tuple[Tensor, ...]] = {}
    with Progress(what, share, "img", len(todo), detail, hint) as bar:
        for b in todo:
            x = images[starts[b] : starts[b] + batch]
            if seed is None:
                out = fn(x)
            else:
                with fork_rng(x.device):
                    torch.manual_seed(derive_seed(seed, Stream.EVAL_BATCH, b))
                    out = fn(x)
            mine[b] = tuple(t.cpu() for t in out)  # gathered across ranks and devices
            bar.advance(x.shape[0])
    merged: dict[int, tuple[Tensor, ...]] = {}
    for part in world.gather(mine):
        merged.update(part)
    columns = zip(*(merged[b] for b in range(len(starts))))
    return [torch.cat(c) for c in columns]


#: Samples per chunk and images per batch of an evaluation on the CPU when not given.
CPU_CHUNK, CPU_BATCH = 100, 20
#: Images per batch on a GPU when not given (the chunk then fills the free memory).
GPU_BATCH = 500


@torch.no_grad()
def eval_sizes(
    vae: VAE, images: Tensor, samples: int, chunk: int | None, batch: int | None
) -> tuple[int, int]:
    """``(chunk, batch)`` of an evaluation: the given ones, else on the CPU 100 samples ×
    20 images, and on a GPU 500 images with the chunk sized from free memory — a probe
    of 8 samples measures the peak memory per sample of the batch, and the chunk takes
    half of what :func:`torch.cuda.mem_get_info` reports free (at most ``samples``)."""
    device = images.device
    if device.type != "cuda":
        return min(chunk or CPU_CHUNK, samples), batch or CPU_BATCH
    batch = batch or min(GPU_BATCH, max(1, images.shape[0]))
    if chunk:
        return min(chunk, samples), batch
    probe = 8
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with fork_rng(device):
        vae.log_weights(images[:batch], probe)
    per_sample = max(torch.cuda.max_memory_allocated(device) - base, 1) / probe
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(samples, int(0.5 * free / per_sample))), batch


@contextmanager
def evaluating(vae: VAE, frozen: bool = False) -> Iterator[None]:
    """``vae`` in eval mode (and with ``frozen`` its parameters without gradients, for a
    sampler that differentiates in z only) for the block; put back as it was after."""
    was_training = vae.training
    requires = [p.requires_grad for p in vae.parameters()]
    vae.eval()
    if frozen:
        for p in vae.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in zip(vae.parameters(), requires):
            p.requires_grad_(r)
        vae.train(was_training)
