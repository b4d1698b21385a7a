"""The data of a VAE run: this rank's training batches and the fixed validation and test
images, flattened to ``(N, D)``, D = C·H·W (see :class:`~vilab.config.DataConfig`).

What a batch holds depends on the values the likelihood takes (``values``):

- ``"binary"``: {0, 1}; grey-level sources binarized by ``data.binarize`` (``static``:
  once per split, seeded ``binarize_seed``; ``dynamic``: every training batch, valid and
  test once).
- ``"grey"``: x = k/255 for 8-bit grey levels k (categorical and logistic likelihoods).
- ``"continuous"``: floats as given; 8-bit grey levels dequantized, y = (k + u)/256 with
  u ~ U[0, 1) drawn afresh for every training batch and once (seeded) for valid and test
  (Theis et al. 2016). ``mnist_gray`` keeps its convention, k/255 without noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from vilab.config import DataConfig
from vilab.core.seeding import Stream, derive_seed
from vilab.data import Batches, load_dataset
from vilab.data.binarize import ImageDataset, binarize_once
from vilab.data.mnist import load_mnist
from vilab.data.sources import SPLIT_NAMES, Source
from vilab.distributed import SINGLE, World


@dataclass
class VAEData:
    """Training batches and fixed validation/test tensors ``(N, D)``; ``image_shape`` is
    (C, H, W), D = C·H·W."""

    train: Batches
    valid: Tensor
    test: Tensor
    valid_labels: Tensor | None
    test_labels: Tensor | None
    image_shape: tuple[int, int, int] = (1, 28, 28)
    sha256: str | None = None

    def to(self, device: torch.device | str) -> VAEData:
        """The same data on ``device``: the whole training split too (batches are then
        indexed and, if dynamic, binarized there with a generator on the device — other
        draws than on the CPU for the same seed). The labels stay where they are (only
        pictures use them)."""
        device = torch.device(device)
        if self.valid.device == device and self.train.dataset.images.device == device:
            return self
        valid, test = self.valid.to(device), self.test.to(device)
        return replace(self, train=self.train.to(device), valid=valid, test=test)


class _GreyBatches(Batches):
    """Batches of grey levels in [0, 1] (continuous data for a Gaussian likelihood)."""

    def batch(self, step: int) -> Tensor:
        return self.dataset.images[self.indices(step)].to(self.dtype) / 255.0


class _DequantizedBatches(Batches):
    """Batches of dequantized grey levels, y = (k + u)/256, u ~ U[0, 1) drawn for every
    global batch from a generator seeded (seed, step) (the same at any world size)."""

    def batch(self, step: int) -> Tensor:
        k = self.dataset.images[self.global_indices(step)]
        g = torch.Generator(device=k.device).manual_seed(
            derive_seed(self.seed, Stream.BINARIZE, step)
        )
        u = torch.rand(k.shape, generator=g, device=k.device, dtype=self.dtype)
        return u.add_(k).div_(256.0)[self.rank :: self.world_size]


def dequantize_once(images: Tensor, seed: int) -> Tensor:
    """(k + u)/256 with u ~ U[0, 1) from a seeded CPU generator: a fixed dequantization."""
    g = torch.Generator().manual_seed(derive_seed(seed))
    u = torch.rand(images.shape, generator=g)
    return u.add_(images.cpu()).div_(256.0).to(images.device)


def load_vae_data(
    cfg: DataConfig, seed: int, world: World = SINGLE, values: str | None = None
) -> VAEData:
    """The data set of a run (see :class:`~vilab.config.DataConfig`); the training batches
    are this rank's shares of the global batches (:class:`~vilab.data.Batches`).
    ``values``: what the likelihood takes (module doc); None: ``binary``, or
    ``continuous`` for ``mnist_gray``."""
    shard = {"seed": seed, "rank": world.rank, "world_size": world.size}
    if cfg.name == "python":
        raise ValueError("data.name=python: hand the data to train_vae(..., data=...)")
    if cfg.name in ("freyfaces", "digits", "arrays", "folder"):
        return vae_data_from_source(load_source(cfg), cfg, seed, world, values or "binary")
    if cfg.name == "mnist_gray":
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
    if values not in (None, "binary"):
        raise ValueError(f"data.name={cfg.name} is binary; a {values} likelihood needs grey levels")
    sets = {s: load_dataset(cfg.name, s, cfg.data_dir) for s in ("train", "valid", "test")}
    return VAEData(
        Batches(sets["train"], cfg.batch_size, **shard),
        sets["valid"].tensor(),
        sets["test"].tensor(),
        sets["valid"].labels,
        sets["test"].labels,
    )


def load_source(cfg: DataConfig) -> Source:
    """The :class:`~vilab.data.sources.Source` of a named or file source."""
    if cfg.name == "freyfaces":
        from vilab.data.named import load_freyfaces

        return load_freyfaces(cfg)
    if cfg.name == "digits":
        from vilab.data.named import load_digits

        return load_digits(cfg)
    if cfg.name == "folder":
        from vilab.data.folder import load_folder

        return load_folder(cfg)
    from vilab.data.sources import load_arrays

    return load_arrays(cfg)


def _check_accepted(source: Source, cfg: DataConfig, values: str) -> None:
    """One line naming the data and what the likelihood accepts, before training."""
    where = source.origin
    if cfg.sha256 is not None and source.sha256 != cfg.sha256:
        raise ValueError(
            f"{where}: sha256 {source.sha256}, but data.sha256={cfg.sha256}: the data changed "
            "since the run that recorded it (unset data.sha256 to accept the new data)"
        )
    if values == "grey" and not source.grey:
        raise ValueError(
            f"{where}: float values (or integers outside 0–255), but a 256-way categorical "
            "or discretized logistic likelihood takes 8-bit grey levels (uint8 or integers "
            "0–255); cast the data, or use likelihood=gaussian"
        )
    if values == "binary" and cfg.binarize in (None, "none") and not source.binary:
        kind = "grey levels 0–255" if source.grey else "values other than 0 and 1"
        raise ValueError(
            f"{where}: {kind}, but likelihood=bernoulli takes 0/1: set data.binarize=static "
            "or dynamic, or choose likelihood=categorical, logistic or gaussian"
        )
    if values == "binary" and cfg.binarize in ("static", "dynamic") and not source.grey:
        raise ValueError(
            f"{where}: float values; data.binarize takes uint8 grey levels 0–255 (x ~ "
            "Bernoulli(k/255)): cast the data, or binarize it yourself"
        )


def vae_data_from_source(
    source: Source, cfg: DataConfig, seed: int, world: World = SINGLE, values: str = "binary"
) -> VAEData:
    """A :class:`VAEData` serving ``source`` as the likelihood's ``values`` (module doc)."""
    _check_accepted(source, cfg, values)
    sets, fixed = {}, {}
    for i, s in enumerate(SPLIT_NAMES):
        images, labels = source.splits[s]
        fixed_seed = derive_seed(cfg.binarize_seed, i)
        dynamic = values == "binary" and cfg.binarize == "dynamic" and s == "train"
        if values == "binary" and cfg.binarize in ("static", "dynamic") and not dynamic:
            images = binarize_once(images, fixed_seed)
        elif values == "binary" and images.dtype != torch.uint8:
            images = images.to(torch.uint8)  # 0./1. floats
        sets[s] = ImageDataset(images, labels, dynamic, cfg.name, s, source.image_shape)
        fixed[s] = _fixed(sets[s], values, fixed_seed)
    shard = {"seed": seed, "rank": world.rank, "world_size": world.size}
    cls = Batches
    if values == "grey":
        cls = _GreyBatches
    elif values == "continuous" and source.grey:
        cls = _DequantizedBatches
    train = cls(sets["train"], min(cfg.batch_size, len(sets["train"])), **shard)
    valid, test = fixed["valid"], fixed["test"]
    labels = (sets["valid"].labels, sets["test"].labels)
    return VAEData(train, valid, test, *labels, source.image_shape, source.sha256)


def _fixed(split: ImageDataset, values: str, seed: int) -> Tensor:
    """The fixed tensor of a valid/test split as the likelihood takes it."""
    if values == "grey":
        return split.images.float() / 255
    if values == "continuous" and split.images.dtype == torch.uint8:
        return dequantize_once(split.images, seed)
    if split.dynamic:
        return split.images  # training split: served by Batches only
    return split.images.float()
