"""The library entry point: ``vilab.fit`` with the CLI's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vilab.config import FitConfig, load_fit_config
from vilab.families.base import Family
from vilab.targets import resolve_target
from vilab.targets.base import Target
from vilab.train.fit import Fitter
from vilab.train.fit import fit as _fit


@dataclass
class FitResult:
    """``metrics`` (metrics.json), the trained ``family``, the ``target``, ``run_dir``."""

    metrics: dict[str, Any]
    family: Family
    target: Target
    run_dir: Path


def _unique(base: Path) -> Path:
    k, out = 2, base
    while out.exists():
        out, k = base.with_name(f"{base.name}_{k}"), k + 1
    return out


def fit(
    target: Any,
    family: Any = None,
    *,
    run_dir: str | Path | None = None,
    config: FitConfig | str | Path | None = None,
    progress: bool = True,
    dim: int | None = None,
    box: tuple[float, float, float, float] | None = None,
    log_z: float | None = None,
    **settings: Any,
) -> FitResult:
    """Fit ``family`` (None: the config's; a kind name; or a Family) to ``target`` (a
    name, ``file.py:function``, a Target, or a callable ``logp(z)`` with ``dim=``)."""
    base = config.model_dump() if isinstance(config, FitConfig) else {}
    path = None if isinstance(config, FitConfig) else config
    t = base.setdefault("target", {})
    if isinstance(target, str):
        t["name"] = target
    for key, value in (("dim", dim), ("box", box), ("log_z", log_z)):
        if value is not None:
            t[key] = value
    if isinstance(family, str):
        base.setdefault("family", {})["kind"] = family
    cfg = load_fit_config(path, None, {**base, **settings})
    user_target = None
    if not isinstance(target, str):
        user_target = (
            target
            if isinstance(target, Target)
            else resolve_target(target, cfg.target.dim, cfg.target.box, cfg.target.log_z)
        )
    fam = family if isinstance(family, Family) else None
    name = getattr(user_target, "name", cfg.target.name).rpartition(":")[2]
    out = Path(run_dir) if run_dir else _unique(Path("runs") / f"{name}_{cfg.family.kind}")
    holder: list[Fitter] = []
    metrics = _fit(cfg, out, progress, target=user_target, family=fam, tensorboard=True)
    del holder
    trained = fam if fam is not None else None
    return FitResult(metrics, trained, user_target, out)  # type: ignore[arg-type]
