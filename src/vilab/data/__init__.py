"""Data: MNIST, statically binarized MNIST and a small built-in set, as binary image tensors.

One entry point, :func:`load_dataset`, gives an :class:`ImageDataset` split; training
batches come from :class:`Batches` (by step: reproducible and resumable), the fixed
validation and test tensors from :meth:`ImageDataset.tensor`.

- ``binarized_mnist``: Larochelle's static binarization, 50,000 / 10,000 / 10,000
  images (train / valid / test), no labels.
- ``mnist_dynamic``: MNIST grey levels, 50,000 / 10,000 / 10,000 with labels 0–9; train
  re-binarized every batch, valid and test binarized once with a fixed seed.
- ``tiny`` (= ``tiny_dynamic``): the built-in set (:mod:`vilab.data.tiny`), 4,000 /
  1,000 / 1,000 with labels, binarized like ``mnist_dynamic``; no files needed.
- ``tiny_static``: the built-in set, every split binarized once with a fixed seed.

MNIST splits follow the standard convention: train = the first 50,000 of the 60,000
training images, valid = the last 10,000, test = the 10,000 test images.

Beyond MNIST (served by :func:`vilab.data.vae_data.load_vae_data`): ``freyfaces`` and
``digits`` (:mod:`vilab.data.named`), the user's arrays and tensors
(:mod:`vilab.data.sources`) and image folders (:mod:`vilab.data.folder`), each a
:class:`~vilab.data.sources.Source` of three splits with its (C, H, W).
"""

from __future__ import annotations

import os

from vilab.data.binarize import (
    Batches,
    ImageDataset,
    binarize_once,
    derive_seed,
    dynamic_binarize,
)
from vilab.data.download import ChecksumError, DownloadError, resolve_data_dir
from vilab.data.mnist import load_binarized_mnist, load_mnist
from vilab.data.tiny import make_tiny, tiny_split

__all__ = [
    "DATASETS",
    "SPLITS",
    "Batches",
    "ChecksumError",
    "DownloadError",
    "ImageDataset",
    "binarize_once",
    "dynamic_binarize",
    "load_dataset",
    "load_mnist",
    "load_binarized_mnist",
    "make_tiny",
    "resolve_data_dir",
]

DATASETS = ("binarized_mnist", "mnist_dynamic", "tiny_dynamic", "tiny_static")
_ALIASES = {"tiny": "tiny_dynamic"}
SPLITS = ("train", "valid", "test")
MNIST_VALID_SIZE = 10_000


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    binarize_seed: int = 0,
) -> ImageDataset:
    """Load one split of a data set.

    Args:
        name: ``"binarized_mnist"``, ``"mnist_dynamic"``, ``"tiny"`` (= ``"tiny_dynamic"``)
            or ``"tiny_static"``.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        data_dir: directory holding ``mnist/`` and ``binarized_mnist/``; default
            ``$VILAB_DATA_DIR``, else the user cache (see
            :func:`vilab.data.download.resolve_data_dir`). Unused by the tiny sets.
        download: fetch missing MNIST files from the mirrors.
        binarize_seed: seed of every fixed binarization (dynamic sets' valid and test,
            all of ``tiny_static``); keep the default to compare numbers across runs.

    Returns:
        The split. ``dynamic`` is True only for the training split of a dynamic set.

    Raises:
        ValueError: unknown name or split (names the accepted ones), or a bad file.
    """
    key = _ALIASES.get(name, name)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; accepted: {[*DATASETS, *_ALIASES]}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {list(SPLITS)}")
    fixed_seed = derive_seed(binarize_seed, SPLITS.index(split))

    if key == "binarized_mnist":
        images = load_binarized_mnist(split, data_dir, download=download)
        return ImageDataset(images, None, dynamic=False, name=key, split=split)

    if key == "mnist_dynamic":
        images, labels = load_mnist(
            "test" if split == "test" else "train", data_dir, download=download
        )
        if split != "test":
            n_train = len(images) - MNIST_VALID_SIZE
            rows = slice(0, n_train) if split == "train" else slice(n_train, None)
            images, labels = images[rows], labels[rows]
    else:
        images, labels = tiny_split(split)

    if split == "train" and key != "tiny_static":
        return ImageDataset(images, labels, dynamic=True, name=key, split=split)
    return ImageDataset(
        binarize_once(images, fixed_seed), labels, dynamic=False, name=key, split=split
    )
