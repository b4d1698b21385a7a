"""Fit a variational family to a target by maximizing the reverse-KL ELBO.

    ELBO(q) = E_q[log p̃(z) − log q(z)] = log Z − KL(q‖p)

With the target's log Z known (built-in) or computed by quadrature (2-D with a box), the
logged KL over training is log Z − ELBO and the final figure is the exact KL from
``eval_samples`` samples with its standard error (:func:`vilab.targets.grid.exact_kl`);
without it, the report card's importance-sampled KL (per evaluation context for a target
family, whose contexts are checked before training).

A target with a stated ``support`` gets a family that ends in the bijection onto it
(:func:`vilab.build.family_from_config`). Non-finite log p̃ at q's (finite) samples is the
target's, not the learning rate's: −inf (zero density where q has mass, KL = ∞; confirmed
in float64 so that an overflow of a blown-up family is not taken for it) stops the run at
once with a :class:`~vilab.targets.base.TargetError` that suggests ``target.support``; NaN
or +inf is skipped like any non-finite step (:mod:`vilab.train.guard`), and if the
rollbacks do not end it, the error names the target instead of the learning rate.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vilab.build import family_from_config, target_from_config
from vilab.config import FitConfig
from vilab.core.checkpoint import brief, encode_checkpoint, load_checkpoint
from vilab.core.device import resolve_device, rng_state, set_rng_state
from vilab.distributed import SINGLE
from vilab.estimators.elbo import annealed_elbo_surrogate, beta_at, elbo
from vilab.families.base import AtContext, Family
from vilab.families.semi_implicit import SemiImplicit
from vilab.flows.support import describe_support
from vilab.report import report_card, summarize_cards
from vilab.targets.base import Target, TargetError, default_eval_contexts, with_support
from vilab.targets.grid import KLEstimate, exact_kl, grid_log_z
from vilab.train.guard import Diverged, StepGuard, backward_checked
from vilab.train.logging import RunLogger, read_metrics
from vilab.train.run import execute
from vilab.train.schedule import apply_lr, progress
from vilab.train.steps import Hooks

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_target(config: FitConfig) -> Target:
    """The target of a fit's config."""
    return target_from_config(config.target)


def build_for(config: FitConfig, target: Target) -> Family:
    """The configured family for ``target`` (amortized when it is a target family; ending
    in the bijection onto ``target.support`` when it has one), on the CPU."""
    family = family_from_config(config.family, target.dim, target.context_dim, target.support)
    return family.to(DTYPES[config.dtype])


def target_log_z(target: Target, context: Tensor | None = None) -> float | None:
    """The exact log Z if known; in 2-D with a box, by quadrature; else None."""
    if context is not None:
        target = target.at(context)
    if target.log_z is not None:
        return float(target.log_z)
    if target.dim == 2 and target.quad_box is not None:
        return grid_log_z(target)
    return None


