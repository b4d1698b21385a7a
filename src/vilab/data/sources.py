"""The user's own images: arrays (``.npz``/``.npy``), a folder of image files, or a tensor,
array or ``torch.utils.data.Dataset`` handed in from Python.

Every source becomes a :class:`Source`: three splits of ``(N, D)`` pixels (uint8 grey
levels 0–255, or floats) with optional labels, and the image shape (C, H, W) with
D = C·H·W. Bad input is refused here, before training, in one line naming the file or
key and what is accepted (:func:`check_values`).

Shapes: an array ``(N, H, W)`` is ``(1, H, W)``; ``(N, C, H, W)`` is itself, and
``(N, H, W, C)`` with C ∈ {1, 3, 4} and H, W > 4 (channels last) is transposed;
``(N, D)`` is ``image_shape`` if given, else ``(1, r, r)`` when D = r², else
``(1, 1, D)``. A single array or folder is split by fractions after a permutation drawn
from ``numpy.random.RandomState(split_seed)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SPLIT_NAMES", "Source", "check_values", "infer_shape", "source_from", "split_array"]

SPLIT_NAMES = ("train", "valid", "test")
Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Source:
    """Three splits of images ``(N, D)`` (uint8 or floating) and labels ``(N,)`` or None.

    Attributes:
        splits: ``{"train": (images, labels), "valid": ..., "test": ...}``.
        image_shape: (C, H, W), D = C·H·W.
        origin: what it was read from (a path, ``"python"``), for messages.
        sha256: of the file(s) read (:func:`files_sha256`), None for other sources.
    """

    splits: dict[str, tuple[Tensor, Tensor | None]]
    image_shape: Shape
    origin: str
    sha256: str | None = None

    @property
    def grey(self) -> bool:
        """uint8 grey levels (else floats)."""
        return self.splits["train"][0].dtype == torch.uint8

    @property
    def binary(self) -> bool:
        """Every value 0 or 1."""
        return all(bool(((x == 0) | (x == 1)).all()) for x, _ in self.splits.values())


def files_sha256(files: Sequence[Path], root: Path) -> str:
    """SHA-256 over each file's path relative to ``root`` and its bytes, in order: one
    digest that changes when any file, name or the set of files does."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def infer_shape(shape: Sequence[int], given: Shape | None, where: str) -> Shape:
    """(C, H, W) of one image from an array's ``shape`` (N first); see the module doc."""
    rest = tuple(int(s) for s in shape[1:])
    if given is not None:
        if math.prod(given) != math.prod(rest):
            raise ValueError(
                f"{where}: images of shape {rest} do not fit data.image_shape={list(given)}"
            )
        return given
    if len(rest) == 3:
        if rest[-1] in (1, 3, 4) and rest[0] not in (1, 3, 4) and min(rest[:2]) > 4:
            return (rest[2], rest[0], rest[1])
        return rest  # type: ignore[return-value]
    if len(rest) == 2:
        return (1, rest[0], rest[1])
    if len(rest) == 1:
        r = math.isqrt(rest[0])
        return (1, r, r) if r * r == rest[0] else (1, 1, rest[0])
    raise ValueError(
        f"{where}: an array of shape {tuple(shape)}; accepted: (N, D), (N, H, W), "
        "(N, C, H, W) or (N, H, W, C)"
    )


def _as_rows(array: Any, shape: Shape, where: str) -> Tensor:
    """``(N, ...)`` -> ``(N, D)`` in the (C, H, W) order, uint8 kept, floats as float32."""
    a = np.asarray(array)
    if a.ndim == 4 and a.shape[1:] == (shape[1], shape[2], shape[0]) and a.shape[1:] != shape:
        a = a.transpose(0, 3, 1, 2)  # channels last -> first
    if a.dtype.kind in "iub" and a.size and 0 <= a.min() and a.max() <= 255:
        a = a.astype(np.uint8, copy=False)  # integers 0–255: 8-bit grey levels
    if a.dtype == np.uint8:
        rows = torch.from_numpy(np.ascontiguousarray(a).reshape(len(a), -1))
    elif a.dtype.kind in "fiub":
        rows = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(len(a), -1))
    else:
        raise ValueError(f"{where}: values of dtype {a.dtype}; accepted: uint8 or numbers")
    check_values(rows, where)
    return rows


def check_values(x: Tensor, where: str) -> None:
    """Refuse NaN or infinite values, naming ``where``."""
    if x.dtype != torch.uint8 and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{where}: {bad} NaN or infinite value(s); accepted: finite numbers")


