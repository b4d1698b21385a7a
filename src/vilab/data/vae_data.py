"""The data of a VAE run: this rank's training batches and the fixed validation and test
images, flattened to ``(N, 784)`` (see :class:`~vilab.config.DataConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from vilab.config import DataConfig
from vilab.data import Batches, load_dataset
from vilab.data.mnist import load_mnist
from vilab.distributed import SINGLE, World


@dataclass
class VAEData:
    """Training batches and fixed validation/test tensors ``(N, 784)``."""

    train: Batches
    valid: Tensor
    test: Tensor
    valid_labels: Tensor | None
    test_labels: Tensor | None

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
