"""Reference answers for targets: posterior means and standard deviations, and the stored
files (``<name>.json`` in this folder) that hold the ones computed by long MCMC runs.

A :class:`Reference` is what a fit is scored against, as the Inference Gym does it
(Sountsov, Radul et al. 2020, "Inference Gym"): the error of a mean in units of the
reference standard deviation, ``|m̂_d − m_d| / s_d``, and of a standard deviation,
``|ŝ_d − s_d| / s_d``. Closed-form references are exact; chain references state their
settings, R̂ and effective sample size in ``source``.

Stored files are checked against a SHA-256 written in the code that reads them
(:func:`load_reference_json`), so that an edited or corrupted file fails loudly instead
of silently moving the goalposts. The folder is shipped as package data.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Where the stored reference files live (a module attribute so tests can point it elsewhere).
REFERENCE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Reference:
    """Reference posterior moments of a D-dimensional target.

    Attributes:
        mean: ``E_p[z_d]``, D numbers.
        sd: ``sqrt(Var_p[z_d])``, D positive numbers.
        source: how they were obtained, e.g. ``"closed form"`` or the reference chains'
            settings with their max R̂ and min bulk ESS.
    """

    mean: tuple[float, ...]
    sd: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        mean = tuple(float(m) for m in self.mean)
        sd = tuple(float(s) for s in self.sd)
        if len(mean) != len(sd) or not mean:
            raise ValueError(
                f"reference mean and sd must be non-empty and of one length, got "
                f"{len(mean)} means and {len(sd)} sds"
            )
        if not all(math.isfinite(m) for m in mean):
            raise ValueError(f"reference means must be finite, got {mean}")
        if not all(math.isfinite(s) and s > 0 for s in sd):
            raise ValueError(f"reference sds must be finite and > 0, got {sd}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "sd", sd)

    @property
    def dim(self) -> int:
        """D."""
        return len(self.mean)

    def tensors(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(mean, sd)`` as tensors of shape ``(D,)``."""
        return (
            torch.tensor(self.mean, dtype=dtype, device=device),
            torch.tensor(self.sd, dtype=dtype, device=device),
        )


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_reference_json(name: str, sha256: str) -> dict[str, Any]:
    """Read ``REFERENCE_DIR/<name>.json`` after checking its SHA-256.

    Args:
        name: the file's stem (the target's name).
        sha256: the expected hex digest, stored in the code that uses the file.

    Raises:
        ValueError: the file is missing, its checksum differs (both are named), or it is
            not a JSON object with ``mean`` and ``sd`` lists of one length.
    """
    path = REFERENCE_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(
            f"reference file {str(path)!r} is missing; regenerate it with "
            "benchmarks/reference_chains.py or reinstall vilab"
        )
    got = sha256_of(path)
    if got != sha256:
        raise ValueError(
            f"reference file {str(path)!r} has SHA-256 {got}, expected {sha256}: the file "
            "was changed or corrupted; regenerate it with benchmarks/reference_chains.py and "
            "update the checksum in vilab/targets/suite.py"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not {"mean", "sd"} <= data.keys():
        raise ValueError(f"reference file {str(path)!r} must hold an object with 'mean' and 'sd'")
    return data
