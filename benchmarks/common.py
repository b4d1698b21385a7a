"""What every benchmark prints first (the machine) and where it finds the data."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

import vilab

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_lines(peers: str = "") -> list[str]:
    """A few lines describing the machine and the software under test; ``peers`` names
    the compared libraries with their versions (e.g. ``"normflows 1.7.3"``)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores; load average {load})",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"Python {platform.python_version()}",
        f"- vilab {vilab.__version__}" + (f", {peers}" if peers else ""),
    ]


def default_data_dir(arg: str | None) -> str | None:
    """``--data-dir``, else ``$VILAB_DATA_DIR``, else ``../shared/data`` beside the
    repository if it exists, else None (vilab's cache)."""
    if arg:
        return arg
    if os.environ.get("VILAB_DATA_DIR"):
        return os.environ["VILAB_DATA_DIR"]
    beside = REPO.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else None


def report_goals(out: dict[str, Any], lines: list[str], json_path: Path | None) -> None:
    """Print the Goals section and, with ``--json``, write the raw results with it."""
    print("## Goals\n")
    print("\n".join(lines) + "\n")
    out["goals"] = lines
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
