"""The Target contract and user-written targets.

A target is an unnormalized log-density ``log p̃(z [; c])``:

* ``log_prob(z, context=None)`` takes ``z (..., D)`` and returns ``(...)``; with a
  context family the context ``(B, C)`` lines up with the last batch dimension of z;
* ``dim`` and ``context_dim`` (None for a single density);
* ``log_z``: the exact log-normalizer if known (``None`` otherwise; in 2-D it can be
  computed on ``quad_box`` by :func:`vilab.targets.grid.grid_log_z`);
* ``plot_box``: ``(x0, x1, y0, y1)`` for figures in 2-D;
* ``sample_context(n)``: draws contexts for amortized training (context families only).

User targets are Python callables (:class:`CallableTarget`), validated once at load time
with messages that say what was wrong (wrong shape, NaN, +inf, −inf everywhere); a target
is found by name in :mod:`vilab.targets.resolve`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

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

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def sample_context(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise ValueError(f"target {self.name!r} has no context to sample")

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

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        c = self.context.to(z.dtype)
        return self.family.log_prob(z.unsqueeze(-2), c).squeeze(-1)


class CallableTarget(Target):
    """A user-written log-density ``fn(z) -> (...)`` or ``fn(z, c) -> (...)``.

    Args:
        fn: the callable; takes ``z (..., D)`` (and a context ``(B, C)`` when
            ``context_dim`` is set) and returns the unnormalized log-density ``(...)``.
        dim: D.
        name: for figures and the run directory.
        box: optional ``(x0, x1, y0, y1)``: plotting box and, in 2-D, the box on which
            log Z is computed by quadrature.
        log_z: the log-normalizer, if the user knows it.
        context_dim, context_low, context_high: for a target family, the context size and
            the box from which training contexts are drawn uniformly.
    """

    def __init__(
        self,
        fn: Callable[..., Tensor],
        dim: int,
        name: str = "custom",
        box: Box | None = None,
        log_z: float | None = None,
        context_dim: int | None = None,
        context_low: float = 0.0,
        context_high: float = 1.0,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if box is not None:
            box = validate_box(box)
        self.fn, self.dim, self.name = fn, dim, name
        self.plot_box = self.quad_box = box
        self.log_z, self.context_dim = log_z, context_dim
        self.context_low, self.context_high = context_low, context_high
        validate_log_prob(self)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        out = self.fn(z) if self.context_dim is None else self.fn(z, context)
        if not isinstance(out, Tensor):
            raise ValueError(
                f"target {self.name!r} returned {type(out).__name__}; it must return a torch "
                "tensor built from z with torch operations, so that gradients reach z"
            )
        return out.to(z.dtype)

    def sample_context(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.context_dim is None:
            return super().sample_context(n, generator)
        u = torch.rand(n, self.context_dim, generator=generator)
        return self.context_low + (self.context_high - self.context_low) * u


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


def validate_log_prob(target: Target, n: int = 256, seed: int = 0) -> None:
    """Calls ``target.log_prob`` on a probe batch and raises ``ValueError`` if the result is
    not a tensor of shape ``(n,)`` (``(n, B)`` with a context), contains NaN or +inf,
    or is −inf at every probe point."""
    g = torch.Generator().manual_seed(seed)
    if target.quad_box is not None and target.dim == 2:
        x0, x1, y0, y1 = target.quad_box
        u = torch.rand(n, 2, generator=g)
        z = torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], dim=-1)
    else:
        z = 2.0 * torch.randn(n, target.dim, generator=g)
    expected: tuple[int, ...] = (n,)
    context = None
    if target.context_dim is not None:
        context = target.sample_context(3, generator=g)
        z = z.unsqueeze(1).expand(n, 3, target.dim)
        expected = (n, 3)
    where = f"target {target.name!r}"
    try:
        out = target.log_prob(z, context)
    except ValueError as err:
        if "must return a torch tensor" in str(err):
            raise ValueError(f"{err} (expected a tensor of shape {expected})") from None
        raise _probe_error(where, err, z, target, context) from err
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything
        raise _probe_error(where, err, z, target, context) from err
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{where} returned {got} for z of shape {tuple(z.shape)}; expected a tensor of "
            f"shape {expected} (one log-density per point: sum over the last dimension)"
        )
    if torch.isnan(out).any():
        raise ValueError(
            f"{where} returned NaN at {int(torch.isnan(out).sum())} of {out.numel()} probe "
            "points; a log-density must be a number or −inf"
        )
    if torch.isposinf(out).any():
        raise ValueError(
            f"{where} returned +inf at {int(torch.isposinf(out).sum())} of {out.numel()} "
            "probe points; a log-density must be finite or −inf"
        )
    if torch.isneginf(out).all():
        raise ValueError(
            f"{where} is −inf (zero density) at every probe point; check the function, or "
            "give a box that covers its support"
        )


def _probe_error(
    where: str, err: Exception, z: Tensor, target: Target, context: Tensor | None
) -> ValueError:
    return ValueError(
        f"{where} raised {type(err).__name__} on a probe batch z of shape "
        f"{tuple(z.shape)}: {err}. It must accept z of shape (..., {target.dim})"
        + (" and a context of shape (B, C)" if context is not None else "")
        + " and return log p(z) of shape (...)."
    )


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
