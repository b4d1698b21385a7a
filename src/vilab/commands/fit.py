"""``vilab fit`` and :func:`vilab.fit`: fit a family to a target, through one entry point.

:func:`run_fit` is the one entry point (the CLI, the demo and :func:`fit` call it): it
names the run directory, runs the :class:`~vilab.train.fit.Fitter` through the run
lifecycle (:func:`vilab.train.run.execute`) with :class:`FitJob` (records with
KL = log Z − ELBO, the final exact KL and report card, the figures) and returns a
:class:`FitResult`. :func:`fit` takes what a user has — a target's name or their own
log-density, a family's kind or one they built, config keys as keywords — and turns it
into a :class:`~vilab.config.FitConfig` for it.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vilab.config import FitConfig, load_fit_config, read_yaml
from vilab.config.base import merge
from vilab.core.progress import FEW_SECONDS, duration, say
from vilab.estimators.sizing import Sizing
from vilab.evaluation.fit import eval_context_rows, evaluate_fit, target_log_z
from vilab.families.base import AtContext, Family
from vilab.targets.base import Target, default_eval_contexts
from vilab.train.fit import Fitter
from vilab.train.logging import RunLogger, read_metrics
from vilab.train.run import execute
from vilab.train.rundir import unique_dir
from vilab.train.steps import Hooks

#: Keys of :class:`~vilab.config.TargetConfig` that :func:`fit` takes as keywords.
TARGET_KEYS = ("dim", "box", "log_z", "context_dim", "context_range", "support", "data")


@dataclass(frozen=True)
class FitResult:
    """What a fit returns.

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

    def to_arviz(self, n: int = 4000, seed: int = 0) -> Any:
        """``n`` seeded draws of the fitted q as ArviZ data (an xarray ``DataTree``): named,
        constrained parameters in ``posterior`` (one chain), log p̃, log q and the raw and
        PSIS-smoothed importance log-weights in ``sample_stats``
        (:func:`vilab.evaluation.draws.draws_to_arviz`; needs ``vilab[arviz]``)."""
        from vilab.evaluation.draws import draws_to_arviz

        return draws_to_arviz(self.family, self.target, n, seed)


class FitJob:
    """The fit's side of the run (:class:`vilab.train.run.Job`): records with
    KL = log Z − ELBO where log Z is known, the final evaluation
    (:func:`vilab.evaluation.fit.evaluate_fit`) at the evaluation contexts fixed before
    training (so a run never trains to fail at its evaluation), and the figures."""

    def __init__(self) -> None:
        self.contexts: list[list[float]] | None = None

    def hooks(self, fitter: Fitter, run_dir: Path, logger: RunLogger) -> Hooks:
        t = fitter.target
        self.contexts = eval_context_rows(t, fitter.config.eval_contexts)
        log_z = target_log_z(t) if t.context_dim is None else None

        def log(step: int, values: dict[str, float]) -> None:
            if log_z is not None and "bound" in values:
                values["kl"] = log_z - values["bound"]
            logger.log(step, values)

        return Hooks(log=log, rewind=logger.rewind, advance=logger.advance)

    def describe(self, fitter: Fitter) -> dict[str, Any]:
        return {
            "device": str(fitter.device),
            "target": fitter.target.name,
            "family": fitter.family_name,
            "parameters": sum(p.numel() for p in fitter.family.parameters()),
            **({"pilot": fitter.pilot} if fitter.pilot is not None else {}),
            **({"budget": fitter.budget} if fitter.budget is not None else {}),
        }

    def finish(
        self, fitter: Fitter, run_dir: Path, interrupted: bool, progress: bool
    ) -> dict[str, Any]:
        """The exact KL and report card (sized by ``kl`` and ``report``, or the counts
        ``eval_samples`` and ``report_samples``) and, with ``figures``, the pictures; the
        seconds of each under ``evaluation_seconds``."""
        cfg, family, target = fitter.config, fitter.family, fitter.target
        out = evaluate_fit(
            family,
            target,
            eval_sizing(cfg),
            report_sizing(cfg),
            self.contexts,
            dtype=fitter.dtype,
            device=fitter.device,
            progress=progress,
        )
        out["steps_per_second"] = fitter.step / max(fitter.seconds, 1e-9)
        out.update(fitter.stop_summary(interrupted))
        if cfg.stop.auto and not interrupted:  # (N steps asked for need no explaining)
            print(f"vilab: {out['stop_reason']}", file=sys.stderr, flush=True)
        if cfg.figures:
            from vilab.plots.density2d import plot_run

            t0 = time.perf_counter()
            records = read_metrics(run_dir / "metrics.jsonl")
            on_cpu = copy.deepcopy(family).cpu()  # the grids of the figures are CPU's
            if progress:
                figures_cost_line(on_cpu, target, self.contexts)
            plot_run(on_cpu, target, records, run_dir, self.contexts)
            out["evaluation_seconds"]["figures"] = time.perf_counter() - t0
        return out


#: Points of q's density grid in the 2-D figures (200 × 200) and of the probe that times it.
GRID_POINTS, PROBE_POINTS = 200 * 200, 400


