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
from vilab.config import FitConfig
from vilab.core.device import resolve_device, rng_state, set_rng_state
from vilab.estimators.elbo import annealed_elbo_surrogate, beta_at, elbo
from vilab.families.base import Family
from vilab.targets.base import Target
from vilab.train.faults import check_target
from vilab.train.guard import backward_checked
from vilab.train.optim import load_optimizer_state, make_optimizer
from vilab.train.schedule import apply_lr, progress
from vilab.train.state import TrainerState
from vilab.train.steps import StepResult

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
        if family is None:
            t = self.target
            family = family_from_config(config.family, t.dim, t.context_dim, t.support)
            family = family.to(self.dtype)
        self.family = family.to(self.device)  # built on the CPU: the same start anywhere
        if config.objective.stl and not self.family.has_log_prob:
            raise ValueError(
                f"objective.stl=true needs a family that can score any z; "
                f"{self.family_name!r} cannot (a semi-implicit family, or a flow of yours "
                "without an inverse): set objective.stl=false"
            )
        o = config.optim
        self.optimizer = make_optimizer(o.name, self.family.parameters(), o.lr, self.device)

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
        cfg, obj = self.config, self.config.objective
        frac = progress(self.step, self.seconds, cfg.steps, cfg.max_seconds)
        beta = beta_at(
            self.step,
            beta_start=obj.beta_start,
            beta_steps=obj.beta_steps,
            total_steps=cfg.steps,
            frac=frac,
        )
        lr = apply_lr(self.optimizer, cfg.optim, self.step, frac, self.guard.lr_scale)
        n, context = self.contexts(cfg.samples)
        s = self.family.training_sample(n, context, stl=obj.stl, need_value=log_value)
        log_p = self.target.log_prob(s.z, context)
        loss = -annealed_elbo_surrogate(log_p, s.log_q_surrogate, beta).mean()
        bound = elbo(log_p - s.log_q).mean().detach()
        self.optimizer.zero_grad(set_to_none=True)
        finite = backward_checked(loss, list(self.family.parameters()), cfg.optim.grad_clip)
        fault = None
        if finite:  # a non-finite step is skipped (vilab.train.guard)
            self.optimizer.step()
        else:  # any non-finite log p̃ makes the step so: is the target at fault?
            fault = check_target(self.target, log_p, s.z, context, self.step)
        self.step += 1
        self.seconds = self.clock()
        value = bound.item() if log_value else math.nan  # no read-back on other steps
        return StepResult({"bound": value, "beta": beta, "lr": lr}, finite, fault)

    def own_state(self) -> dict[str, Any]:
        return {
            "family": self.family.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.device),
        }

    def load_own_state(self, state: dict[str, Any]) -> None:
        self.family.load_state_dict(state["family"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        set_rng_state(state["rng"], self.device)
