"""MNIST (IDX, gzip) and Larochelle's statically binarized MNIST (.amat), parsed and checked.

IDX (LeCun): a big-endian header, ``0x00 0x00 <dtype> <ndim>`` then one uint32 per
dimension, then the raw data in row-major order. Images are magic ``0x00000803`` (uint8,
3 dimensions: N × 28 × 28), labels ``0x00000801`` (uint8, N). Both are checked, and the
file must be exactly as long as its header says.

.amat (Larochelle): one image per line, 784 characters ``0``/``1`` separated by single
spaces, ending in ``\\n`` (1568 bytes a line), no header, no labels. The canonical layout
is parsed with one ``np.frombuffer`` (the digit is every second byte) and checked byte
for byte; anything else (CRLF, extra blanks) falls back to a line-by-line parser that
says which line is wrong.

Parsed arrays are cached in memory per process, keyed by file path, size and
modification time. The returned tensors are shared between calls: treat them as
read-only.
"""

from __future__ import annotations

import gzip
import lzma
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from vilab.data.download import fetch

__all__ = [
    "AMAT_ROW_BYTES",
    "clear_cache",
    "load_binarized_mnist",
    "load_mnist",
    "parse_amat",
    "parse_idx",
    "parse_idx_images",
    "parse_idx_labels",
    "read_file",
]

IMAGE_SIDE = 28
PIXELS = IMAGE_SIDE * IMAGE_SIDE
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
AMAT_ROW_BYTES = 2 * PIXELS  # "d d d ... d\n"

MNIST_FILES = {
    "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
}
BINARIZED_SPLITS = ("train", "valid", "test")


def read_file(path: Path) -> bytes:
    """The decompressed bytes of ``path`` (``.gz`` and ``.xz`` by suffix, else raw).

    Raises:
        ValueError: the compressed stream is truncated or corrupt.
    """
    data = path.read_bytes()
    try:
        if path.suffix == ".gz":
            return gzip.decompress(data)
        if path.suffix == ".xz":
            return lzma.decompress(data)
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as err:
        raise ValueError(
            f"{str(path)!r} is not a complete {path.suffix} file ({type(err).__name__}: {err}); "
            "delete it and run again to download it afresh"
        ) from None
    return data


def parse_idx(data: bytes, magic: int, *, source: str = "<bytes>") -> np.ndarray:
    """Parse an uint8 IDX file, checking its magic number and exact length.

    Args:
        data: the decompressed file.
        magic: the expected magic number, e.g. ``0x803`` (images) or ``0x801`` (labels).
        source: a name for error messages.

    Returns:
        A writable uint8 array of the shape in the header.

    Raises:
        ValueError: wrong magic number (names the found and expected values), short header,
            or a length that differs from the header's (truncated or trailing bytes).
    """
    if len(data) < 4:
        raise ValueError(f"{source}: {len(data)} bytes is too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"{source}: IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IDX_IMAGES_MAGIC else 'labels'}, uint8); "
            "not an MNIST IDX file of this kind, or still compressed?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{source}: IDX file is {len(data):,} bytes but its header (shape {dims}) "
            f"implies {expected:,}: the file {kind}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def parse_idx_images(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX images (magic 0x803, N × 28 × 28) into a flat (N, 784) uint8 array."""
    images = parse_idx(data, IDX_IMAGES_MAGIC, source=source)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(
            f"{source}: IDX images are {images.shape[1]}×{images.shape[2]}, expected 28×28"
        )
    return images.reshape(len(images), PIXELS)


