"""User-written targets: a Python log-density (:class:`CallableTarget`), a stated support
(:func:`with_support`), and the load-time probe that checks both (:func:`validate_log_prob`).

A user's function is validated once at load time with messages that say what was wrong
(wrong shape, NaN, +inf, −inf everywhere, a result that does not depend on z through
autograd); −inf on part of the probe (a bounded support without ``support``) gets a
:class:`SupportWarning`. A stated support is parsed once into its normal form
(:func:`vilab.core.support.parse_support`) and the probe draws inside it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from vilab.core.support import BoundTensors, describe_support, parse_support, to_support
from vilab.targets.base import Box, Target, validate_box


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
        support: where the density is positive, if not all of R^D: ``"positive"`` or one
            ``[lo, hi]`` per coordinate (None for no bound); see
            :func:`vilab.core.support.parse_support`. The load-time probe then draws its
            points inside it.
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
        support: object = None,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if box is not None:
            box = validate_box(box)
        self.support = parse_support(support, dim)
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


class SupportWarning(UserWarning):
    """The load-time probe found log p̃ = −inf on part of its points: a bounded support that
    ``target.support`` should state (or, with a support, one that is too wide)."""


def with_support(target: Target, support: object) -> Target:
    """``target`` with its support stated: a shallow copy whose ``support`` is the normal
    form of ``support`` (:func:`vilab.core.support.parse_support`), probed again inside it
    (:func:`validate_log_prob`). ``None`` keeps the target's own support.

    Raises:
        ValueError: a malformed support, or a target that fails the probe inside it.
    """
    if support is None:
        return target
    bounds = parse_support(support, target.dim)
    if bounds == target.support:
        return target
    out = copy.copy(target)
    out.support = bounds
    validate_log_prob(out)
    return out


def validate_log_prob(target: Target, n: int = 256, seed: int = 0) -> None:
    """Calls ``target.log_prob`` on a probe batch and raises ``ValueError`` if the result is
    not a tensor of shape ``(n,)`` (``(n, B)`` with a context), contains NaN or +inf,
    is −inf at every probe point, or varies over the probe without depending on z through
    autograd (a detached tensor, ``.numpy()``, ``.item()``, ``torch.no_grad``: the fit would
    silently follow the wrong gradient; a constant log-density, a uniform on its support, is
    fine). −inf at some of the points gives a :class:`SupportWarning` suggesting
    ``target.support``.

    The probe points are drawn inside ``target.support`` when it is stated (``T(2 ε)``,
    T the map of :func:`vilab.core.support.to_support`, ε standard normal), else
    uniformly on ``quad_box`` in 2-D, else ``2 ε``."""
    g = torch.Generator().manual_seed(seed)
    if target.support is not None:
        x = 2.0 * torch.randn(n, target.dim, generator=g)
        z = to_support(x, BoundTensors.of(target.support, x.dtype))[0]
    elif target.quad_box is not None and target.dim == 2:
        x0, x1, y0, y1 = target.quad_box
        u = torch.rand(n, 2, generator=g)
        z = torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], dim=-1)
    else:
        z = 2.0 * torch.randn(n, target.dim, generator=g)
    expected: tuple[int, ...] = (n,)
    context = None
    z_in = z
    if target.context_dim is not None:
        context = target.sample_context(3, generator=g)
        z_in = z.unsqueeze(1).expand(n, 3, target.dim)
        expected = (n, 3)
    where = f"target {target.name!r}"
    try:
        out = target.log_prob(z_in, context)
    except ValueError as err:
        if "must return a torch tensor" in str(err):
            raise ValueError(f"{err} (expected a tensor of shape {expected})") from None
        raise _probe_error(where, err, z_in, target, context) from err
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything
        raise _probe_error(where, err, z_in, target, context) from err
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{where} returned {got} for z of shape {tuple(z_in.shape)}; expected a tensor of "
            f"shape {expected} (one log-density per point: sum over the last dimension)"
        )
    values = out.detach()
    inside = "" if target.support is None else f" inside its support {_support_text(target)}"
    if torch.isnan(values).any():
        k = int(torch.isnan(values).sum())
        raise ValueError(
            f"{where} returned NaN at {k} of {values.numel()} probe points{inside}; a "
            "log-density must be a number or −inf"
            + ("" if k == values.numel() else " (−inf where the density is zero)")
            + (_SUPPORT_HINT if target.support is None and k < values.numel() else "")
        )
    if torch.isposinf(values).any():
        raise ValueError(
            f"{where} returned +inf at {int(torch.isposinf(values).sum())} of "
            f"{values.numel()} probe points{inside}; a log-density must be finite or −inf"
        )
    if torch.isneginf(values).all():
        raise ValueError(
            f"{where} is −inf (zero density) at every probe point{inside}; check the "
            "function, or give a box or a support that covers where it is positive"
        )
    _check_depends_on_z(target, where, values, z, context)
    neg = torch.isneginf(values)
    if neg.any():
        _warn_partial_support(target, where, neg, z)


#: how to state a support, for messages
_SUPPORT_HINT = (
    "; if it is defined only on part of R^D, state where: target.support = 'positive' or "
    "one [lo, hi] per coordinate (null for no bound) in the config, --support on the "
    "command line, support= in vilab.fit; q is then mapped onto the support"
)


def _support_text(target: Target) -> str:
    return describe_support(target.support)


def _check_depends_on_z(
    target: Target, where: str, values: Tensor, z: Tensor, context: Tensor | None
) -> None:
    """Refuse a result that varies over the probe (``values``, from ``z``) but carries no
    gradient to z: a second call on z that requires grad, in grad mode."""
    finite = torch.isfinite(values)
    seen = values[finite]
    if seen.numel() < 2 or not bool(seen.max() > seen.min()):
        return  # constant: its gradient is zero, detached or not
    detached = ValueError(
        f"{where} returned a tensor that does not depend on z through autograd "
        "(detached, .numpy(), .item(), or torch.no_grad inside?): build log p(z) from z "
        "with torch operations, so that the fit gets its gradient"
    )
    leaf = z.detach().clone().requires_grad_(True)
    z_in = leaf if context is None else leaf.unsqueeze(1).expand(*values.shape, target.dim)
    try:
        with torch.enable_grad():
            out = target.log_prob(z_in, context)
            grad = None
            if isinstance(out, Tensor) and out.requires_grad:
                (grad,) = torch.autograd.grad(out[finite].sum(), leaf, allow_unused=True)
    except Exception as err:  # noqa: BLE001 - it ran without grad: autograd is what breaks
        text = str(err).strip().split("\n")[0][:200]
        raise ValueError(
            f"{detached} (with z.requires_grad: {type(err).__name__}: {text})"
        ) from None
    if grad is None:
        raise detached
    if not bool((grad != 0).any()):
        raise ValueError(
            f"{where} returned values that vary over the probe points but whose gradient "
            "with respect to z is zero at all of them (detached parts, rounding, or a "
            "piecewise-constant function?): build log p(z) from z with differentiable torch "
            "operations"
        )


def _warn_partial_support(target: Target, where: str, neg: Tensor, z: Tensor) -> None:
    k, total = int(neg.sum()), neg.numel()
    if target.support is not None:
        warnings.warn(
            f"{where} is −inf (zero density) at {k} of {total} probe points inside its "
            f"stated support {_support_text(target)}: q puts mass there and KL(q‖p) = ∞; "
            "narrow target.support to where the density is positive",
            SupportWarning,
            stacklevel=3,
        )
        return
    ok = ~neg.reshape(z.shape[0], -1).any(-1)
    seen = ""
    if ok.any():
        lo, hi = z[ok].min(0).values.tolist(), z[ok].max(0).values.tolist()
        shown = [f"z[{i}] ∈ [{a:.3g}, {b:.3g}]" for i, (a, b) in enumerate(zip(lo, hi))]
        seen = f" (finite only where {', '.join(shown[:4])}{', …' if len(shown) > 4 else ''})"
    warnings.warn(
        f"{where} is −inf (zero density) at {k} of {total} probe points{seen}: a target "
        f"with a bounded support cannot be fitted by a flow on all of R^{target.dim} "
        "(KL(q‖p) = ∞ wherever q puts mass outside it)" + _SUPPORT_HINT,
        SupportWarning,
        stacklevel=3,
    )


def _probe_error(
    where: str, err: Exception, z: Tensor, target: Target, context: Tensor | None
) -> ValueError:
    text = str(err).strip().split("\n")[0]  # not the tensors some messages print
    text = text if len(text) <= 300 else text[:300] + " …"
    hint = _SUPPORT_HINT if target.support is None and "support" in text else ""
    return ValueError(
        f"{where} raised {type(err).__name__} on a probe batch z of shape "
        f"{tuple(z.shape)}: {text.rstrip('.')}. It must accept z of shape (..., {target.dim})"
        + (" and a context of shape (B, C)" if context is not None else "")
        + " and return log p(z) of shape (...)"
        + hint
        + "."
    )
