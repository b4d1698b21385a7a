"""Families as ``torch.distributions.Distribution`` s: q(z [| c]) for users' own PyTorch code.

**The rule of the two APIs.** vilab's trainers and estimators use the *Family* API only:
``family.rsample_and_log_prob(n, context)`` and ``family.training_sample(n, context)``,
samples ``(n, [B,] D)``, log-densities ``(n[, B])`` (:mod:`vilab.families.base`). The
*Distribution* view, ``family.distribution(context)``, is for users' own torch code: tuple
sample shapes, batch shapes, ``kl_divergence``. It is a lazy view with no state of its own
(it holds the family and the context, never parameter values), so every call evaluates the
family's current parameters: one view stays valid across optimizer steps and each call
builds its own graph (zuko's ``flow(context)``). Nothing in vilab is written against it.

    d = family.distribution()            # free:      batch_shape (),   event_shape (D,)
    d = family.distribution(context)     # amortized: batch_shape (B,), event_shape (D,)
    z = d.rsample((3, 4))                # (3, 4, [B,] D), reparameterized
    z, log_q = d.rsample_and_log_prob((3, 4))   # one pass: the family's cheap path
    log_q = d.log_prob(z)                # any z of shape sample_shape + batch + (D,), through
                                         # family.log_prob (the flows' inverses, DESIGN.md §2)

The Gaussians' views behave as torch's own distribution (:meth:`~FamilyDistribution.
as_torch`), from which they take ``mean``, ``mode``, ``variance``, ``stddev``, ``entropy``:
:class:`MeanFieldGaussianDistribution` as ``Independent(Normal(loc, scale), 1)``,
:class:`FullRankGaussianDistribution` as ``MultivariateNormal(loc, scale_tril=L)``.
Closed-form ``kl_divergence`` is registered between any two of them and against torch's
``Independent(Normal(·, ·), 1)`` and ``MultivariateNormal``, either way round:

    KL(N(μ₁, Σ₁) ‖ N(μ₂, Σ₂)) = ½ [tr(Σ₂⁻¹Σ₁) + (μ₂ − μ₁)ᵀ Σ₂⁻¹ (μ₂ − μ₁) − D + log |Σ₂|/|Σ₁|],

by torch's own Normal (both diagonal) or MultivariateNormal formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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

__all__ = ["FamilyDistribution", "FullRankGaussianDistribution", "MeanFieldGaussianDistribution"]

_SampleShape = int | Sequence[int] | torch.Size


class FamilyLike(Protocol):
    """What the view uses of a :class:`~vilab.families.base.Family` (this module cannot
    import ``base``, which imports it)."""

    dim: int

    @property
    def has_log_prob(self) -> bool: ...

    def rsample_and_log_prob(self, n: int, context: Tensor | None) -> tuple[Tensor, Tensor]: ...

    def rsample(self, n: int, context: Tensor | None) -> Tensor: ...

    def log_prob(self, z: Tensor, context: Tensor | None) -> Tensor: ...

    def sample_shape(self, n: int, context: Tensor | None) -> tuple[int, ...]: ...


def _as_size(sample_shape: _SampleShape) -> torch.Size:
    """``sample_shape`` as a ``torch.Size`` (an int n is ``(n,)``); refuses negative sizes."""
    size = (sample_shape,) if isinstance(sample_shape, int) else sample_shape
    try:
        size = torch.Size(size)
    except TypeError:
        size = None
    if size is None or any(s < 0 for s in size):
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
        self, family: FamilyLike, context: Tensor | None = None, validate_args: bool | None = None
    ) -> None:
        shape = family.sample_shape(1, context)  # validates the context
        self.family, self.context = family, context
        self._native = torch.Size(shape[1:-1])  # () free, (B,) with a context
        super().__init__(self._native, torch.Size((family.dim,)), validate_args=validate_args)

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
        if batch_shape[len(batch_shape) - k :] != self._native:  # (a shorter one too)
            raise ValueError(
                f"cannot expand {type(self).__name__} of batch_shape {tuple(self._native)} to "
                f"{tuple(batch_shape)}: the new batch_shape must end with {tuple(self._native)}"
            )
        new = type(self).__new__(type(self)) if _instance is None else _instance
        new.family, new.context, new._native = self.family, self.context, self._native
        Distribution.__init__(new, batch_shape, self.event_shape, self._validate_args)
        return new

    def _count(self, sample_shape: _SampleShape) -> tuple[int, torch.Size]:
        """How many samples the family draws (the sample and expanded dimensions) and the
        output shape ``sample_shape + batch_shape``."""
        shape = _as_size(sample_shape) + self.batch_shape
        return math.prod(shape[: len(shape) - len(self._native)]), shape

    def rsample(self, sample_shape: _SampleShape = ()) -> Tensor:
        """Reparameterized samples, ``sample_shape + batch_shape + (D,)``: gradients reach
        the family's parameters (and the context)."""
        n, shape = self._count(sample_shape)
        z = self.family.rsample(max(n, 1), self.context)  # at least one; sliced to n
        return z[:n].reshape(shape + self.event_shape)

    def rsample_and_log_prob(self, sample_shape: _SampleShape = ()) -> tuple[Tensor, Tensor]:
        """Samples ``sample_shape + batch_shape + (D,)`` and their log q, ``sample_shape +
        batch_shape``, from one pass of ``family.rsample_and_log_prob`` (no inverse). For a
        semi-implicit family log q is its importance-sampled upper (SIVI) estimate, without
        gradient."""
        n, shape = self._count(sample_shape)
        z, log_q = self.family.rsample_and_log_prob(max(n, 1), self.context)
        return z[:n].reshape(shape + self.event_shape), log_q[:n].reshape(shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(value [| c]), ``sample_shape + batch_shape``, for a value of shape
        ``sample_shape + batch_shape + (D,)`` (broadcast by torch's rules).

        Raises:
            ValueError: a value of the wrong shape (or, with ``validate_args``, a NaN).
            NotImplementedError: a family that cannot score an arbitrary z.
        """
        if not isinstance(value, Tensor):
            raise ValueError(f"value must be a Tensor, got {type(value).__name__}")
        batch, event = self.batch_shape, self.event_shape
        expected = f"sample_shape + batch_shape {tuple(batch)} + event_shape {tuple(event)}"
        if value.dim() < 1 or value.shape[-1:] != event:
            raise ValueError(f"value of shape {tuple(value.shape)} must have shape {expected}")
        try:
            out = torch.broadcast_shapes(value.shape[:-1], batch)
        except RuntimeError:
            out = None
        if out is None or out[len(out) - len(batch) :] != batch:
            raise ValueError(
                f"value of shape {tuple(value.shape)} does not broadcast to {expected}"
            )
        if self._validate_args:
            self._validate_sample(value)
        if not self.family.has_log_prob:
            raise NotImplementedError(
                f"{type(self.family).__name__} cannot score an arbitrary z exactly (a "
                "semi-implicit q has no closed-form log-density; a flow needs an inverse): use "
                "family.log_prob_estimate(z, context) for an importance-sampled estimate, or "
                "rsample_and_log_prob(sample_shape) for samples with their log q"
            )
        flat = value.expand(out + event).reshape(-1, *self._native, *event)
        return self.family.log_prob(flat, self.context).reshape(out)

    def as_torch(self) -> Distribution:
        """torch's own distribution at the family's current parameters, without argument
        validation: the Gaussians' views have one (and take their moments and entropy from
        it); other families raise ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self.family).__name__} has no torch equivalent")

    def _closed_form(self, what: str) -> Tensor:
        try:
            return getattr(self.as_torch(), what)
        except NotImplementedError:
            raise NotImplementedError(
                f"{type(self.family).__name__} has no closed-form {what}; estimate it from "
                "samples (rsample / rsample_and_log_prob)"
            ) from None

    @property
    def mean(self) -> Tensor:
        return self._closed_form("mean")

    @property
    def mode(self) -> Tensor:
        return self._closed_form("mode")

    @property
    def variance(self) -> Tensor:
        return self._closed_form("variance")

    @property
    def stddev(self) -> Tensor:
        return self._closed_form("stddev")

    def entropy(self) -> Tensor:
        """½ log |2πe Σ| for a Gaussian, ``batch_shape``."""
        return self._closed_form("entropy")()  # type: ignore[operator]


