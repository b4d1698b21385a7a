"""Run logging: a JSON-lines metrics file, TensorBoard scalars, and a progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from vilab.core.io import atomic_write_text


class RunLogger:
    """Writes ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events
    under ``run_dir``, and drives a tqdm progress bar.

    Args:
        run_dir: the run directory.
        total_steps: for the progress bar.
        start_step: the step training starts from (resume); later lines in
            ``metrics.jsonl`` are dropped so a resumed run's log reads as one run.
        progress: show the bar.
        tensorboard: write TensorBoard events (``torch.utils.tensorboard``).
        enabled: False for a process that must not write (a data-parallel rank > 0):
            every method is then a no-op.
    """

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int = 0,
        progress: bool = True,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.file: TextIO | None = None
        self.writer: Any = None
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=not (progress and enabled),
            dynamic_ncols=True,
            unit="step",
        )
        if not enabled:
            return
        self._truncate_after(start_step)
        self.file = self.path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1
            )

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def rewind(self, step: int) -> None:
        """Forget the records after ``step`` (a rollback to a checkpoint at ``step``)."""
        if self.file is None:
            return
        self.file.close()
        self._truncate_after(step)
        self.file = self.path.open("a")
        self.bar.n = step
        self.bar.refresh()

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.file is None:
            return
        record = {"step": step, **{k: _num(v) for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("bound", "kl")})

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _num(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else str(v)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn last line (crash mid-write) is skipped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