class Fitter:
    """One fitting run: builds everything from a config and owns the training state.

    ``target`` and ``family`` replace the configured ones; ``config.target.support``, if
    set, is stated on a given target too. A family of your own is used as it is: with a
    support, let it end in :class:`~vilab.flows.support.SupportTransform` yourself.

    Raises:
        ValueError: before any training, for a target or family that cannot work (a
            malformed support, a semi-implicit family on a support, STL without log_prob).
    """

    world = SINGLE

    def __init__(
        self, config: FitConfig, target: Target | None = None, family: Family | None = None
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.target = target if target is not None else build_target(config)
        self.target = with_support(self.target, config.target.support)
        self.eval_context_rows = self.eval_rows()
        self.family = build_for(config, self.target) if family is None else family
        self.family.to(self.device)  # built on the CPU: the same start on every device
        self.family_name = config.family.kind if family is None else type(family).__name__
        self.dtype = DTYPES[config.dtype]
        if config.objective.stl and not self.family.has_log_prob:
            raise ValueError(
                f"objective.stl=true needs a family that can score any z; "
                f"{self.family_name!r} cannot (a semi-implicit family, or a flow of yours "
                "without an inverse): set objective.stl=false"
            )
        self.optimizer = torch.optim.Adam(self.family.parameters(), lr=config.optim.lr)
        self.target_fault: str | None = None  # NaN/+inf of log p̃ in the current bad steps
        self.guard = FitGuard(config.faults, lambda: self.target_fault)
        self.step = 0
        self.seconds = 0.0
        self._t0 = time.perf_counter()

    def eval_rows(self) -> list[list[float]] | None:
        """The evaluation contexts of a target family (None for a single target), set
        before training: ``eval_contexts`` (each number repeated ``context_dim`` times) or
        :func:`~vilab.targets.base.default_eval_contexts`. Where log Z is unknown at them
        (no ``log_z``, no 2-D box) the final KL is the report card's importance-sampled one,
        so a run never trains to fail at its evaluation.
        """
        c_dim = self.target.context_dim
        if c_dim is None:
            return None
        given = self.config.eval_contexts
        if not given:
            return default_eval_contexts(self.target)
        return [[float(c)] * c_dim for c in given]

    def start_clock(self) -> None:
        """(Re)start the training clock at ``self.seconds``."""
        self._t0 = time.perf_counter() - self.seconds

    # -- one step -------------------------------------------------------------------------
    def contexts(self, n: int) -> tuple[int, Tensor | None]:
        """Samples per context and the contexts of one step (None for a single target)."""
        if self.target.context_dim is None:
            return n, None
        b = self.config.contexts
        return max(1, n // b), self.target.sample_context(b).to(self.device, self.dtype)

    def train_step(self, log_value: bool = True) -> dict[str, float]:
        """One update from the family's :meth:`~vilab.families.base.Family.training_sample`:
        the loss is −E[β log p̃(z) − log_q_surrogate] (the family's gradient estimator:
        reparameterized, STL or UIVI's), the logged bound E[log p̃(z) − log q(z)].
        ``log_value=False`` lets a family skip a costly log q(z) value (semi-implicit: an
        importance-sampled estimate) that only the logged bound needs."""
        cfg = self.config
        frac = progress(self.step, self.seconds, cfg.steps, cfg.max_seconds)
        obj = cfg.objective
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
        params = list(self.family.parameters())
        finite = backward_checked(loss, params, cfg.optim.grad_clip)
        if finite:  # a non-finite step is skipped (vilab.train.guard)
            self.optimizer.step()
            self.target_fault = None
        else:  # any non-finite log p̃ makes the step so: is the target at fault?
            self.check_target(log_p, s.z, context)
        self.step += 1
        self.seconds = time.perf_counter() - self._t0
        value = bound.item() if log_value else math.nan  # no read-back on other steps
        return {"bound": value, "beta": beta, "lr": lr, "finite": finite}

    def check_target(self, log_p: Tensor, z: Tensor, context: Tensor | None) -> None:
        """Attribute non-finite log p̃ at q's finite samples to the target (module
        docstring): raise :class:`~vilab.targets.base.TargetError` for −inf, note NaN and
        +inf in ``target_fault`` for :class:`FitGuard`. Called only for a non-finite step
        (any non-finite log p̃ makes one), so an ordinary step pays nothing for it.

        Args:
            log_p: ``(S,)`` or ``(S, B)``; z: ``(S, D)`` or ``(S, B, D)``; context ``(B, C)``.
        """
        values = log_p.detach()
        if bool(torch.isfinite(values).all()):
            return
        z = z.detach()
        bad = ~torch.isfinite(values) & torch.isfinite(z).all(-1)
        neg = bad & torch.isneginf(values)
        if bool(neg.any()):
            neg = neg & self._neg_inf_in_float64(z, context)
        if bool(neg.any()):
            raise TargetError(self._neg_inf_message(neg, z, context))
        other = bad & ~torch.isneginf(values)
        if bool(other.any()):
            what = "NaN" if bool(values[other].isnan().any()) else "+inf"
            self.target_fault = (
                f"target {self.target.name!r} returned {what} at {int(other.sum())} of "
                f"{values.numel()} samples of q at step {self.step}, e.g. "
                f"{_example(other, z, context)}"
            )

    def _neg_inf_in_float64(self, z: Tensor, context: Tensor | None) -> Tensor:
        """Where log p̃ is −inf in float64 too (all True if z is float64 already, or if the
        target does not take float64)."""
        if z.dtype == torch.float64:
            return torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device)
        try:
            with torch.no_grad():
                c = None if context is None else context.double()
                return torch.isneginf(self.target.log_prob(z.double(), c))
        except Exception:  # noqa: BLE001 - the user's code may not take float64
            return torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device)

    def _neg_inf_message(self, neg: Tensor, z: Tensor, context: Tensor | None) -> str:
        head = (
            f"target {self.target.name!r} returned −inf (zero density) at {int(neg.sum())} "
            f"of {neg.numel()} samples of q at step {self.step}, e.g. "
            f"{_example(neg, z, context)}"
        )
        if self.target.support is not None:
            return (
                f"{head}, inside its stated support {describe_support(self.target.support)}: "
                "KL(q‖p) = ∞ there; narrow target.support to where the density is "
                "positive, or check the function"
            )
        return (
            f"{head}: the target has a bounded support, and q, a family on all of "
            f"R^{self.target.dim}, puts mass outside it, where KL(q‖p) = ∞ (no learning rate "
            "fixes this). State the support and q is mapped onto it: target.support = "
            "'positive' or one [lo, hi] per coordinate (null for no bound) in the config, "
            "--support on the command line, support= in vilab.fit"
        )

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seconds": self.seconds,
            "family": self.family.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.device),
            "guard": self.guard.state_dict(),
        }

    def encode(self) -> bytes:
        """The checkpoint file's bytes (:func:`~vilab.core.checkpoint.encode_checkpoint`)."""
        return encode_checkpoint(self.state_dict())

    def rollback(self, path: Path) -> None:
        """Go back to the checkpoint at ``path``, keeping the fault counts, the lowered
        learning rate and the training clock."""
        kept = self.guard.state_dict(), self.seconds
        self.load_state_dict(load_checkpoint(path), f"checkpoint {str(path)!r}")
        self.guard.load_state_dict(kept[0])
        self.seconds = kept[1]

    def load_state_dict(self, state: dict[str, Any], source: str = "the checkpoint") -> None:
        """Continue from ``state``.

        Raises:
            ValueError: ``state`` does not belong to a fit of this configuration.
        """
        try:
            self.family.load_state_dict(state["family"])
            self.optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"], self.device)
            self.step, self.seconds = int(state["step"]), float(state["seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{source} does not fit this configuration ({brief(err)}); "
                "resume with the config the run was started with, or start a new run"
            ) from None
        self.guard.load_state_dict(state.get("guard", {}))

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """The exact KL where log Z is known (``eval_samples`` draws; ``kl`` is None
        otherwise) and the report card (:func:`vilab.report.report_card`,
        ``report_samples`` draws) under ``"report"``; per evaluation context for a target
        family."""
        cfg = self.config
        if self.target.context_dim is None:
            log_z = target_log_z(self.target)
            if log_z is None:
                out: dict[str, Any] = {"kl": None, "kl_stderr": None, "log_z": None}
                out["kl_note"] = "log Z unknown: give target.log_z or, in 2-D, a box"
            elif isinstance(self.family, SemiImplicit):
                out = semi_implicit_kl(self.family, self.target, log_z, cfg)
            else:
                out = _kl_dict(exact_kl(self.family, self.target, log_z, cfg.eval_samples))
            known = None if out["kl"] is None else (out["kl"], out["kl_stderr"])
            card = report_card(self.family, self.target, cfg.report_samples, log_z, known)
            out.setdefault("elbo", card["elbo"])
            out.setdefault("elbo_stderr", card["elbo_stderr"])
            return {**out, "report": card}
        per, cards = [], []
        for row in self.eval_context_rows or []:
            c = torch.tensor([row], dtype=self.dtype, device=self.device)
            log_z = target_log_z(self.target, c[0])
            q, p = AtContext(self.family, c), self.target.at(c[0])
            if log_z is None:  # the card's importance-sampled KL
                card = report_card(q, p, cfg.report_samples)
                kl = {"kl": None, "kl_stderr": None, "log_z": None}
                per.append({"context": row, **kl, "elbo": card["elbo"]})
            else:
                est = exact_kl(q, p, log_z, cfg.eval_samples)
                per.append({"context": row, **_kl_dict(est)})
                card = report_card(q, p, cfg.report_samples, log_z, (est.kl, est.kl_stderr))
            cards.append({"context": row, **card})
        n = len(per)
        known = all(p["kl"] is not None for p in per)
        out = {
            "kl": sum(p["kl"] for p in per) / n if known else None,
            "kl_stderr": math.sqrt(sum(p["kl_stderr"] ** 2 for p in per)) / n if known else None,
            "elbo": sum(p["elbo"] for p in per) / n,
            "log_z": None,
            "kl_by_context": per,
            "report": summarize_cards(cards),
        }
        if not known:
            out["kl_note"] = (
                "log Z unknown at the evaluation contexts: give target.log_z or, in 2-D, a "
                "box for the exact KL; the report card has an importance-sampled one"
            )
        return out

    # -- the lifecycle's side (vilab.train.run.Trainer) -----------------------------------
    def hooks(self, run_dir: Path, logger: RunLogger) -> Hooks:
        """Records go to the logger, with KL = log Z − ELBO where log Z is known."""
        log_z = target_log_z(self.target) if self.target.context_dim is None else None

        def log(step: int, values: dict[str, float]) -> None:
            if log_z is not None and "bound" in values:
                values["kl"] = log_z - values["bound"]
            logger.log(step, values)

        return Hooks(log=log, rewind=logger.rewind, advance=logger.advance)

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "target": self.target.name,
            "family": self.family_name,
            "parameters": sum(p.numel() for p in self.family.parameters()),
        }

    def finish(self, run_dir: Path, interrupted: bool, progress: bool) -> dict[str, Any]:
        """The exact KL (:meth:`evaluate`) and, with ``figures``, the pictures."""
        out = {
            **self.evaluate(),
            "steps_per_second": self.step / max(self.seconds, 1e-9),
        }
        if self.config.figures:
            from vilab.plots.density2d import plot_run

            records = read_metrics(run_dir / "metrics.jsonl")
            family = copy.deepcopy(self.family).cpu()  # the grids of the figures are CPU's
            plot_run(family, self.target, records, run_dir, self.eval_context_rows)
        return out


