"""Families as ``torch.distributions.Distribution`` s: q(z [| c]) for users' own PyTorch code.

    d = family.distribution()            # free:      batch_shape (),   event_shape (D,)
    d = family.distribution(context)     # amortized: batch_shape (B,), event_shape (D,)
    z = d.rsample((3, 4))                # (3, 4, [B,] D), reparameterized
    z, log_q = d.rsample_and_log_prob((3, 4))   # one pass: the family's cheap path
    log_q = d.log_prob(z)                # any z of shape sample_shape + batch + (D,)

A :class:`FamilyDistribution` is a *view* of a family at an optional context (zuko's
``flow(context)``): it holds no parameter values, and every call evaluates the family's
current parameters, so one object stays valid across optimizer steps and each call builds
its own graph. ``rsample`` draws prod(sample_shape) samples from
``family.rsample_and_log_prob(n, context)`` (or ``family.rsample``) and reshapes them;
``log_prob`` flattens the sample dimensions and calls ``family.log_prob`` (the flows'
inverses, DESIGN.md §2). A family that cannot score an arbitrary z (semi-implicit) raises
``NotImplementedError`` from ``log_prob`` and points to ``log_prob_estimate``.

The Gaussians get subclasses with their parameters and closed forms:
:class:`MeanFieldGaussianDistribution` behaves as ``Independent(Normal(loc, scale), 1)``
(``loc``, ``scale``), :class:`FullRankGaussianDistribution` as
``MultivariateNormal(loc, scale_tril=L)`` (``loc``, ``scale_tril``, ``covariance_matrix``);
both have ``mean``, ``variance``, ``mode``, ``entropy`` and :meth:`as_torch`. Closed-form
``torch.distributions.kl_divergence`` is registered between any two of them and against
torch's ``Independent(Normal(·, ·), 1)`` and ``MultivariateNormal`` (so against the standard
normal prior, either way round):

    KL(N(μ₁, Σ₁) ‖ N(μ₂, Σ₂)) = ½ [tr(Σ₂⁻¹Σ₁) + (μ₂ − μ₁)ᵀ Σ₂⁻¹ (μ₂ − μ₁) − D + log |Σ₂|/|Σ₁|],

computed by torch's own Normal (both diagonal) or MultivariateNormal formulas.

``expand(batch_shape)`` accepts shapes that end with the family's own batch shape; the
leading dimensions are then independent copies, drawn as extra samples.

This module does not import :mod:`vilab.families.base` (``base`` imports it): the family is
typed by the :class:`FamilyLike` protocol, which every :class:`~vilab.families.base.Family`
satisfies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    constraints,
    kl_divergence,
    register_kl,
)

__all__ = [
    "FamilyDistribution",
    "FamilyLike",
    "FullRankGaussianDistribution",
    "MeanFieldGaussianDistribution",
]

_SampleShape = int | Sequence[int] | torch.Size


class FamilyLike(Protocol):
    """What :class:`FamilyDistribution` uses of a :class:`~vilab.families.base.Family`."""

    dim: int
    context_dim: int | None

    @property
    def has_log_prob(self) -> bool: ...

    def rsample_and_log_prob(
        self, n: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]: ...

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor: ...

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor: ...

    def sample_shape(self, n: int, context: Tensor | None) -> tuple[int, ...]: ...


def _as_size(sample_shape: _SampleShape) -> torch.Size:
    """``sample_shape`` as a ``torch.Size`` (an int n is ``(n,)``); refuses negative sizes."""
    if isinstance(sample_shape, int):
        sample_shape = (sample_shape,)
    try:
        size = torch.Size(sample_shape)
    except TypeError as err:
        raise ValueError(
            f"sample_shape must be a tuple of non-negative ints, got {sample_shape!r}"
        ) from err
    if any(s < 0 for s in size):
        raise ValueError(f"sample_shape must be a tuple of non-negative ints, got {sample_shape!r}")
    return size


class FamilyDistribution(Distribution):
    """A family q(z [| c]) as a ``torch.distributions.Distribution``.

    Shapes: ``event_shape = (D,)``; ``batch_shape = ()`` for a free family, ``(B,)`` at a
    context ``(B, C)`` (or an :meth:`expand` ed shape ending with it). Samples are
    ``sample_shape + batch_shape + (D,)``, log-densities ``sample_shape + batch_shape``.

    Args:
        family: a :class:`~vilab.families.base.Family` (free or amortized).
        context: ``(B, C)`` for an amortized family, None for a free one.
        validate_args: torch's flag; when on, :meth:`log_prob` also checks the value against
            ``support = real_vector`` (torch's check: no NaN). Shapes are always checked.

    Raises:
        ValueError: a context the family does not take (see ``Family.sample_shape``).
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        family: FamilyLike,
        context: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        shape = family.sample_shape(1, context)  # validates the context
        self.family, self.context = family, context
        self._native = torch.Size(shape[1:-1])  # () free, (B,) with a context
        super().__init__(self._native, torch.Size((family.dim,)), validate_args=validate_args)

    @property
    def _extra(self) -> torch.Size:
        """Leading batch dimensions added by :meth:`expand` (independent copies)."""
        return self.batch_shape[: len(self.batch_shape) - len(self._native)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(family={type(self.family).__name__}, "
            f"batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)})"
        )

    def expand(
        self, batch_shape: _SampleShape, _instance: FamilyDistribution | None = None
    ) -> FamilyDistribution:
        """The same q with ``batch_shape`` = leading copies + the family's batch shape.

        Raises:
            ValueError: a ``batch_shape`` that does not end with the family's own one.
        """
        batch_shape = _as_size(batch_shape)
        k = len(self._native)
        if len(batch_shape) < k or batch_shape[len(batch_shape) - k :] != self._native:
            raise ValueError(
                f"cannot expand {type(self).__name__} of batch_shape {tuple(self._native)} to "
                f"{tuple(batch_shape)}: the new batch_shape must end with {tuple(self._native)}"
            )
        new = type(self).__new__(type(self)) if _instance is None else _instance
        new.family, new.context, new._native = self.family, self.context, self._native
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _draw(self, sample_shape: _SampleShape, score: bool) -> tuple[Tensor, Tensor | None]:
        shape = _as_size(sample_shape) + self.batch_shape
        n = math.prod(shape[: len(shape) - len(self._native)])
        m = max(n, 1)  # a family draws at least one sample; slice to zero after
        if score:
            z, log_q = self.family.rsample_and_log_prob(m, self.context)
            return z[:n].reshape(shape + self.event_shape), log_q[:n].reshape(shape)
        z = self.family.rsample(m, self.context)
        return z[:n].reshape(shape + self.event_shape), None

    def rsample(self, sample_shape: _SampleShape = ()) -> Tensor:
        """Reparameterized samples, ``sample_shape + batch_shape + (D,)``: gradients reach
        the family's parameters (and the context)."""
        return self._draw(sample_shape, score=False)[0]

    def sample(self, sample_shape: _SampleShape = ()) -> Tensor:
        """:meth:`rsample` without a graph."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(self, sample_shape: _SampleShape = ()) -> tuple[Tensor, Tensor]:
        """Samples ``sample_shape + batch_shape + (D,)`` and their log q, ``sample_shape +
        batch_shape``, from one pass of ``family.rsample_and_log_prob`` (no inverse). For a
        semi-implicit family log q is its importance-sampled upper (SIVI) estimate, without
        gradient."""
        z, log_q = self._draw(sample_shape, score=True)
        assert log_q is not None
        return z, log_q

    def _flat_value(self, value: Tensor) -> tuple[Tensor, torch.Size]:
        """``value`` broadcast to ``S + batch_shape + (D,)`` and flattened to the family's
        ``(n, [B,] D)``, with the output shape ``S + batch_shape``."""
        if not isinstance(value, Tensor):
            raise ValueError(f"value must be a Tensor, got {type(value).__name__}")
        expected = f"sample_shape + batch_shape {tuple(self.batch_shape)} + event_shape " + str(
            tuple(self.event_shape)
        )
        if value.dim() < 1 or value.shape[-1] != self.event_shape[0]:
            raise ValueError(f"value of shape {tuple(value.shape)} must have shape {expected}")
        try:
            out = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        except RuntimeError:
            out = None
        k = len(self.batch_shape)
        if out is None or out[len(out) - k :] != self.batch_shape:
            raise ValueError(
                f"value of shape {tuple(value.shape)} does not broadcast to {expected}"
            )
        flat = value.expand(out + self.event_shape).reshape(-1, *self._native, *self.event_shape)
        return flat, out

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(value [| c]), ``sample_shape + batch_shape``, for a value of shape
        ``sample_shape + batch_shape + (D,)`` (broadcast by torch's rules).

        Raises:
            ValueError: a value of the wrong shape (or, with ``validate_args``, a NaN).
            NotImplementedError: a family that cannot score an arbitrary z.
        """
        flat, out = self._flat_value(value)
        if self._validate_args:
            self._validate_sample(value)
        if not self.family.has_log_prob:
            raise NotImplementedError(
                f"{type(self.family).__name__} cannot score an arbitrary z exactly (a "
                "semi-implicit q has no closed-form log-density; a flow needs an inverse): use "
                "family.log_prob_estimate(z, context) for an importance-sampled estimate, or "
                "rsample_and_log_prob(sample_shape) for samples with their log q"
            )
        return self.family.log_prob(flat, self.context).reshape(out)

    def _no_closed_form(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self.family).__name__} has no closed-form {what}; estimate it from "
            "samples (rsample / rsample_and_log_prob)"
        )

    @property
    def mean(self) -> Tensor:
        raise self._no_closed_form("mean")

    @property
    def mode(self) -> Tensor:
        raise self._no_closed_form("mode")

    @property
    def variance(self) -> Tensor:
        raise self._no_closed_form("variance")

    def entropy(self) -> Tensor:
        raise self._no_closed_form("entropy")


