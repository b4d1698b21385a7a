"""Whose fault is a non-finite step of a fit: the target's or the learning rate's?

Non-finite log p̃ at q's (finite) samples is the target's, not the learning rate's:

* −inf (zero density where q has mass, KL = ∞; confirmed in float64 so that an overflow
  of a blown-up family is not taken for it) stops the run at once with a
  :class:`~vilab.targets.base.TargetError` that suggests ``target.support`` — unless the
  target *rejects* such points (:attr:`~vilab.targets.base.Target.rejects`: a Stan
  program), whose draws a step drops; only a step that rejects every draw is at fault;
* NaN or +inf is skipped like any non-finite step (:mod:`vilab.train.guard`), and
  :func:`check_target` returns what happened, with the values, for the step to hand to
  :meth:`~vilab.train.guard.StepGuard.record`: if the rollbacks do not end it, the error
  names the target instead of the learning rate.

Called only for a non-finite step, so an ordinary step pays nothing for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vilab.core.support import describe_support
from vilab.targets.base import Target, TargetError


def check_target(
    target: Target, log_p: Tensor, z: Tensor, context: Tensor | None, step: int
) -> str | None:
    """The target's fault in ``log_p`` (None if it is finite or q's samples are not).

    Args:
        log_p: ``(S,)`` or ``(S, B)``; z: ``(S, D)`` or ``(S, B, D)``; context ``(B, C)``.

    Raises:
        TargetError: log p̃ = −inf at finite samples of q (in float64 too).
    """
    values = log_p.detach()
    if bool(torch.isfinite(values).all()):
        return None
    z = z.detach()
    bad = ~torch.isfinite(values) & torch.isfinite(z).all(-1)
    neg = bad & torch.isneginf(values)
    if bool(neg.any()) and not target.rejects:
        neg = neg & _neg_inf_in_float64(target, z, context)
        if bool(neg.any()):
            raise TargetError(_neg_inf_message(target, neg, z, context, step))
    other = bad & ~torch.isneginf(values)
    if not bool(other.any()):
        if target.rejects and bool(neg.all()):
            return (
                f"target {target.name!r} rejected all {values.numel()} samples of q at step "
                f"{step} (log p̃ = −inf: a failed solve, a domain error or a reject), e.g. "
                f"{_example(neg, z, context)}"
            )
        return None
    what = "NaN" if bool(values[other].isnan().any()) else "+inf"
    return (
        f"target {target.name!r} returned {what} at {int(other.sum())} of "
        f"{values.numel()} samples of q at step {step}, e.g. {_example(other, z, context)}"
    )


def _neg_inf_in_float64(target: Target, z: Tensor, context: Tensor | None) -> Tensor:
    """Where log p̃ is −inf in float64 too (all True if z is float64 already, or if the
    target does not take float64)."""
    if z.dtype == torch.float64:
        return torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device)
    try:
        with torch.no_grad():
            c = None if context is None else context.double()
            return torch.isneginf(target.log_prob(z.double(), c))
    except Exception:  # noqa: BLE001 - the user's code may not take float64
        return torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device)


def _neg_inf_message(
    target: Target, neg: Tensor, z: Tensor, context: Tensor | None, step: int
) -> str:
    head = (
        f"target {target.name!r} returned −inf (zero density) at {int(neg.sum())} "
        f"of {neg.numel()} samples of q at step {step}, e.g. {_example(neg, z, context)}"
    )
    if target.support is not None:
        return (
            f"{head}, inside its stated support {describe_support(target.support)}: "
            "KL(q‖p) = ∞ there; narrow target.support to where the density is "
            "positive, or check the function"
        )
    return (
        f"{head}: the target has a bounded support, and q, a family on all of "
        f"R^{target.dim}, puts mass outside it, where KL(q‖p) = ∞ (no learning rate "
        "fixes this). State the support and q is mapped onto it: target.support = "
        "'positive' or one [lo, hi] per coordinate (null for no bound) in the config, "
        "--support on the command line, support= in vilab.fit"
    )


def _example(mask: Tensor, z: Tensor, context: Tensor | None) -> str:
    """``"z = [0.1, -2]"`` (and its context) at the first True entry of ``mask``."""
    index = tuple(int(i) for i in mask.nonzero()[0])
    point = ", ".join(f"{v:.4g}" for v in z[index].tolist())
    where = f"z = [{point}]"
    if context is not None and len(index) > 1:
        where += " at context [" + ", ".join(f"{v:.4g}" for v in context[index[1]].tolist()) + "]"
    return where


#: The largest share of a step's draws a rejecting target may reject (checked at logged
#: steps) before the fit stops.
MAX_REJECTED = 0.5


def check_rejections(
    target: Target, keep: Tensor, z: Tensor, context: Tensor | None, step: int
) -> int:
    """How many of a step's draws ``target`` rejected (``keep`` False: log p̃ = −inf,
    :attr:`~vilab.targets.base.Target.rejects`); read back, so called at logged steps.

    Dropped draws carry no gradient, so nothing pushes q out of a region the program
    rejects, and the mean over the kept draws can even rise as q moves into it (entropy
    gained, its worst draws dropped). Rejections in the far tails of q at the start (a
    failed ODE solve at extreme parameters) fade as q concentrates; a growing share means
    q is entering such a region, and the fit stops before its bound misleads.

    Raises:
        TargetError: more than :data:`MAX_REJECTED` of the draws were rejected.
    """
    rejected = int(keep.numel() - keep.sum())
    if rejected > MAX_REJECTED * keep.numel():
        raise TargetError(
            f"target {target.name!r} rejected {rejected} of {keep.numel()} samples of q at "
            f"step {step} (log p̃ = −inf: a failed solve, a domain error or a reject), e.g. "
            f"{_example(~keep, z.detach(), context)}: q is moving into a region the program "
            "cannot evaluate, where dropped draws give it no gradient; check the program "
            "there, or give priors or bounds that keep the parameters where it can"
        )
    return rejected
