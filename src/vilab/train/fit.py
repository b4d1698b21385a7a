"""The fit's trainer: builds a family for a target and steps the reverse-KL ELBO.

    ELBO(q) = E_q[log p̃(z) − log q(z)] = log Z − KL(q‖p)

:class:`Fitter` builds what it trains (:mod:`vilab.build`), takes a step and saves and
restores its state (:class:`~vilab.train.state.TrainerState`); nothing more. Its
evaluation (exact KL, report card) is :mod:`vilab.evaluation.fit`, its figures
:mod:`vilab.plots.density2d`, and the run around it :mod:`vilab.commands.fit`.

A target with a stated ``support`` gets a family that ends in the bijection onto it
(:func:`vilab.build.family_from_config`). A non-finite log p̃ at q's samples is checked
against the target (:mod:`vilab.train.faults`), and the step returns what it found.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vilab.build import family_from_config, target_from_config
from vilab.config import FitConfig, anneals_by_default, stl_by_default
from vilab.core.device import resolve_device, rng_state, set_rng_state
from vilab.core.progress import say
from vilab.estimators.elbo import annealed_elbo_surrogate, beta_at, elbo
from vilab.families.base import Family
from vilab.targets.base import Target
from vilab.train.budget import draws_for_budget
from vilab.train.faults import check_rejections, check_target
from vilab.train.guard import backward_checked
from vilab.train.optim import load_optimizer_state, make_optimizer
from vilab.train.pilot import precondition
from vilab.train.schedule import apply_lr, progress, stl_now
from vilab.train.state import TrainerState
from vilab.train.steps import StepResult
from vilab.train.stopping import Convergence

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Fitter(TrainerState):
    """One fit: the target, the family, its optimizer and one step.

    ``target`` (a :class:`~vilab.targets.base.Target` or a plain callable ``logp(z)``,
    described by ``config.target``'s keys) and ``family`` replace the configured ones. A
    family of your own is used as it is: with a support, let it end in
    :class:`~vilab.flows.support.SupportTransform` yourself.

    Raises:
        ValueError: before any training, for a target or family that cannot work (a
            malformed support, a semi-implicit family on a support, STL without log_prob).
    """

    def __init__(
        self,
        config: FitConfig,
        target: Target | Callable[..., Tensor] | None = None,
        family: Family | None = None,
    ) -> None:
        super().__init__(config.faults)
        self.config = config
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.target = target_from_config(config.target, target)
        self.dtype = DTYPES[config.dtype]
        self.family_name = config.family.kind if family is None else type(family).__name__
        #: ``objective.beta_steps`` as this fit uses it: unset, 0 (no β-annealing) for
        #: vilab's default family above 2-D (:func:`vilab.config.anneals_by_default`)
        self.beta_steps = config.objective.beta_steps
        #: ``objective.stl`` as this fit uses it: unset, ``late`` for vilab's default family
        #: above 2-D (:func:`vilab.config.stl_by_default`), else false
        self.stl = config.objective.stl if config.objective.stl is not None else False
        if family is None:
            t = self.target
            family = family_from_config(config.family, t.dim, t.context_dim, t.support)
            family = family.to(self.dtype)
            if self.beta_steps is None and not anneals_by_default(config.family, t.dim):
                self.beta_steps = 0
            if config.objective.stl is None:
                self.stl = stl_by_default(config.family, t.dim)
        self.family = family.to(self.device)  # built on the CPU: the same start anywhere
        if self.stl and not self.family.has_log_prob:
            raise ValueError(
                f"objective.stl={str(self.stl).lower()} needs a family that can score any z; "
                f"{self.family_name!r} cannot (a semi-implicit family, or a flow of yours "
                "without an inverse): set objective.stl=false"
            )
        #: what the pilot found (:mod:`vilab.train.pilot`), once it has run in this process
        self.pilot: dict[str, float | int] | None = None
        self._pilot_checked = False
        self.convergence = Convergence(config.stop)
        # the stopping rule's window: steps, Σ bound, Σ bound² (float64, on the device)
        self._sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        o = config.optim
        self.optimizer = make_optimizer(o.name, self.family.parameters(), o.lr, self.device)
        #: draws of q per step: ``samples``, or fewer once a budget is found short
        #: (:mod:`vilab.train.budget`); ``_probe`` the (step, seconds) its timing starts at
        self.draws = config.samples
        self._probe: tuple[int, float] | None = None
        #: how the draws were sized, for ``metrics.json`` (None: not sized)
        self.budget: dict[str, float | int] | None = None

    def contexts(self, n: int) -> tuple[int, Tensor | None]:
        """Samples per context and the contexts of one step (None for a single target)."""
        if self.target.context_dim is None:
            return n, None
        b = self.config.contexts
        return max(1, n // b), self.target.sample_context(b).to(self.device, self.dtype)

    def train_step(self, log_value: bool = True) -> StepResult:
        """One update from the family's :meth:`~vilab.families.base.Family.training_sample`:
        the loss is −E[β log p̃(z) − log_q_surrogate] (the family's gradient estimator:
        reparameterized, STL or UIVI's), the logged bound E[log p̃(z) − log q(z)].
        ``log_value=False`` lets a family skip a costly log q(z) value (semi-implicit: an
        importance-sampled estimate) that only the logged bound needs."""
        cfg = self.config
        if not self._pilot_checked:
            self._run_pilot()
        beta, lr, stl = self._schedule()
        watch = cfg.stop.auto and beta >= 1.0 and (log_value or self.family.exact_log_q)
        n, context = self.contexts(self.draws)
        s = self.family.training_sample(n, context, stl=stl, need_value=log_value or watch)
        log_p = self.target.log_prob(s.z, context)
        keep = ~torch.isneginf(log_p) if self.target.rejects else None  # Target.rejects
        loss = -annealed_elbo_surrogate(log_p, s.log_q_surrogate, beta, keep).mean()
        bound = elbo(log_p - s.log_q, keep).mean().detach()
        self.optimizer.zero_grad(set_to_none=True)
        finite = backward_checked(loss, list(self.family.parameters()), cfg.optim.grad_clip)
        finite = finite and (keep is None or bool(keep.any()))  # nothing kept: skipped
        fault = None
        if finite:  # a non-finite step is skipped (vilab.train.guard)
            self.optimizer.step()
        else:  # any non-finite log p̃ makes the step so: is the target at fault?
            fault = check_target(self.target, log_p, s.z, context, self.step)
        self.step += 1
        self.seconds = self.clock()
        value = bound.item() if log_value else math.nan  # no read-back on other steps
        if watch and finite:
            b = bound.double()
            self._sums += torch.stack([torch.ones_like(b), b, b * b])
        if cfg.stop.auto and self.step % cfg.stop.window == 0:
            self.convergence.observe(self.step, *self._sums.tolist())  # one read-back
            self._sums.zero_()
        self._size_to_budget()
        values = {"bound": value, "beta": beta, "lr": lr}
        if keep is not None and log_value:  # draws the target rejected (read back when logged)
            values["rejected"] = check_rejections(self.target, keep, s.z, context, self.step)
        return StepResult(values, finite, fault)

    def _run_pilot(self) -> None:
        """Before the first step of a new run, set a preconditioned family's affine map
        (:func:`vilab.train.pilot.precondition`; a resumed run has it in its checkpoint)."""
        self._pilot_checked = True
        found = precondition(self.family, self.target, self.dtype, self.device, self.config.seed)
        if found is None:
            return
        self.pilot = found.summary()
        where = (
            "none better than N(0, I)"
            if found.chosen < 0
            else f"Laplace approximation at path {found.path} iterate {found.chosen}"
        )
        say(
            f"vilab: pilot: {where}, ELBO {found.elbo:.6g} (N(0, I): {found.start_elbo:.6g}); "
            f"{found.iterations} L-BFGS iterations, {found.evaluations} evaluations, "
            f"{found.seconds:.1f} s"
        )

    def _size_to_budget(self) -> None:
        """After a step: start timing after the first, decide the draws per step once
        ``budget.probe_steps`` more are timed (:func:`vilab.train.budget.draws_for_budget`)."""
        cfg, b = self.config, self.config.budget
        if cfg.max_seconds is None or b.min_steps is None or self.budget is not None:
            return
        if self._probe is None:
            self._probe = (self.step, self.seconds)
            return
        step0, seconds0 = self._probe
        if self.step - step0 < b.probe_steps:
            return
        per_step = (self.seconds - seconds0) / (self.step - step0)
        left = cfg.max_seconds - self.seconds
        self.draws = draws_for_budget(cfg.samples, per_step, left, b.min_steps, b.min_samples)
        self.budget = {"step_seconds": per_step, "draws": self.draws, "at_step": self.step}
        if self.draws < cfg.samples:
            say(
                f"vilab: {per_step:.3g} s per step of {cfg.samples} draws leaves "
                f"{left / per_step:.0f} steps in the budget; drawing {self.draws} per step "
                f"from here (budget.min_steps {b.min_steps})"
            )

    @property
    def stop_reason(self) -> str | None:
        """Why the fit is over before ``steps``: it converged (:mod:`vilab.train.stopping`,
        with ``stop.auto``); None otherwise."""
        return self.convergence.reason if self.config.stop.auto else None

    def _schedule(self) -> tuple[float, float, bool]:
        """β and the learning rate of this step (set on the optimizer) and whether it takes
        STL gradients (:func:`vilab.train.schedule.stl_now`): with ``stop.auto`` annealing
        over ``stop.anneal_steps``, then the rate the stopping rule chose
        (:mod:`vilab.train.stopping`), progress read from a ``max_seconds`` budget only (the
        step cap is none); else the configured schedule over ``steps``."""
        cfg, obj = self.config, self.config.objective
        if cfg.stop.auto:
            anneal = cfg.stop.anneal_steps if self.beta_steps is None else self.beta_steps
            beta = beta_at(self.step, beta_start=obj.beta_start, beta_steps=anneal)
            scale = self.guard.lr_scale * self.convergence.lr_scale
            spent = 0.0 if cfg.max_seconds is None else self.seconds / cfg.max_seconds
            stl = stl_now(self.stl, spent, self.convergence.lr_scale < 1.0)
            return beta, apply_lr(self.optimizer, cfg.optim, self.step, 0.0, scale), stl
        frac = progress(self.step, self.seconds, cfg.steps, cfg.max_seconds)
        beta = beta_at(
            self.step,
            beta_start=obj.beta_start,
            beta_steps=self.beta_steps,
            total_steps=cfg.steps,
            frac=frac,
        )
        lr = apply_lr(self.optimizer, cfg.optim, self.step, frac, self.guard.lr_scale)
        return beta, lr, stl_now(self.stl, frac)

    def stop_summary(self, interrupted: bool = False) -> dict[str, Any]:
        """Why the fit stopped, for ``metrics.json``: ``stop`` (``converged``, ``steps``,
        ``max_seconds`` or ``interrupted``), ``stop_reason`` in words and
        ``stopped_at_step``."""
        cfg = self.config
        if self.stop_reason is not None:
            kind, why = "converged", self.stop_reason
        elif self.step >= cfg.steps:
            cap = " (the cap: the bound had not settled)" if cfg.stop.auto else ""
            kind, why = "steps", f"ran the {cfg.steps} steps asked for{cap}"
        elif interrupted:
            kind, why = "interrupted", "interrupted by a signal (resume with --resume)"
        else:  # the loop's only other way out
            kind, why = "max_seconds", f"reached max_seconds = {cfg.max_seconds}"
        return {"stop": kind, "stop_reason": why, "stopped_at_step": self.step}

    def own_state(self) -> dict[str, Any]:
        return {
            "family": self.family.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.device),
            "convergence": {**self.convergence.state_dict(), "sums": self._sums.tolist()},
            "budget": self.budget,
        }

    def load_own_state(self, state: dict[str, Any]) -> None:
        self.family.load_state_dict(state["family"])
        self._pilot_checked = False  # (a rollback to the start has an unset map)
        load_optimizer_state(self.optimizer, state["optimizer"])
        set_rng_state(state["rng"], self.device)
        self.budget = state.get("budget")  # (checkpoints before the sizing have none)
        self.draws = self.config.samples if self.budget is None else int(self.budget["draws"])
        self._probe = None
        if "convergence" in state:  # (checkpoints before the rule have none)
            self.convergence.load_state_dict(state["convergence"])
            self._sums.copy_(torch.tensor(state["convergence"]["sums"], dtype=torch.float64))