class TargetDiverged(TargetError, Diverged):
    """Training stopped on non-finite steps that the target's log p̃ caused: a
    :class:`~vilab.targets.base.TargetError` (ValueError) and a
    :class:`~vilab.train.guard.Diverged` (FloatingPointError)."""


class FitGuard(StepGuard):
    """The :class:`~vilab.train.guard.StepGuard` of a fit: when the rollbacks are used up
    and the target's log p̃ was NaN or +inf at q's samples in the current run of
    non-finite steps (``fault()``, None otherwise), it raises :class:`TargetDiverged`
    naming the target instead of :class:`~vilab.train.guard.Diverged`'s advice to lower
    the learning rate."""

    def __init__(self, faults: Any, fault: Callable[[], str | None]) -> None:
        super().__init__(faults)
        self.fault = fault

    def record(self, finite: bool, step: int) -> bool:
        try:
            return super().record(finite, step)
        except Diverged as err:
            fault = self.fault()
            if fault is None:
                raise
            raise TargetDiverged(
                f"training stopped: {fault}; the steps stayed non-finite after "
                f"{self.rollbacks} rollback(s) that lowered optim.lr to {self.lr_scale:g}×, "
                "so the target is at fault, not the learning rate. A log-density must be a "
                "number or −inf (zero density); if the target is defined only on part of "
                "R^D, state target.support"
            ) from err