def parse_idx_labels(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX labels (magic 0x801) into an (N,) int64 array with values 0–9."""
    labels = parse_idx(data, IDX_LABELS_MAGIC, source=source)
    if labels.size and labels.max() > 9:
        raise ValueError(f"{source}: label {labels.max()} found, labels must be 0–9")
    return labels.astype(np.int64)


def _amat_error(source: str, line: int, detail: str) -> ValueError:
    return ValueError(
        f"{source}: line {line}: {detail}; a .amat row is 784 values 0 or 1 separated by "
        "single spaces"
    )


def _parse_amat_lines(data: bytes, source: str) -> np.ndarray:
    """Line-by-line .amat parser: slower, tolerant of blanks and CRLF, exact error messages."""
    lines = data.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = np.empty((len(lines), PIXELS), dtype=np.uint8)
    for i, line in enumerate(lines):
        tokens = line.split()
        if len(tokens) != PIXELS:
            raise _amat_error(source, i + 1, f"{len(tokens)} values")
        row = np.frombuffer(b"".join(tokens), dtype=np.uint8) - ord("0")
        if row.size != PIXELS or (row > 1).any():
            bad = next(t for t in tokens if t not in (b"0", b"1"))
            raise _amat_error(source, i + 1, f"value {bad.decode(errors='replace')!r}")
        out[i] = row
    return out


def parse_amat(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse a binarized-MNIST ``.amat`` file into an (N, 784) uint8 array of 0/1.

    The canonical layout (1568 bytes a row: digit, space, …, digit, newline) is parsed
    with ``np.frombuffer`` and checked byte for byte; any other layout is parsed line by
    line.

    Raises:
        ValueError: empty file, or a row without exactly 784 values in {0, 1} (names the
            line and what is wrong).
    """
    if not data.strip():
        raise ValueError(f"{source}: empty .amat file")
    if len(data) % AMAT_ROW_BYTES == 0:
        rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, AMAT_ROW_BYTES)
        digits = rows[:, 0::2] - np.uint8(ord("0"))  # wraps: anything but '0'/'1' is > 1
        seps = rows[:, 1::2]
        if (
            (digits <= 1).all()
            and (seps[:, :-1] == ord(" ")).all()
            and (seps[:, -1] == ord("\n")).all()
        ):
            return digits
    return _parse_amat_lines(data, source)


# (parser name, resolved path, size, mtime_ns) -> parsed tensor
_CACHE: dict[tuple[str, str, int, int], Tensor] = {}


def clear_cache() -> None:
    """Drop the parsed arrays cached in this process."""
    _CACHE.clear()


def _load(path: Path, parse: Callable[..., np.ndarray]) -> Tensor:
    """``parse(read_file(path))`` as a tensor, cached per (path, size, modification time)."""
    st = path.stat()
    key = (parse.__name__, str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = torch.from_numpy(parse(read_file(path), source=repr(str(path))))
    return _CACHE[key]


def load_mnist(
    split: Literal["train", "test"],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """The MNIST images and labels of one file pair, as published (no validation split).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: see :func:`vilab.data.download.resolve_data_dir`.
        download: fetch missing files from the mirrors.

    Returns:
        ``(images, labels)``: images (N, 784) uint8 grey levels 0–255 (0 = background),
        row-major 28×28; labels (N,) int64 in 0–9. Cached and shared: do not modify.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"MNIST split {split!r}; accepted: {sorted(MNIST_FILES)}")
    image_rel, label_rel = MNIST_FILES[split]
    image_path = fetch([image_rel], data_dir, download=download)
    label_path = fetch([label_rel], data_dir, download=download)
    images = _load(image_path, parse_idx_images)
    labels = _load(label_path, parse_idx_labels)
    if len(images) != len(labels):
        raise ValueError(
            f"{str(image_path)!r} has {len(images)} images but {str(label_path)!r} has "
            f"{len(labels)} labels"
        )
    return images, labels


def load_binarized_mnist(
    split: Literal["train", "valid", "test"],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> Tensor:
    """Larochelle's statically binarized MNIST (Salakhutdinov & Murray, 2008).

    Reads ``binarized_mnist/binarized_mnist_<split>.amat`` if present, else the ``.amat.xz``
    next to it, else downloads the ``.amat``.

    Args:
        split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
        data_dir: see :func:`vilab.data.download.resolve_data_dir`.
        download: fetch a missing file from the mirror.

    Returns:
        (N, 784) uint8 tensor of 0/1, row-major 28×28, no labels. Cached and shared: do
        not modify.
    """
    if split not in BINARIZED_SPLITS:
        raise ValueError(f"binarized MNIST split {split!r}; accepted: {list(BINARIZED_SPLITS)}")
    rel = f"binarized_mnist/binarized_mnist_{split}.amat"
    path = fetch([rel, rel + ".xz"], data_dir, download=download)
    return _load(path, parse_amat)