def split_array(n: int, fractions: Sequence[float], seed: int, where: str) -> dict[str, np.ndarray]:
    """Row indices of train/valid/test: a permutation from ``RandomState(seed)`` cut at
    the rounded cumulative fractions. Raises if a split would be empty."""
    perm = np.random.RandomState(seed).permutation(n)
    cuts = np.round(np.cumsum(fractions) * n).astype(int)
    parts = np.split(perm, cuts[:2])
    sizes = {s: len(p) for s, p in zip(SPLIT_NAMES, parts)}
    empty = [s for s, k in sizes.items() if k == 0]
    if empty:
        raise ValueError(
            f"{where}: data.split={list(fractions)} of {n} images leaves {empty} empty "
            f"(sizes {sizes}); accepted: fractions that give every split ≥ 1 image"
        )
    return dict(zip(SPLIT_NAMES, parts))


def _split(
    images: Any, labels: Any, shape: Shape, cfg: Any, where: str, sha256: str | None = None
) -> Source:
    index = split_array(len(images), cfg.split, cfg.split_seed, where)
    splits = {}
    for s, rows in index.items():
        if isinstance(images, np.memmap):  # read in file order, then put in the split's
            x = np.asarray(images[np.sort(rows)])[np.argsort(np.argsort(rows))]
        else:
            x = images[rows]
        lab = None if labels is None else torch.as_tensor(np.asarray(labels)[rows]).long()
        splits[s] = (_as_rows(x, shape, where), lab)
    return Source(splits, shape, where, sha256)


def load_arrays(cfg: Any) -> Source:
    """A ``.npz`` (arrays ``train``/``valid``/``test`` with optional ``*_labels``, or one
    array ``cfg.key`` split by fractions) or a ``.npy`` (memory-mapped, split)."""
    path = Path(cfg.path)
    if not path.is_file():
        raise ValueError(f"data.path={str(path)!r} is not a file; accepted: a .npz or .npy file")
    digest = files_sha256([path], path.parent)
    if path.suffix == ".npy":
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        shape = infer_shape(a.shape, cfg.image_shape, str(path))
        return _split(a, None, shape, cfg, str(path), digest)
    if path.suffix != ".npz":
        raise ValueError(f"data.path={str(path)!r}: accepted suffixes .npz and .npy")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if all(s in arrays for s in SPLIT_NAMES):
        shape = infer_shape(arrays["train"].shape, cfg.image_shape, f"{path}:train")
        splits = {}
        for s in SPLIT_NAMES:
            where = f"{path}:{s}"
            if len(arrays[s]) == 0:
                raise ValueError(f"{where} is empty; accepted: at least one image per split")
            if infer_shape(arrays[s].shape, shape, where) != shape:  # pragma: no cover
                raise ValueError(f"{where}: another image shape than train")
            lab = arrays.get(f"{s}_labels")
            splits[s] = (_as_rows(arrays[s], shape, where), _labels(lab))
        return Source(splits, shape, str(path), digest)
    images = [k for k in arrays if not k.endswith("labels")]
    key = cfg.key or (images[0] if len(images) == 1 else None)
    if key not in arrays:
        raise ValueError(
            f"{path}: data.key={cfg.key!r}; accepted: arrays train, valid and test, or one "
            f"key of {sorted(arrays)} to split"
        )
    where = f"{path}:{key}"
    shape = infer_shape(arrays[key].shape, cfg.image_shape, where)
    labels = arrays.get(f"{key}_labels", arrays.get("labels"))
    return _split(arrays[key], labels, shape, cfg, where, digest)


def _labels(labels: Any) -> Tensor | None:
    return None if labels is None else torch.as_tensor(np.asarray(labels)).long()


def source_from(data: Any, cfg: Any) -> Source:
    """A tensor or array ``(N, ...)`` (split by ``cfg.split``), a ``torch`` Dataset (each
    item an image or an ``(image, label)`` pair), or a dict with keys train/valid/test."""
    if isinstance(data, dict):
        if set(data) != set(SPLIT_NAMES):
            raise ValueError(f"data dict with keys {sorted(data)}; accepted: {list(SPLIT_NAMES)}")
        shape = infer_shape(np.shape(data["train"]), cfg.image_shape, "data['train']")
        return Source(
            {s: (_as_rows(_numpy(data[s]), shape, f"data[{s!r}]"), None) for s in SPLIT_NAMES},
            shape,
            "python",
        )
    labels = None
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Tensor):
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        if items and isinstance(items[0], tuple | list):
            labels = np.asarray([int(it[1]) for it in items])
            items = [it[0] for it in items]
        data = np.stack([_numpy(it) for it in items])
    array = _numpy(data)
    return _split(array, labels, infer_shape(array.shape, cfg.image_shape, "data"), cfg, "data")


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
