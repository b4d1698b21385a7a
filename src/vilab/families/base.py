"""The Family contract: a (conditional) sampler that scores its own samples.

    z, log_q = family.rsample_and_log_prob(n, context)

* no context: ``z`` is ``(n, D)`` and ``log_q`` is ``(n,)``;
* context ``(B, C)``: ``z`` is ``(n, B, D)`` and ``log_q`` is ``(n, B)`` — n samples of
  q(z | c_b) for every row c_b of the context.

Samples are reparameterized (gradients flow through z). ``log_prob(z, context)`` scores
an arbitrary z where the family can: Gaussians and every vilab flow (through the flows'
inverses); a semi-implicit family and a user's flow without an inverse raise
``NotImplementedError``.

Training asks one more thing, :meth:`Family.training_sample`: the sample with the value
of log q(z) to log *and* the term whose gradient is the estimator's (DESIGN.md §5, §8), so
no trainer needs to know which family it trains:

    s = family.training_sample(n, context, stl=False, need_value=True)
    loss = −mean(log p(z) − s.log_q_surrogate);   logged bound = mean(log p(z) − s.log_q)

The default serves every family whose ``rsample_and_log_prob`` is differentiable
(Gaussians, flows); the semi-implicit family overrides it with its HMC entropy gradient
and the mean-field Gaussian adds its analytic KL to N(0, I).

:meth:`Family.distribution` is the ``torch.distributions`` view for users' own code; which
API serves whom is stated in :mod:`vilab.families.distribution`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vilab.families.distribution import FamilyDistribution


@dataclass(frozen=True)
class TrainingSample:
    """What a training step needs from a family (:meth:`Family.training_sample`).

    Attributes:
        z: reparameterized samples, ``(n, D)`` free or ``(n, B, D)`` with a context.
        log_q: the value of log q(z) to log, ``(n[, B])``; NaN where it was not asked for
            (``need_value=False``) and is costly (semi-implicit families).
        log_q_surrogate: ``(n[, B])``, the term whose gradient (through z and the
            family's parameters) is the estimator's gradient of E_q[log q(z)]. It is the
            very tensor ``log_q`` for the plain reparameterized gradient; with
            sticking-the-landing it is log q(z) with the parameters (and the context)
            stopped (Roeder et al. 2017); for UIVI, the HMC entropy surrogate (its value
            is then meaningless).
        kl_per_dim: analytic KL(q(z | c) ‖ N(0, I)) per dimension, ``(B, D)`` with a
            context or ``(D,)`` without; None where there is no closed form.
    """

    z: Tensor
    log_q: Tensor
    log_q_surrogate: Tensor
    kl_per_dim: Tensor | None = None

    @property
    def has_surrogate(self) -> bool:
        """Whether ``log_q_surrogate`` differs from ``log_q`` (STL, UIVI), i.e. whether a
        bound built from ``log_q`` alone would have the wrong gradient."""
        return self.log_q_surrogate is not self.log_q


class Family(nn.Module):
    """Base class of variational families. Subclasses set ``dim`` and ``context_dim``."""

    dim: int
    context_dim: int | None = None

    def rsample_and_log_prob(
        self, n: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot score an arbitrary z")

    @property
    def has_log_prob(self) -> bool:
        return type(self).log_prob is not Family.log_prob

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """n samples without their log-density, ``(n, D)`` or ``(n, B, D)``: where scoring
        is costly (a semi-implicit q) it is skipped."""
        return self.rsample_and_log_prob(n, context)[0]

    def distribution(
        self, context: Tensor | None = None, *, validate_args: bool | None = None
    ) -> FamilyDistribution:
        """q(z [| c]) as a ``torch.distributions.Distribution`` (a lazy view, for users' own
        torch code: :mod:`vilab.families.distribution`).

        Raises:
            ValueError: a context the family does not take (see :meth:`sample_shape`).
        """
        return FamilyDistribution(self, context, validate_args=validate_args)

    def log_prob_estimate(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """log q(z) of an arbitrary z: :meth:`log_prob` where the family has one, else an
        estimate where the family has one (a semi-implicit q: importance sampling over its
        noise); ``NotImplementedError`` where it has neither."""
        return self.log_prob(z, context)

    def training_sample(
        self,
        n: int,
        context: Tensor | None = None,
        *,
        stl: bool = False,
        need_value: bool = True,
    ) -> TrainingSample:
        """n reparameterized samples with the value and the gradient surrogate of log q.

        Args:
            n: samples per context.
            context: ``(B, C)`` for an amortized family, None for a free one.
            stl: sticking-the-landing: the surrogate is log q(z) with the parameters and
                the context stopped, so only the path through z carries a gradient
                (Roeder, Wu & Duvenaud 2017). Needs :meth:`log_prob`.
            need_value: whether ``log_q`` will be read; a family may skip a costly value
                (and return NaN) when it is not.

        Returns:
            A :class:`TrainingSample`; by default ``log_q`` is that of
            :meth:`rsample_and_log_prob` and ``kl_per_dim`` is None.

        Raises:
            ValueError: ``stl=True`` for a family that cannot score an arbitrary z.
        """
        if stl:
            self.require_log_prob()
        z, log_q = self.rsample_and_log_prob(n, context)
        surrogate = self.stopped_log_prob(z, context) if stl else log_q
        return TrainingSample(z, log_q, surrogate)

    def require_log_prob(self) -> None:
        """Refuse (``ValueError``) a stopped log q for a family without :meth:`log_prob`."""
        if not self.has_log_prob:
            raise ValueError(
                "sticking-the-landing and DReG need a family that can score any z; "
                f"{type(self).__name__} with these parts cannot (semi-implicit families and "
                "flows without an inverse have no log_prob): turn stl off"
            )

    def stopped_log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """log q_θ(z | c) with θ and c detached: gradients reach z (the path) only,
        ``(n[, B])``."""
        self.require_log_prob()
        params = {f"family.{k}": v.detach() for k, v in self.named_parameters()}
        ctx = None if context is None else context.detach()
        return torch.func.functional_call(_LogProb(self), params, (z, ctx), strict=False)

    #: Whether :meth:`rsample_and_log_prob` returns log q(z) exactly (False: an estimate,
    #: as for a semi-implicit q, which then brackets it by :meth:`rsample_and_log_q_bounds`).
    exact_log_q: bool = True

    def rsample_and_log_q_bounds(
        self, n: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """n samples with a lower and an upper estimate of their log q(z), each ``(n[, B])``,
        E[lower] ≤ log q(z) ≤ E[upper]: what a KL bracket needs. An exact family returns
        its log q twice (the same tensor)."""
        z, log_q = self.rsample_and_log_prob(n, context)
        return z, log_q, log_q

    def estimate_notes(self) -> dict[str, float | str]:
        """What an evaluation should report about how log q was estimated (the semi-implicit
        family: its K draws of ε and its HMC statistics); empty for an exact family."""
        return {}

    def reset_log_q_summary(self) -> None:
        """Forget the log q estimates recorded so far, so that :meth:`estimate_notes`
        covers only those made after (a family whose log q is an estimate); nothing to
        forget for an exact family."""

    def base_and_push(self) -> tuple[Family, Any]:
        """``(q₀, T)`` with q = T#q₀ and ``T(ε, context) -> (z, log |det ∂T/∂ε|)``: the space
        in which annealed importance sampling moves (a flow's base). A family without such
        a decomposition returns ``(self, None)``."""
        return self, None

    def rsample_trace(self, n: int, context: Tensor | None = None) -> list[Tensor]:
        """n samples after each of the family's layers, first the base's: ``[z₀, …, z_K]``,
        each shaped as :meth:`rsample`'s; ``[z]`` for a family without layers (pictures)."""
        return [self.rsample(n, context)]

    def sample_shape(self, n: int, context: Tensor | None) -> tuple[int, ...]:
        """``(n, D)`` without a context, ``(n, B, D)`` with one; validates both."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of samples must be a positive integer, got {n!r}")
        if context is None:
            if self.context_dim is not None:
                raise ValueError(
                    f"{type(self).__name__} is amortized: pass a context of shape "
                    f"(B, {self.context_dim})"
                )
            return (n, self.dim)
        if self.context_dim is None:
            raise ValueError(f"{type(self).__name__} has free parameters and takes no context")
        if context.dim() != 2 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must have shape (B, {self.context_dim}), got {tuple(context.shape)}"
            )
        return (n, context.shape[0], self.dim)


class _LogProb(nn.Module):
    """``family.log_prob`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, family: Family) -> None:
        super().__init__()
        self.family = family

    def forward(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self.family.log_prob(z, context)


class AtContext(Family):
    """q(z | c) at one fixed context, as a free family (for exact KL and plots)."""

    def __init__(self, family: Family, context: Tensor) -> None:
        super().__init__()
        self.inner, self.context = family, context
        self.dim, self.context_dim = family.dim, None

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, lq = self.inner.rsample_and_log_prob(n, self.context)
        return z[:, 0], lq[:, 0]

    @property
    def has_log_prob(self) -> bool:
        return self.inner.has_log_prob

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.inner.log_prob(z.unsqueeze(-2), self.context)[..., 0]

    def log_prob_estimate(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.inner.log_prob_estimate(z.unsqueeze(-2), self.context)[..., 0]

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        return self.inner.rsample(n, self.context)[:, 0]

    @property
    def exact_log_q(self) -> bool:  # type: ignore[override]
        return self.inner.exact_log_q

    def rsample_and_log_q_bounds(
        self, n: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        z, lower, upper = self.inner.rsample_and_log_q_bounds(n, self.context)
        return z[:, 0], lower[:, 0], upper if upper is lower else upper[:, 0]

    def estimate_notes(self) -> dict[str, float | str]:
        return self.inner.estimate_notes()

    def reset_log_q_summary(self) -> None:
        self.inner.reset_log_q_summary()

    def rsample_trace(self, n: int, context: Tensor | None = None) -> list[Tensor]:
        return [z[:, 0] for z in self.inner.rsample_trace(n, self.context)]

    def training_sample(
        self,
        n: int,
        context: Tensor | None = None,
        *,
        stl: bool = False,
        need_value: bool = True,
    ) -> TrainingSample:
        """The inner family's training sample at the fixed context (row 0), free shapes."""
        self.sample_shape(n, context)
        s = self.inner.training_sample(n, self.context, stl=stl, need_value=need_value)
        first = s.log_q[:, 0]
        surrogate = first if not s.has_surrogate else s.log_q_surrogate[:, 0]
        kl = None if s.kl_per_dim is None else s.kl_per_dim[0]
        return TrainingSample(s.z[:, 0], first, surrogate, kl)