@torch.no_grad()
def figures_cost_line(
    family: Family, target: Target, contexts: list[list[float]] | None = None
) -> None:
    """Before the figures of a 2-D fit, the cost of their dominant part, q's density on
    the 200 × 200 grid of ``learned_density.png``, predicted from q's log-density at
    :data:`PROBE_POINTS` points of the box; said when past a few seconds."""
    if target.dim != 2 or not family.has_log_prob:
        return
    q: Family = family
    if target.context_dim is not None:
        row = (contexts or default_eval_contexts(target))[0]
        dtype = next(iter(family.parameters()), torch.zeros(())).dtype
        q, target = (
            AtContext(family, torch.tensor([row], dtype=dtype)),
            target.at(torch.tensor(row, dtype=dtype)),
        )
    x0, x1, y0, y1 = target.plot_box or (-4.0, 4.0, -4.0, 4.0)
    dtype = next(iter(family.parameters()), torch.zeros(())).dtype
    u = torch.rand(PROBE_POINTS, 2, dtype=dtype, generator=torch.Generator().manual_seed(0))
    pts = torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], -1)
    t0 = time.perf_counter()
    q.log_prob(pts)
    seconds = (time.perf_counter() - t0) * GRID_POINTS / PROBE_POINTS
    if seconds > FEW_SECONDS:
        say(
            f"figures: ~{duration(seconds)} for q on the 200×200 grid of learned_density.png, "
            "then the drawing (--no-figures skips them)"
        )


def eval_sizing(cfg: FitConfig) -> Sizing:
    """The exact KL's draws: exactly ``eval_samples`` when given, else sized by ``kl``."""
    k = cfg.kl
    return Sizing.of(cfg.eval_samples, k.stderr, k.min_samples, k.max_samples, k.rel_stderr)


def report_sizing(cfg: FitConfig) -> Sizing:
    """The report card's draws: exactly ``report_samples`` when given, else by ``report``."""
    r = cfg.report
    return Sizing.of(cfg.report_samples, r.stderr, r.min_samples, r.max_samples, r.rel_stderr)


def run_fit(
    config: FitConfig,
    run_dir: str | Path | None = None,
    *,
    target: Target | Callable[..., Tensor] | None = None,
    family: Family | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
) -> FitResult:
    """Train, evaluate and write the run directory: the one fit entry point.

    The run directory (default ``runs/<target>_<family>``, made unique) gets
    ``config.yaml``, ``metrics.jsonl`` (every ``log_every`` steps), ``tensorboard/``,
    ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end), ``metrics.json``
    and the figures, through the one run lifecycle (:func:`vilab.train.run.execute`: a
    finished run is never overwritten unless ``overwrite``; ``resume`` continues the
    checkpoint exactly; SIGINT/SIGTERM stop at the end of the current step with a
    checkpoint, metrics and figures, ``"interrupted": true``; a second signal stops at
    once). A step with a non-finite loss or gradient is skipped; repeated ones roll back
    to the last checkpoint with a lower learning rate (:mod:`vilab.train.guard`,
    ``config.faults``). ``target`` (a Target or a plain callable described by
    ``config.target``) and ``family`` replace the configured ones.
    """
    if run_dir is None:
        name = config.target.name  # a callable's own name, as its target will be named
        if target is not None:
            name = getattr(target, "name", None) or getattr(target, "__name__", "custom")
        kind = config.family.kind if family is None else type(family).__name__
        stem = Path(str(name).rpartition(":")[2]).name.removesuffix(".stan")  # stan:path
        run_dir = unique_dir(Path("runs") / f"{stem}_{kind}")
    fitters: list[Fitter] = []

    def make() -> Fitter:
        fitters.append(Fitter(config, target, family))
        return fitters[0]

    metrics = execute(
        make,
        FitJob(),
        run_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        tensorboard=tensorboard,
    )
    return FitResult(metrics, fitters[0].family, fitters[0].target, Path(run_dir))


def fit(
    target: str | Target | Callable[..., Tensor],
    family: str | Mapping[str, Any] | Family | None = None,
    *,
    run_dir: str | Path | None = None,
    config: FitConfig | str | Path | None = None,
    progress: bool = True,
    **settings: Any,
) -> FitResult:
    """Fit a family to a target and write a run directory, as ``vilab fit`` does (the same
    defaults, files and numbers: :func:`run_fit`).

    Args:
        target: a built-in name (``"U1"``), ``"file.py:function"`` / ``"module:function"``,
            a :class:`~vilab.targets.base.Target`, or a callable ``logp(z)`` (z ``(..., D)``
            -> ``(...)``), with the target keys ``dim``, ``box``, ``log_z``,
            ``context_dim``, ``context_range``, ``support`` (and a Stan program's ``data``) given as keywords
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
    section = {k: settings.pop(k) for k in TARGET_KEYS if k in settings}
    if isinstance(target, str):
        section["name"] = target
    own = None
    if isinstance(family, str):
        settings = merge(settings, {"family": {"kind": family}})
    elif isinstance(family, Mapping):
        settings = merge(settings, {"family": dict(family)})
    elif family is not None:
        if not callable(getattr(family, "training_sample", None)):  # the Family contract
            raise ValueError(
                f"family={family!r}: accepted None, a kind such as 'planar', the family "
                "section as a dict, or a vilab Family"
            )
        own = family
    cfg = load_fit_config(base=merge(data, {**settings, "target": section}))
    given = None if isinstance(target, str) else target
    return run_fit(cfg, run_dir, target=given, family=own, progress=progress)