def _example(mask: Tensor, z: Tensor, context: Tensor | None) -> str:
    """``"z = [0.1, -2]"`` (and its context) at the first True entry of ``mask``."""
    index = tuple(int(i) for i in mask.nonzero()[0])
    point = ", ".join(f"{v:.4g}" for v in z[index].tolist())
    where = f"z = [{point}]"
    if context is not None and len(index) > 1:
        where += " at context [" + ", ".join(f"{v:.4g}" for v in context[index[1]].tolist()) + "]"
    return where


@torch.no_grad()
def semi_implicit_kl(
    family: SemiImplicit, target: Target, log_z: float, cfg: FitConfig, n: int = 20_000
) -> dict[str, Any]:
    """KL(q‖p) for the semi-implicit family, whose log q(z) has no closed form: log q is
    estimated from K = ``family.log_q_samples`` draws of ε, giving a lower KL estimate
    (plain importance sampling, biased low) and an upper one (adding the generating ε,
    the SIVI bound); ``kl`` reports the upper, conservative one."""
    n = min(n, cfg.eval_samples)
    lows, ups = [], []
    for m in [min(2000, n - i) for i in range(0, n, 2000)]:
        z, eps0 = family.rsample_with_noise(m)
        lower, upper = family.log_prob_bounds(z, None, eps0)
        log_p = target.log_prob(z)
        lows.append((lower - log_p).double())
        ups.append((upper - log_p).double())  # type: ignore[operator]
    lo, up = torch.cat(lows), torch.cat(ups)
    se = float(up.std() / math.sqrt(n))
    return {
        "kl": float(up.mean()) + log_z,
        "kl_stderr": se,
        "kl_lower": float(lo.mean()) + log_z,
        "kl_lower_stderr": float(lo.std() / math.sqrt(n)),
        "elbo": -float(up.mean()),
        "log_z": log_z,
        "kl_samples": n,
        "kl_note": (
            f"semi-implicit q: log q(z) estimated by importance sampling over ε with "
            f"K={family.log_q_samples} prior draws; kl uses the upper (SIVI) estimate that "
            "adds the generating ε, kl_lower the plain one; the true KL lies between them "
            "in expectation"
        ),
        "hmc_step_size": float(family.step_size),
        "hmc_accept_rate": float(family.accept_rate),
    }


def _kl_dict(est: KLEstimate) -> dict[str, Any]:
    d = asdict(est)
    d["kl_samples"] = d.pop("samples")
    return d


def fit(
    config: FitConfig,
    run_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    target: Target | None = None,
    tensorboard: bool = True,
    *,
    family: Family | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, evaluate and write the run directory; returns the final metrics.

    The run directory gets ``config.yaml``, ``metrics.jsonl`` (every ``log_every`` steps),
    ``tensorboard/``, ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
    ``metrics.json`` and the figures, through the one run lifecycle
    (:func:`vilab.train.run.execute`: a finished run is never overwritten unless
    ``overwrite``; ``resume`` continues the checkpoint exactly; SIGINT/SIGTERM stop at the
    end of the current step with a checkpoint, metrics and figures, ``"interrupted":
    true``; a second signal stops at once). A step with a non-finite loss or gradient is
    skipped; repeated ones roll back to the last checkpoint with a lower learning rate
    (:mod:`vilab.train.guard`, ``config.faults``). ``target`` and ``family`` replace the
    configured ones (a user's own objects).
    """
    return execute(
        lambda: Fitter(config, target, family),
        run_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        tensorboard=tensorboard,
    )
