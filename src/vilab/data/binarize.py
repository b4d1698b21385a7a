"""Binarization and mini-batches: how a data set becomes float tensors in {0, 1}.

Two conventions, whose numbers differ by about 2 nats for the same model (never compare
them directly; REFERENCE.md §2):

- **static**: one fixed binarization, used for every epoch. Larochelle's binarized MNIST
  (Salakhutdinov & Murray, 2008) is the standard one; :func:`binarize_once` makes one
  from grey levels with a fixed seed.
- **dynamic**: every training batch is drawn afresh, x ~ Bernoulli(pixel / 255)
  (:func:`dynamic_binarize`); validation and test are binarized once with a fixed seed.

:class:`ImageDataset` holds one split; :class:`Batches` serves its training batches by
step number, so that a run is reproducible from a seed and resumes exactly from a step
without any saved sampler state.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from vilab.core.seeding import Stream, derive_seed

__all__ = ["Batches", "ImageDataset", "binarize_once", "derive_seed", "dynamic_binarize"]


def _check_grey(images: Tensor) -> None:
    if images.dtype != torch.uint8:
        raise ValueError(
            f"images of dtype {images.dtype}; binarization takes uint8 grey levels 0–255"
        )


def dynamic_binarize(
    images: Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Draw x ~ Bernoulli(pixel / 255), independently per pixel.

    Drawn as ``255 u < pixel`` with u ~ U[0, 1) (one random number and two in-place ops
    per pixel); 0 stays 0 and 255 stays 1.

    Args:
        images: (..., D) uint8 grey levels.
        generator: random source, on ``images.device``; the global one if None.
        dtype: floating dtype of the result.

    Returns:
        (..., D) tensor of 0. and 1. of ``dtype``.
    """
    _check_grey(images)
    u = torch.rand(images.shape, generator=generator, device=images.device, dtype=dtype)
    return u.mul_(255).lt_(images)  # in place: u becomes 1. where 255 u < pixel, else 0.


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """A fixed binarization, x ~ Bernoulli(pixel / 255) with a seeded CPU generator.

    The result depends only on ``seed`` and the pixels, not on the device or global RNG:
    the convention for the validation and test sets of dynamically binarized data.

    Args:
        images: (N, D) uint8 grey levels.
        seed: non-negative integer.

    Returns:
        (N, D) uint8 tensor of 0/1 on ``images.device``.
    """
    _check_grey(images)
    g = torch.Generator().manual_seed(derive_seed(seed))
    return dynamic_binarize(images.cpu(), g).to(torch.uint8).to(images.device)