class _GaussianDistribution(FamilyDistribution):
    """A Gaussian view: the family's ``_params_of(context)`` gives ``(μ, σ or L)``, each
    ``([B,] D…)``, and ``_torch`` torch's own distribution of them."""

    _params_of: str
    _torch: Callable[[Tensor, Tensor], Distribution]

    def _params(self) -> tuple[Tensor, Tensor]:
        """``(μ, σ or L)`` broadcast to ``batch_shape + (D…)``."""
        loc, other = getattr(self.family, self._params_of)(self.context)
        k, batch = len(self._native), self.batch_shape
        return loc.expand(batch + loc.shape[k:]), other.expand(batch + other.shape[k:])

    def as_torch(self) -> Distribution:
        return self._torch(*self._params())

    @property
    def loc(self) -> Tensor:
        """μ, ``batch_shape + (D,)``."""
        return self._params()[0]


class MeanFieldGaussianDistribution(_GaussianDistribution):
    """N(μ, diag σ²) of a mean-field family (or the standard normal), as
    ``Independent(Normal(loc, scale), 1)``; the family gives ``loc_scale(context)``."""

    _params_of = "loc_scale"

    @staticmethod
    def _torch(loc: Tensor, scale: Tensor) -> Independent:
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    @property
    def scale(self) -> Tensor:
        """σ, ``batch_shape + (D,)``."""
        return self._params()[1]


