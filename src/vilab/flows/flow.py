"""A stack of flows on a base family is itself a Family.

    z₀, log q₀ = base.rsample_and_log_prob(n, c),
    z_k = f_k(z_{k−1}; c),   log q(z_K) = log q₀(z₀) − Σ_k log |det ∂f_k/∂z_{k−1}|.

Free or amortized is decided by the parts: give every part the same ``context_dim``.
Scoring an arbitrary z (:meth:`FlowFamily.log_prob`) runs the inverses in reverse order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from vilab.families.base import Family
from vilab.flows.base import Flow


class FlowFamily(Family):
    """``base`` followed by ``flows`` in the sampling direction.

    Args:
        base: the base family (standard normal, mean-field or full-rank Gaussian).
        flows: flow modules applied in order; each may hold several layers.
    """

    def __init__(self, base: Family, flows: Sequence[Flow]) -> None:
        super().__init__()
        for f in flows:
            if f.dim != base.dim:
                raise ValueError(f"flow {type(f).__name__} has dim {f.dim}, base has {base.dim}")
        self.base = base
        self.flows = nn.ModuleList(flows)
        self.dim, self.context_dim = base.dim, base.context_dim

    @property
    def num_layers(self) -> int:
        return sum(f.num_layers for f in self.flows)

    def rsample_and_log_prob(
        self, n: int, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density; ``trace`` (a list) receives z₀ and every layer's z."""
        z, log_q = self.base.rsample_and_log_prob(n, context)
        if trace is not None:
            trace.append(z)
        z, logdet = self.push(z, context, trace)
        return z, log_q - logdet

    def rsample_trace(self, n: int, context: Tensor | None = None) -> list[Tensor]:
        """z₀ and every layer's z, ``[z₀, …, z_K]``."""
        trace: list[Tensor] = []
        self.rsample_and_log_prob(n, context, trace)
        return trace

    def base_and_push(self) -> tuple[Family, Any]:
        """The base q₀ and :meth:`push` (AIS moves in the base space)."""
        return self.base, self.push

    def push(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Send base points through every flow: ``(z_K, Σ_k log |det ∂f_k/∂z_{k−1}|)``."""
        total = z.new_zeros(z.shape[:-1])
        for f in self.flows:
            z, logdet = f(z, context, trace)
            total = total + logdet
        return z, total

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """log q(z) of an arbitrary z, ``(n, D) -> (n,)`` or ``(n, B, D) -> (n, B)``, by
        inverting every flow, last first:

            z_{k−1} = f_k⁻¹(z_k),   log q(z_K) = log q₀(z₀) + Σ_k log |det ∂f_k⁻¹/∂z_k|.

        Every vilab flow has an inverse (planar and Sylvester to machine precision, within
        their ``inverse_tol``); a user's flow without one raises ``NotImplementedError``."""
        missing = [type(f).__name__ for f in self.flows if not f.has_inverse]
        if missing or not self.base.has_log_prob:
            raise NotImplementedError(
                f"cannot score an arbitrary z: no inverse for {', '.join(missing) or 'the base'}"
            )
        self.sample_shape(1, context)  # check the context here, not deep inside a flow
        total = z.new_zeros(z.shape[:-1])
        for f in reversed(self.flows):
            z, logdet_inv = f.inverse(z, context)
            total = total + logdet_inv
        return self.base.log_prob(z, context) + total

    @property
    def has_log_prob(self) -> bool:
        return self.base.has_log_prob and all(f.has_inverse for f in self.flows)


def followed_by(family: Family, flows: Sequence[Flow]) -> FlowFamily:
    """``family`` followed by ``flows``: a flow family's flows extended, any other family
    made the base of a new flow family."""
    if isinstance(family, FlowFamily):
        return FlowFamily(family.base, [*family.flows, *flows])
    return FlowFamily(family, list(flows))