class _GaussianDistribution(FamilyDistribution):
    """Shared closed forms of the Gaussian views, through :meth:`as_torch`."""

    def as_torch(self) -> Distribution:  # pragma: no cover - abstract
        """torch's own distribution at the family's current parameters (same batch
        shape), without argument validation."""
        raise NotImplementedError

    def _expanded(self, t: Tensor, event_dims: int = 1) -> Tensor:
        """A parameter ``([B,] D…)`` broadcast to ``batch_shape + (D…)``."""
        return t.expand(self.batch_shape + t.shape[t.dim() - event_dims :])

    @property
    def loc(self) -> Tensor:
        """μ, ``batch_shape + (D,)``."""
        raise NotImplementedError  # pragma: no cover - set by subclasses

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.as_torch().variance

    def entropy(self) -> Tensor:
        """½ log |2πe Σ|, ``batch_shape``."""
        return self.as_torch().entropy()


class MeanFieldGaussianDistribution(_GaussianDistribution):
    """N(μ, diag σ²) of a mean-field family (or the standard normal): as
    ``Independent(Normal(loc, scale), 1)``. The family provides
    ``loc_scale(context) -> (μ, σ)``, each ``([B,] D)``."""

    def _loc_scale(self) -> tuple[Tensor, Tensor]:
        loc, scale = self.family.loc_scale(self.context)  # type: ignore[attr-defined]
        return self._expanded(loc), self._expanded(scale)

    @property
    def loc(self) -> Tensor:
        """μ, ``batch_shape + (D,)``."""
        return self._loc_scale()[0]

    @property
    def scale(self) -> Tensor:
        """σ, ``batch_shape + (D,)``."""
        return self._loc_scale()[1]

    @property
    def stddev(self) -> Tensor:
        return self.scale

    def as_torch(self) -> Independent:
        base = Normal(*self._loc_scale(), validate_args=False)
        return Independent(base, 1, validate_args=False)