class FullRankGaussianDistribution(_GaussianDistribution):
    """N(μ, L Lᵀ) of a full-rank family, as ``MultivariateNormal(loc, scale_tril=L)``; the
    family gives ``loc_tril(context)``."""

    _params_of = "loc_tril"

    @staticmethod
    def _torch(loc: Tensor, tril: Tensor) -> MultivariateNormal:
        return MultivariateNormal(loc, scale_tril=tril, validate_args=False)

    @property
    def scale_tril(self) -> Tensor:
        """L, lower triangular with a positive diagonal, ``batch_shape + (D, D)``."""
        return self._params()[1]

    @property
    def covariance_matrix(self) -> Tensor:
        """Σ = L Lᵀ, ``batch_shape + (D, D)``."""
        return self.as_torch().covariance_matrix  # type: ignore[attr-defined]


# --- closed-form KL divergences ------------------------------------------------------------


def _is_diagonal(d: Distribution) -> bool:
    """Whether ``d`` is ``Independent(Normal(loc, scale), 1)``."""
    one = isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1
    return one and isinstance(d.base_dist, Normal)  # type: ignore[attr-defined]


def _as_mvn(d: Distribution) -> MultivariateNormal:
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
    p, q = [d.as_torch() if isinstance(d, FamilyDistribution) else d for d in (p, q)]
    if _is_diagonal(p) and _is_diagonal(q):
        return kl_divergence(p, q)
    return kl_divergence(_as_mvn(p), _as_mvn(q))


for _view in (MeanFieldGaussianDistribution, FullRankGaussianDistribution):
    for _other in (MeanFieldGaussianDistribution, FullRankGaussianDistribution):
        register_kl(_view, _other)(_kl_gaussian)
    for _other in (Independent, MultivariateNormal):
        register_kl(_view, _other)(_kl_gaussian)
        register_kl(_other, _view)(_kl_gaussian)
del _view, _other