@dataclass(frozen=True)
class ImageDataset:
    """One split of an image data set, flattened to D = C·H·W pixels (784 for MNIST).

    Attributes:
        images: (N, D) uint8. If ``dynamic``, grey levels 0–255 to be binarized per
            batch; otherwise binary 0/1, or (served by other batches, see
            :mod:`vilab.data.vae_data`) grey levels, or floats for continuous data.
        labels: (N,) int64 class labels, or None when the set has none (static MNIST).
        dynamic: True for a training split that is re-binarized every batch.
        name: data set name, e.g. ``"binarized_mnist"``.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        image_shape: (C, H, W) that ``images`` reshape to.
    """

    images: Tensor
    labels: Tensor | None
    dynamic: bool
    name: str
    split: str
    image_shape: tuple[int, int, int] = (1, 28, 28)

    def __post_init__(self) -> None:
        if self.images.ndim != 2 or not (
            self.images.dtype == torch.uint8 or self.images.is_floating_point()
        ):
            raise ValueError(
                f"images of shape {tuple(self.images.shape)} and dtype {self.images.dtype}; "
                "expected (N, D) uint8 (or floats, continuous data)"
            )
        c, h, w = self.image_shape
        if self.images.shape[1] != c * h * w:
            raise ValueError(
                f"images have {self.images.shape[1]} pixels, image_shape {self.image_shape} "
                f"needs {c * h * w}"
            )
        if self.labels is not None and self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels of shape {tuple(self.labels.shape)} for {len(self.images)} images"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def data_dim(self) -> int:
        """Pixels per image, D = C·H·W."""
        return self.images.shape[1]

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same split with its tensors on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, images=self.images.to(device), labels=labels)

    def binarized_once(self, seed: int = 0) -> ImageDataset:
        """A fixed binarization of a dynamic split (e.g. to evaluate the training set)."""
        if not self.dynamic:
            return self
        return replace(self, images=binarize_once(self.images, seed), dynamic=False)

    def tensor(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """All images as (N, D) floats in {0, 1}: the fixed validation or test tensor.

        Raises:
            ValueError: the split is dynamic (use :class:`Batches` or ``binarized_once``).
        """
        if self.dynamic:
            raise ValueError(
                f"{self.name}/{self.split} is dynamically binarized: draw batches with "
                "Batches, or fix a binarization with .binarized_once(seed)"
            )
        return self.images.to(dtype)


class Batches:
    """Mini-batches addressed by training step: reproducible from a seed and resumable.

    Step s belongs to epoch e = s // steps_per_epoch, at position p = s % steps_per_epoch.
    Each epoch has its own permutation, drawn from ``derive_seed(seed, 0, e)``; a dynamic
    batch is binarized with a generator seeded ``derive_seed(seed, 1, s)``. The batch at
    step s therefore depends only on (seed, s): to resume, start at the saved step.

    Indexing a whole tensor with a permutation is much faster than a ``DataLoader`` for
    data of this size; put the data set on the GPU with ``dataset.to(device)`` to batch
    there (the same seed then gives other dynamic draws than on the CPU).

    **Data-parallel shards.** With ``world_size`` W > 1, ``batch_size`` is the global
    batch and rank r gets its rows r, r + W, r + 2W, … (``torch.utils.data.
    DistributedSampler``'s rule, applied to each global batch instead of each epoch). The
    global batch at step s — including its dynamic binarization — is the same for every W,
    so the shards of all ranks together are exactly the single-process batch, and a run
    resumes from its step at any world size. ``DistributedSampler`` itself shards the
    epoch, which makes every batch depend on W.

    Args:
        dataset: the split to serve.
        batch_size: images per batch, 1 ≤ batch_size ≤ len(dataset).
        seed: non-negative integer.
        shuffle: a new permutation each epoch; else the data order.
        drop_last: skip each epoch's last, smaller batch (fixed batch shapes).
        dtype: floating dtype of the batches.
        rank: this process's rank, 0 ≤ rank < world_size.
        world_size: number of data-parallel processes sharing each global batch.

    Example::

        batches = Batches(load_dataset("tiny", "train"), 128, seed=0)
        for step in range(start_step, n_steps):
            x = batches.batch(step)  # (128, 784) in {0, 1}
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 1 <= batch_size <= len(dataset):
            raise ValueError(
                f"batch_size={batch_size}; accepted: 1 to len(dataset) = {len(dataset)}"
            )
        if seed < 0:
            raise ValueError(f"seed={seed}; accepted seeds are non-negative integers")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} of world_size={world_size}: need 0 ≤ rank < world_size")
        if batch_size < world_size:
            raise ValueError(
                f"batch_size={batch_size} is smaller than world_size={world_size}: every "
                "process needs at least one image of each global batch"
            )
        self.rank, self.world_size = rank, world_size
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.dtype = dtype
        n = len(dataset)
        self.steps_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        last = n - (self.steps_per_epoch - 1) * batch_size
        if world_size > 1 and last < world_size:
            raise ValueError(
                f"batch_size={batch_size} leaves {last} image(s) for the last batch of each "
                f"epoch of {n}, fewer than world_size={world_size} processes; choose a "
                "batch size whose last batch is at least that large (or drop_last=True)"
            )
        self._perm: tuple[int, Tensor] | None = None

    def to(self, device: torch.device | str) -> Batches:
        """The same batches served from ``device`` (the data set moved there once)."""
        out = copy.copy(self)
        out.dataset = self.dataset.to(device)
        out._perm = None  # cached on the old device
        return out

    def epoch(self, step: int) -> int:
        """The epoch that ``step`` falls in (0-based)."""
        return step // self.steps_per_epoch

    def _permutation(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            n = len(self.dataset)
            g = torch.Generator().manual_seed(derive_seed(self.seed, Stream.EPOCH_ORDER, epoch))
            perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            self._perm = (epoch, perm.to(self.dataset.images.device))
        return self._perm[1]

    def global_indices(self, step: int) -> Tensor:
        """(B,) int64 row indices of the whole (all ranks') batch at ``step``."""
        if step < 0:
            raise ValueError(f"step={step}; accepted steps are non-negative integers")
        e, p = divmod(step, self.steps_per_epoch)
        return self._permutation(e)[p * self.batch_size : (p + 1) * self.batch_size]

    def global_size(self, step: int) -> int:
        """Images in the whole batch at ``step`` (smaller at an epoch's end)."""
        return len(self.global_indices(step))

    def indices(self, step: int) -> Tensor:
        """Row indices of this rank's share of the batch at ``step`` (all of it if W = 1)."""
        return self.global_indices(step)[self.rank :: self.world_size]

    def batch(self, step: int) -> Tensor:
        """(B / W, D) floats in {0, 1}: this rank's share of the batch at ``step``,
        binarized afresh if dynamic."""
        if not self.dataset.dynamic:
            return self.dataset.images[self.indices(step)].to(self.dtype)
        images = self.dataset.images[self.global_indices(step)]
        g = torch.Generator(device=images.device).manual_seed(
            derive_seed(self.seed, Stream.BINARIZE, step)
        )
        return dynamic_binarize(images, g, self.dtype)[self.rank :: self.world_size]

    def labels(self, step: int) -> Tensor | None:
        """(B,) labels of the batch at ``step``, or None for a set without labels."""
        labels = self.dataset.labels
        return None if labels is None else labels[self.indices(step)]

    def iterate(self, start_step: int = 0) -> Iterator[Tensor]:
        """Batches of steps ``start_step``, ``start_step + 1``, … without end."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1
