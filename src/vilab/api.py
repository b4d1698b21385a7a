"""The library entry point: :func:`fit`, ``vilab fit`` as a function.

It takes what a user has — a target's name or their own log-density (a plain callable),
a family's kind or a family they built, config keys as keywords — and runs the same run
lifecycle as the CLI (:func:`vilab.train.run.execute`) with the same defaults: the same
run directory, files and numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from vilab.config import FitConfig, load_fit_config, read_yaml
from vilab.config.base import merge
from vilab.families.base import Family
from vilab.targets import resolve_target
from vilab.targets.base import Target
from vilab.train.fit import Fitter
from vilab.train.run import execute
from vilab.train.rundir import unique_dir


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        metrics: what ``metrics.json`` holds (``kl``, ``kl_stderr``, ``elbo``, …).
        family: the trained family.
        target: the target it was fitted to.
        run_dir: the run directory.
    """

    metrics: dict[str, Any]
    family: Family
    target: Target
    run_dir: Path


def fit(
    target: str | Target | Callable[..., Tensor],
    family: str | Family | None = None,
    *,
    run_dir: str | Path | None = None,
    config: FitConfig | str | Path | None = None,
    progress: bool = True,
    **settings: Any,
) -> FitResult:
    """Fit a family to a target and write a run directory, as ``vilab fit`` does.

    Args:
        target: a built-in name (``"U1"``), ``"file.py:function"`` / ``"module:function"``,
            a :class:`~vilab.targets.base.Target`, or a callable ``logp(z)`` (z ``(..., D)``
            -> ``(...)``), with the target keys ``dim``, ``box``, ``log_z``,
            ``context_dim``, ``context_range``, ``support`` given as keywords
            (``support="positive"`` or one ``[lo, hi]`` per coordinate, None for no bound:
            the family is then mapped onto the support; :class:`~vilab.config.TargetConfig`).
        family: None (the config's family), a kind (``"planar"``), the family section as
            a dict (``{"kind": "spline_coupling", "layers": 6}``), or a
            :class:`~vilab.families.base.Family` of your own.
        run_dir: default ``runs/<target>_<family>``, made unique.
        config: a :class:`~vilab.config.FitConfig` or a YAML file; ``settings`` change it.
        progress: show the progress bar.
        settings: any :class:`~vilab.config.FitConfig` key, sections as dicts
            (``steps=2000, optim={"lr": 1e-3}``).

    Raises:
        ValueError: a bad setting, target or run directory, with the reason.
    """
    data = config.model_dump() if isinstance(config, FitConfig) else {}
    if isinstance(config, (str, Path)):
        data = read_yaml(config)
    target_keys = {"dim", "box", "log_z", "context_dim", "context_range", "support"}
    section = {k: settings.pop(k) for k in target_keys & settings.keys()}
    if isinstance(target, str):
        section["name"] = target
    if isinstance(family, str):
        settings = merge(settings, {"family": {"kind": family}})
    elif isinstance(family, Mapping):
        settings = merge(settings, {"family": dict(family)})
    elif family is not None and not isinstance(family, Family):
        raise ValueError(
            f"family={family!r}: accepted None, a kind such as 'planar', the family "
            "section as a dict, or a vilab Family"
        )
    cfg = load_fit_config(base=merge(data, {**settings, "target": section}))
    t = cfg.target
    user_target = None
    if isinstance(target, Target):
        user_target = target
    elif not isinstance(target, str):
        user_target = resolve_target(
            target, t.dim, t.box, t.log_z, t.context_dim, t.context_range, t.support
        )
    user_family = family if isinstance(family, Family) else None
    name = (user_target.name if user_target is not None else t.name).rpartition(":")[2]
    kind = cfg.family.kind if user_family is None else type(user_family).__name__
    out = Path(run_dir) if run_dir is not None else unique_dir(Path("runs") / f"{name}_{kind}")
    fitters: list[Fitter] = []

    def make() -> Fitter:
        fitters.append(Fitter(cfg, user_target, user_family))
        return fitters[0]

    metrics = execute(make, out, progress=progress)
    return FitResult(metrics, fitters[0].family, fitters[0].target, out)