class FullRankGaussianDistribution(_GaussianDistribution):
    """N(μ, L Lᵀ) of a full-rank family: as ``MultivariateNormal(loc, scale_tril=L)``. The
    family provides ``loc_tril(context) -> (μ ([B,] D), L ([B,] D, D))``."""

    def _loc_tril(self) -> tuple[Tensor, Tensor]:
        loc, tril = self.family.loc_tril(self.context)  # type: ignore[attr-defined]
        return self._expanded(loc), self._expanded(tril, 2)

    @property
    def loc(self) -> Tensor:
        """μ, ``batch_shape + (D,)``."""
        return self._loc_tril()[0]

    @property
    def scale_tril(self) -> Tensor:
        """L, lower triangular with a positive diagonal, ``batch_shape + (D, D)``."""
        return self._loc_tril()[1]

    @property
    def covariance_matrix(self) -> Tensor:
        """Σ = L Lᵀ, ``batch_shape + (D, D)``."""
        tril = self.scale_tril
        return tril @ tril.mT

    def as_torch(self) -> MultivariateNormal:
        loc, tril = self._loc_tril()
        return MultivariateNormal(loc, scale_tril=tril, validate_args=False)


# --- closed-form KL divergences ------------------------------------------------------------


def _is_diagonal(d: Distribution) -> bool:
    return isinstance(d, MeanFieldGaussianDistribution) or (
        isinstance(d, Independent)
        and isinstance(d.base_dist, Normal)
        and d.reinterpreted_batch_ndims == 1
    )


def _as_torch(d: Distribution) -> Distribution:
    return d.as_torch() if isinstance(d, _GaussianDistribution) else d


def _as_mvn(d: Distribution) -> MultivariateNormal:
    d = _as_torch(d)
    if isinstance(d, MultivariateNormal):
        return d
    if _is_diagonal(d):
        base = d.base_dist  # type: ignore[attr-defined]
        return MultivariateNormal(
            base.loc, scale_tril=torch.diag_embed(base.scale), validate_args=False
        )
    raise NotImplementedError(
        f"no closed-form KL against {type(d).__name__}: accepted are vilab's Gaussian "
        "distributions, Independent(Normal(loc, scale), 1) and MultivariateNormal"
    )


def _kl_gaussian(p: Distribution, q: Distribution) -> Tensor:
    """KL(p ‖ q) between two Gaussians: torch's Normal formula summed over D when both are
    diagonal, else its MultivariateNormal formula; ``broadcast(p.batch_shape,
    q.batch_shape)``."""
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"KL between Gaussians of event_shape {tuple(p.event_shape)} and "
            f"{tuple(q.event_shape)}: the event shapes must match"
        )
    if _is_diagonal(p) and _is_diagonal(q):
        return kl_divergence(_as_torch(p), _as_torch(q))
    return kl_divergence(_as_mvn(p), _as_mvn(q))


_MF, _FR = MeanFieldGaussianDistribution, FullRankGaussianDistribution
for _p, _q in [
    (_MF, _MF),
    (_MF, _FR),
    (_FR, _MF),
    (_FR, _FR),
    (_MF, Independent),
    (Independent, _MF),
    (_FR, Independent),
    (Independent, _FR),
    (_MF, MultivariateNormal),
    (MultivariateNormal, _MF),
    (_FR, MultivariateNormal),
    (MultivariateNormal, _FR),
]:
    register_kl(_p, _q)(_kl_gaussian)
del _p, _q
