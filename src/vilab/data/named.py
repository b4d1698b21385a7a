"""Named grey-level data sets beyond MNIST: Frey Faces and scikit-learn's digits.

- ``freyfaces``: Brendan Frey's 1965 faces, 28 × 20, uint8 grey levels (values 8–238),
  from ``freyfaces/freyfaces.pkl`` in the data directory (downloaded and checked against
  its SHA-256 where missing). The papers (Tomczak & Welling 2018, VampPrior; van den Berg
  et al. 2018, Sylvester flows) shuffle with ``np.random.seed(s); np.random.shuffle(x)``
  (s = 123, 321, 231 for their three runs) and take 1565 / 200 / 200 images in order:
  reproduced exactly here with ``RandomState(split_seed).shuffle``.
- ``digits``: scikit-learn's 1797 8 × 8 digits (``sklearn.datasets.load_digits``, grey
  levels k = 0–16, here round(255·k/16) as uint8 0–255), split by fractions.

The pickle is read by :class:`ArrayUnpickler`, which admits numpy arrays and nothing else
(a downloaded pickle can otherwise run code).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import torch

from vilab.core.extras import require
from vilab.data.download import fetch
from vilab.data.sources import SPLIT_NAMES, Source, _split

__all__ = ["FREY_SHAPE", "FREY_SPLIT", "ArrayUnpickler", "load_digits", "load_freyfaces"]

FREY_SHAPE = (1, 28, 20)
FREY_SPLIT = (1565, 200, 200)

#: The globals a pickled numpy array needs, and nothing else.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # bytes in a protocol-0/1 pickle written by Python 3
}


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays (and lists, tuples, numbers, strings) only;
    any other global is refused with the name it asked for."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused global {module}.{name}: this pickle may hold numpy arrays only"
        )


def load_pickled_arrays(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`ArrayUnpickler` (latin-1 for Python 2 pickles)."""
    return ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def load_freyfaces(cfg: Any, *, download: bool = True) -> Source:
    """Frey Faces split 1565 / 200 / 200 after ``RandomState(cfg.split_seed).shuffle``."""
    path = fetch(["freyfaces/freyfaces.pkl"], cfg.data_dir, download=download)
    obj = load_pickled_arrays(path.read_bytes())
    faces = np.asarray(obj[0] if isinstance(obj, list | tuple) else obj)
    if faces.shape != (sum(FREY_SPLIT), 560) or faces.dtype != np.uint8:
        raise ValueError(
            f"{path}: an array {faces.shape} {faces.dtype}; expected (1965, 560) uint8"
        )
    faces = faces.copy()
    np.random.RandomState(cfg.split_seed).shuffle(faces)
    cuts = np.cumsum(FREY_SPLIT)[:2]
    parts = np.split(faces, cuts)
    splits = {s: (torch.from_numpy(p.copy()), None) for s, p in zip(SPLIT_NAMES, parts)}
    return Source(splits, FREY_SHAPE, str(path))


def load_digits(cfg: Any) -> Source:
    """scikit-learn's 8 × 8 digits as uint8 0–255 (k·255/16 rounded), with labels."""
    datasets = require("sklearn.datasets", "digits", "data.name=digits", "scikit-learn")
    d = datasets.load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)
    return _split(images, d.target, (1, 8, 8), cfg, "digits")
