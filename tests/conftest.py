"""Shared fixtures: the real data directory (``$VILAB_DATA_DIR``, else ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The directory holding ``mnist/`` and ``binarized_mnist/``; skips the test when the
    real data set is not on this machine."""
    root = Path(os.environ.get("VILAB_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (root / "binarized_mnist").is_dir():
        pytest.skip(f"real MNIST data not found in {root} (set VILAB_DATA_DIR)")
    return root


@pytest.fixture
def keep_threads():
    """Restores torch's thread count after a test whose config sets ``threads``."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


#: The devices a test can run on here: the CPU, and CUDA where torch sees a GPU.
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each available device in turn (``cpu``; ``cuda`` too on a machine with a GPU)."""
    return torch.device(request.param)
