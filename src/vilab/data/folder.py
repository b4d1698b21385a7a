"""A folder of image files (PNG, JPEG, BMP, GIF) as a :class:`~vilab.data.sources.Source`.

Files directly in the folder have no labels; files in sub-folders get the sub-folder's
index in sorted order as their label (one sub-folder per class, as ``ImageFolder``
expects). Every image must have the same size and mode; grey images ("1", "L", "LA", "I", "F",
read as "L") give C = 1, every other mode C = 3 ("RGB"; alpha dropped). Reading needs Pillow: ``pip install 'vilab[images]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vilab.core.extras import require
from vilab.data.sources import Source, _split, files_sha256

__all__ = ["IMAGE_SUFFIXES", "load_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _files(root: Path) -> tuple[list[Path], list[int] | None]:
    """Image files and their labels (None without class sub-folders), sorted."""
    top = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if top and classes:
        raise ValueError(
            f"{root}: image files next to sub-folders {[c.name for c in classes]}; accepted: "
            "images directly in the folder, or one sub-folder per class"
        )
    if top:
        return top, None
    files, labels = [], []
    for i, c in enumerate(classes):
        inside = sorted(p for p in c.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += inside
        labels += [i] * len(inside)
    return files, labels


def _read(path: Path, image: Any) -> np.ndarray:
    """One file as an (H, W) or (H, W, 3) uint8 array."""
    try:
        with image.open(path) as im:
            im.load()
            mode = "L" if im.mode in ("1", "L", "I;16", "I", "F", "LA") else "RGB"
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(
            f"{path}: not a readable image ({e}); accepted: PNG, JPEG, BMP, GIF"
        ) from None


def load_folder(cfg: Any) -> Source:
    """Every image file under ``cfg.path``, split by ``cfg.split`` with ``cfg.split_seed``.

    Raises:
        ValueError: no images, an unreadable file, or a file whose size or channels differ
            from the first one's (both files named).
    """
    root = Path(cfg.path)
    if not root.is_dir():
        raise ValueError(f"data.path={str(root)!r} is not a folder; accepted: a folder of images")
    image = require("PIL.Image", "images", "data.name=folder (reading image files)", "Pillow")
    files, labels = _files(root)
    if not files:
        raise ValueError(f"{root}: no image files; accepted suffixes {list(IMAGE_SUFFIXES)}")
    first = _read(files[0], image)
    arrays = [first]
    for f in files[1:]:
        a = _read(f, image)
        if a.shape != first.shape:
            raise ValueError(
                f"{f}: an image of size {a.shape[:2][::-1]} (W, H) and {_channels(a)} "
                f"channel(s), but {files[0].name} has {first.shape[:2][::-1]} and "
                f"{_channels(first)}; accepted: images of one size (resize them first)"
            )
        arrays.append(a)
    stack = np.stack(arrays)
    shape = (_channels(first), first.shape[0], first.shape[1])
    if cfg.image_shape is not None and tuple(cfg.image_shape) != shape:
        raise ValueError(f"{root}: images of shape {shape}, data.image_shape={cfg.image_shape}")
    lab = None if labels is None else np.asarray(labels)
    return _split(stack, lab, shape, cfg, str(root), files_sha256(files, root))


def _channels(a: np.ndarray) -> int:
    return 1 if a.ndim == 2 else a.shape[2]
