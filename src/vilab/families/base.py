"""The Family contract: a (conditional) sampler that scores its own samples.

    z, log_q = family.rsample_and_log_prob(n, context)

* no context: ``z`` is ``(n, D)`` and ``log_q`` is ``(n,)``;
* context ``(B, C)``: ``z`` is ``(n, B, D)`` and ``log_q`` is ``(n, B)`` — n samples of
  q(z | c_b) for every row c_b of the context.

Samples are reparameterized (gradients flow through z). ``log_prob(z, context)`` scores
an arbitrary z where the family can (Gaussians, invertible flows); planar, radial and
Sylvester stacks cannot and raise ``NotImplementedError``.
"""

from __future__ import annotations

from torch import Tensor, nn


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


class AtContext(Family):
    """q(z | c) at one fixed context, as a free family (for exact KL and plots)."""

    def __init__(self, family: Family, context: Tensor) -> None:
        super().__init__()
        self.inner, self.context = family, context
        self.dim, self.context_dim = family.dim, None

    def rsample_and_log_prob(
        self, n: int, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        kwargs = {"trace": trace} if trace is not None else {}
        z, lq = self.inner.rsample_and_log_prob(n, self.context, **kwargs)
        if trace is not None:
            trace[:] = [t[:, 0] for t in trace]
        return z[:, 0], lq[:, 0]
