"""The configuration of ``vilab fit``: a target, a family, the optimizer and the run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from vilab.config.base import DeviceSpec, _load, _Strict
from vilab.config.family import FamilyConfig


class TargetConfig(_Strict):
    """What p is: a built-in name (U1–U4, banana, banana_family) or ``module:function`` /
    ``file.py:function``; ``box`` = (x0, x1, y0, y1) for plots and 2-D quadrature.

    ``support``: where the density is positive when that is not all of R^D: None or
    ``"real"`` (R^D), ``"positive"`` ((0, ∞) in every coordinate), or one ``[lo, hi]`` per
    coordinate with null for no bound (``[[0, null], [-1, 1]]``). The family is then built
    on R^D and followed by the bijection T onto the support (lo + softplus, hi − softplus,
    a scaled sigmoid; :mod:`vilab.flows.support`), as Stan and Pyro do: its samples lie in
    the support and log q includes −log |det J_T|.

    ``posteriordb``: the posteriordb database folder for a ``posteriordb:NAME`` target
    (default: ``$POSTERIOR_DB_PATH``); a ``pyro:model.py:model`` target is a Pyro model.
    ``data``: the data of a Stan program ``stan:model.stan``: a path to a JSON file or a
    mapping inline (:mod:`vilab.targets.stan`).
    """

    name: str = "U1"
    dim: int | None = Field(None, ge=1)
    box: tuple[float, float, float, float] | None = None
    log_z: float | None = None
    context_dim: int | None = Field(None, ge=1)
    context_range: tuple[float, float] = (0.0, 1.0)
    support: Literal["real", "positive"] | list[tuple[float | None, float | None]] | None = None
    posteriordb: str | None = None
    data: str | dict[str, Any] | None = None

    @field_validator("support", mode="before")
    @classmethod
    def _support_form(cls, v: Any) -> Any:
        accepted = "'real', 'positive' or one [lo, hi] pair per coordinate (null for no bound)"
        if v is None or (isinstance(v, str) and v in ("real", "positive")):
            return v
        if isinstance(v, str) or not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"target.support must be {accepted}")
        out = []
        for i, pair in enumerate(v):
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2
            lo, hi = (_bound(pair[0], -math.inf), _bound(pair[1], math.inf)) if ok else (0, 0)
            if lo is None or hi is None or not lo < hi:
                raise ValueError(
                    f"target.support[{i}] = {pair!r}: each entry must be a pair [lo, hi] of "
                    "numbers or null (no bound) with lo < hi"
                )
            out.append([None if abs(lo) == math.inf else lo, None if hi == math.inf else hi])
        return out

    @model_validator(mode="after")
    def _support_per_coordinate(self) -> TargetConfig:
        if isinstance(self.support, list) and self.dim is not None:
            if len(self.support) != self.dim:
                raise ValueError(
                    f"target.support has {len(self.support)} [lo, hi] pair(s) but "
                    f"target.dim is {self.dim}: give one pair per coordinate"
                )
        return self


def _bound(b: object, none: float) -> float | None:
    """A bound of ``target.support`` as a float (null: ``none``, ±inf), None if it is not a
    number (NaN and bools are not)."""
    if b is None:
        return none
    if isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(b):
        return None
    return float(b)


class OptimConfig(_Strict):
    """The optimizer (:mod:`vilab.train.optim`): ``adam``, ``adamax`` (Sylvester paper) or
    ``rmsprop`` (centered, seed 004), with a learning-rate schedule: linear warm-up, then
    constant or cosine decay to ``lr * min_lr_ratio``; optional gradient-norm clipping."""

    name: Literal["adam", "adamax", "rmsprop"] = "adam"
    lr: float = Field(2e-3, gt=0, le=10)
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    grad_clip: float | None = Field(None, gt=0)


class FaultConfig(_Strict):
    """What to do about non-finite losses or gradients (:mod:`vilab.train.guard`): skip
    the step; after ``max_bad_steps`` in a row, roll back to the last checkpoint with the
    learning rate multiplied by ``rollback_lr_factor``; after ``max_rollbacks`` rollbacks,
    stop with an error."""

    max_bad_steps: int = Field(5, ge=1)
    max_rollbacks: int = Field(3, ge=0)
    rollback_lr_factor: float = Field(0.5, gt=0, lt=1)


def refuse_renamed(data: Any, renamed: dict[str, str], title: str) -> Any:
    """A ``mode="before"`` check: a key of ``renamed`` in ``data`` is refused with an
    error at that key that names its new spelling."""
    if isinstance(data, dict):
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "renamed", "{old} was renamed {new}", {"old": k, "new": v}
                ),
                loc=(k,),
                input=data[k],
            )
            for k, v in renamed.items()
            if k in data
        ]
        if errors:
            raise ValidationError.from_exception_data(title, errors)
    return data


class FitObjectiveConfig(_Strict):
    """The fit's objective, the reverse-KL ELBO, and its gradient (the same keys as a
    VAE's ``objective``).

    ``beta_start``/``beta_steps``: β-annealing β_t = min(1, beta_start + t / beta_steps)
    on log p̃ (Rezende & Mohamed 2015), t the steps done measured by the run's progress (a
    ``max_seconds`` budget moves it ahead); ``beta_steps = 0`` turns it off and the default
    (None) anneals over the first 40% of the steps, except for vilab's default family
    above 2-D, which is not annealed (:func:`anneals_by_default`). Annealing lets q spread over every mode
    before it sharpens: without it a flow on U1 typically keeps one of the two halves
    (KL ≈ log 2). ``stl``: the sticking-the-landing gradient (Roeder et al. 2017), for
    families with a log_prob: ``true`` on every step, ``false`` never, ``late`` from the
    last third of the run on (:func:`vilab.train.schedule.stl_now`); the default (None)
    is ``late`` for vilab's default family above 2-D and ``false`` otherwise
    (:func:`stl_by_default`).
    """

    beta_start: float = Field(0.01, ge=0, le=1)
    beta_steps: int | None = Field(None, ge=0)
    stl: bool | Literal["late"] | None = None


class StopConfig(_Strict):
    """When a fit stops (:mod:`vilab.train.stopping`). With ``auto`` (the default unless
    ``steps`` is given) the fit anneals β over ``anneal_steps`` steps, then keeps the
    learning rate constant until the bound stalls — its mean over the last two of four
    ``window``-step windows within max(``z`` standard errors, ``tol`` nats) of the two
    before, twice in a row — then multiplies it by ``lr_factor``, up to ``reductions``
    times, and stops at the stall after that (or at ``steps``, the cap). Progress is not
    judged while the standard error of that difference exceeds ``max_se`` nats (a bound
    too noisy to say anything). Without ``auto`` a fit runs exactly ``steps`` steps with
    the configured schedule."""

    auto: bool = True
    window: int = Field(100, ge=1)
    z: float = Field(2.0, gt=0)
    tol: float = Field(1e-3, ge=0)
    max_se: float = Field(1.0, gt=0)
    lr_factor: float = Field(0.1, gt=0, lt=1)
    reductions: int = Field(2, ge=0)
    anneal_steps: int = Field(800, ge=0)


class BudgetConfig(_Strict):
    """Draws of q per step sized to a ``max_seconds`` budget (:mod:`vilab.train.budget`):
    after the first step and ``probe_steps`` more, where the time left would allow fewer
    than ``min_steps`` steps of ``samples`` draws, later steps draw fewer, in proportion,
    down to ``min_samples``. ``min_steps: null`` keeps ``samples`` throughout; a fit
    without ``max_seconds`` always does."""

    min_steps: int | None = Field(1000, ge=1)
    min_samples: int = Field(100, ge=1)
    probe_steps: int = Field(10, ge=1)


class KLSizeConfig(_Strict):
    """How many draws of q the final exact KL takes (:mod:`vilab.estimators.sizing`):
    rounds until its standard error is at most max(``stderr`` nats, ``rel_stderr`` × the
    KL) — a KL of 20 nats is worth knowing to 0.2, one of 0.002 to 0.0003 —, from a pilot
    of ``min_samples`` draws and never more than ``max_samples`` (the result says when the
    cap is reached). ``eval_samples``, when given, is an exact count instead."""

    stderr: float = Field(3e-4, gt=0, allow_inf_nan=False)
    rel_stderr: float = Field(0.01, ge=0, allow_inf_nan=False)
    min_samples: int = Field(10_000, ge=2)
    max_samples: int = Field(1_000_000, ge=2)

    @model_validator(mode="after")
    def _floor_below_cap(self) -> KLSizeConfig:
        if self.min_samples > self.max_samples:
            raise ValueError(
                f"min_samples ({self.min_samples}) must be ≤ max_samples ({self.max_samples})"
            )
        return self


class ReportSizeConfig(KLSizeConfig):
    """How many draws of q the report card takes: rounds until the delta-method standard
    error of its log Ẑ is at most max(``stderr`` nats, ``rel_stderr`` × the KL
    log Ẑ − ELBO), from a pilot of ``min_samples`` (the floor that gives Pareto k̂ a
    tail to fit; the card stops at a round whose k̂ ≥ 0.7) and never more than
    ``max_samples``. ``report_samples``, when given, is an exact count instead."""

    min_samples: int = Field(5_000, ge=100)
    max_samples: int = Field(100_000, ge=100)


class FitConfig(_Strict):
    """Fit a family to a target by maximizing the reverse-KL ELBO.

    ``objective``: β-annealing and the gradient estimator (:class:`FitObjectiveConfig`).
    ``samples``: samples of q per step (split over ``contexts`` contexts for a target
    family), fewer where a ``max_seconds`` budget would allow too few steps (``budget``,
    :class:`BudgetConfig`). ``steps``: exactly this many steps when given, else the cap of
    a fit that stops on convergence (``stop``, :class:`StopConfig`). The exact KL and the report card
    (Pareto k̂, ESS, importance-sampled log Z, corrected moments; :mod:`vilab.report`)
    take as many draws of q as bring their standard errors under their targets (``kl``,
    ``report``: :class:`KLSizeConfig`, :class:`ReportSizeConfig`), or exactly
    ``eval_samples`` and ``report_samples`` when these are given. ``max_seconds``: stop early after
    this much training time. ``device``: where the family, the target's log-density, the
    samples and the exact KL compute (``auto``: CUDA when present; ``cpu``, ``cuda``,
    ``cuda:N``).
    """

    target: TargetConfig = Field(default_factory=TargetConfig)
    family: FamilyConfig = Field(default_factory=FamilyConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    objective: FitObjectiveConfig = Field(default_factory=FitObjectiveConfig)
    steps: int = Field(8000, ge=1)
    samples: int = Field(1000, ge=1)
    contexts: int = Field(16, ge=1)
    eval_contexts: list[float] | None = None
    seed: int = 0
    eval_samples: int | None = Field(None, ge=2)
    report_samples: int | None = Field(None, ge=100)
    kl: KLSizeConfig = Field(default_factory=KLSizeConfig)
    report: ReportSizeConfig = Field(default_factory=ReportSizeConfig)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    threads: int | None = Field(None, ge=1)
    figures: bool = True
    max_seconds: float | None = Field(None, gt=0)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    device: DeviceSpec = "auto"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        keys = ("beta_start", "beta_steps", "stl")
        return refuse_renamed(data, {k: f"objective.{k}" for k in keys}, cls.__name__)

    @model_validator(mode="after")
    def _steps_mean_steps(self) -> FitConfig:
        """``steps`` given and ``stop.auto`` not: exactly ``steps`` steps, as ever."""
        if "steps" in self.model_fields_set and "auto" not in self.stop.model_fields_set:
            self.stop.auto = False  # (recorded as set: a stored config keeps it)
        return self

    @model_validator(mode="after")
    def _samples_split(self) -> FitConfig:
        has_context = self.target.name == "banana_family" or self.target.context_dim is not None
        if has_context and self.samples < self.contexts:
            raise ValueError(f"samples ({self.samples}) must be ≥ contexts ({self.contexts})")
        if has_context and self.budget.min_samples < self.contexts:
            raise ValueError(
                f"budget.min_samples ({self.budget.min_samples}) must be ≥ contexts "
                f"({self.contexts})"
            )
        return self


def load_fit_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> FitConfig:
    """Defaults <- ``base`` <- YAML file ``path`` <- ``overrides`` (``key.sub=value``)."""
    return _load(FitConfig, path, overrides, base)
