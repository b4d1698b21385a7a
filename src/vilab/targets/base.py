"""The Target contract.

A target is an unnormalized log-density ``log p̃(z [; c])``:

* ``log_prob(z, context=None)`` takes ``z (..., D)`` and returns ``(...)``; with a
  context family the context ``(B, C)`` lines up with the last batch dimension of z;
* ``dim`` and ``context_dim`` (None for a single density);
* ``log_z``: the exact log-normalizer if known (``None`` otherwise; in 2-D it can be
  computed on ``quad_box`` by :func:`vilab.targets.grid.grid_log_z`);
* ``plot_box``: ``(x0, x1, y0, y1)`` for figures in 2-D;
* ``sample_context(n)``: draws contexts for amortized training (context families only).

* ``support``: where p̃ > 0 when that is not all of R^D: one ``(lo, hi)`` per coordinate
  (:data:`vilab.core.support.Bounds`), None for R^D. A family fitted to it ends in the
  bijection onto the support (:class:`vilab.flows.support.SupportTransform`).

A user's Python log-density is :class:`vilab.targets.user.CallableTarget`, checked at load
time; :func:`vilab.targets.user.with_support` states a target's support. A target is found
by name in :mod:`vilab.targets.resolve`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vilab.core.support import Bounds
from vilab.targets.reference import Reference

Box = tuple[float, float, float, float]


class Target:
    """Base class; subclasses implement ``log_prob``."""

    name: str = "target"
    dim: int = 2
    context_dim: int | None = None
    log_z: float | None = None
    plot_box: Box | None = None
    quad_box: Box | None = None
    reference: Reference | None = None
    support: Bounds | None = None
    #: Whether log p̃ = −inf means the program *rejected* the point (a Stan program's
    #: failed ODE solve, domain error or ``reject``) rather than a zero density q must
    #: avoid: a fit then drops such draws from its step, as Stan's ADVI drops the draws
    #: at which the log density throws (Kucukelbir et al. 2017), instead of stopping.
    rejects: bool = False

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def sample_context(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise ValueError(f"target {self.name!r} has no context to sample")

    def param_names(self) -> tuple[str, ...]:
        """Names of the quantities :meth:`constrain` returns, in order (Stan's style:
        ``"mu"``, ``"theta[1]"``); by default ``z[1]`` … ``z[D]``."""
        return tuple(f"z[{i + 1}]" for i in range(self.dim))

    def constrain(self, z: Tensor) -> Tensor:
        """Points of the space q lives in, ``(N, D)``, as the model's named quantities
        ``(N, P)`` in :meth:`param_names`' order: for a model written on constrained
        parameters (Stan, Pyro), the inverse of its unconstraining map; by default z
        itself (a target on R^D, or one whose family already ends on its support)."""
        return z

    def at(self, context: Tensor) -> Target:
        """The single density obtained by fixing the context (a row of shape (C,))."""
        return FixedContext(self, context)


class FixedContext(Target):
    """``p(z; c)`` at one fixed ``c``, as a context-free target (for grids and plots)."""

    def __init__(self, family: Target, context: Tensor) -> None:
        self.family, self.context = family, context.reshape(1, -1)
        values = ", ".join(f"{v:.3g}" for v in self.context.flatten().tolist())
        self.name = f"{family.name}[c={values}]"
        self.dim = family.dim
        self.log_z = family.log_z_at(self.context) if hasattr(family, "log_z_at") else None
        self.plot_box, self.quad_box = family.plot_box, family.quad_box
        self.support = family.support

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        c = self.context.to(device=z.device, dtype=z.dtype)
        return self.family.log_prob(z.unsqueeze(-2), c).squeeze(-1)


def validate_box(box: object) -> Box:
    """A box is four finite numbers ``(x0, x1, y0, y1)`` with ``x0 < x1`` and ``y0 < y1``."""
    try:
        x0, x1, y0, y1 = (float(v) for v in box)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"box must be four numbers (x0, x1, y0, y1), got {box!r}") from None
    if not (x0 < x1 and y0 < y1) or not all(map(_finite, (x0, x1, y0, y1))):
        raise ValueError(f"box must be finite with x0 < x1 and y0 < y1, got {box!r}")
    return (x0, x1, y0, y1)


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


class TargetError(ValueError):
    """A target's log p̃ cannot be used at q's samples (−inf or NaN where a fit needs a
    number); raised by the trainer, naming the target, the samples and an example z."""


def default_eval_contexts(target: Target) -> list[list[float]]:
    """Held-out contexts for a target family: interior points of its training range that a
    continuous uniform draw never hits exactly,

        c_k = lo + (k + 0.37) / 4 · (hi − lo),   k = 0, …, 3,

    each repeated ``context_dim`` times; ``[lo, hi]`` is ``(low, high)`` or
    ``(context_low, context_high)`` of the target, else [0, 1].
    """
    lo = getattr(target, "low", getattr(target, "context_low", 0.0))
    hi = getattr(target, "high", getattr(target, "context_high", 1.0))
    return [[lo + (k + 0.37) / 4 * (hi - lo)] * (target.context_dim or 1) for k in range(4)]
