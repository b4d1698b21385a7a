"""Where a flow's or a family's parameters come from: free parameters, or a head on a context.

A flow declares the tensors it needs as ``{name: initial value}``. ``make_params`` turns
that into a module which, called with a context, returns ``{name: tensor}``:

* ``context_dim=None`` -> :class:`FreeParams`: the tensors are ``nn.Parameter`` s with the
  declared shapes (no batch dimension). Used to fit one q(z) to one target.
* ``context_dim=C`` -> :class:`AmortizedParams`: one linear head maps a context of shape
  ``(B, C)`` to every tensor at once, each of shape ``(B, *shape)``. Its bias starts at
  the initial values and its weight near zero, so an amortized flow starts where the free
  one does. Used for q(z | x) in a VAE or q(z | c) for a target family.

The flow's maths is written once, on the last dimensions, and broadcasts over whatever
batch dimensions the parameters carry (DESIGN.md, separation 4); :func:`rowmat` and
:func:`rowdot` are the two products that make it broadcast. :func:`check_dims` validates
the sizes a flow or family is built with. A core helper: flows and families both use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn


def check_dims(dim: int, num_layers: int = 1) -> None:
    """Refuse non-positive sizes with a message naming the value."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")


class ParamSource(nn.Module):
    """Produces a flow's parameter tensors, given an optional context."""

    def forward(self, context: Tensor | None = None) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError


class FreeParams(ParamSource):
    """Free parameters: ``{name: nn.Parameter(init)}``; a context is refused."""

    def __init__(self, init: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.values = nn.ParameterDict(
            {k: nn.Parameter(v.detach().clone()) for k, v in init.items()}
        )

    def forward(self, context: Tensor | None = None) -> dict[str, Tensor]:
        if context is not None:
            raise ValueError(
                "this flow has free parameters and takes no context; build it with "
                "context_dim=<size of the context> to amortize it"
            )
        return dict(self.values.items())


class AmortizedParams(ParamSource):
    """A linear head from a context ``(B, C)`` to every parameter, shaped ``(B, *shape)``.

    Args:
        context_dim: size C of the context vector.
        init: initial values; they become the head's bias.
        weight_scale: standard deviation of the head's weight times sqrt(C).
    """

    def __init__(self, context_dim: int, init: Mapping[str, Tensor], weight_scale: float = 1e-2):
        super().__init__()
        if context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer, got {context_dim}")
        self.context_dim = context_dim
        self.names = list(init)
        self.shapes = [tuple(v.shape) for v in init.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.head = nn.Linear(context_dim, sum(self.sizes))
        with torch.no_grad():
            self.head.weight.normal_(0.0, weight_scale / math.sqrt(context_dim))
            self.head.bias.copy_(torch.cat([v.detach().reshape(-1) for v in init.values()]))

    def forward(self, context: Tensor | None = None) -> dict[str, Tensor]:
        if context is None:
            raise ValueError(
                f"this flow is amortized and needs a context of shape (B, {self.context_dim})"
            )
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context has last dimension {context.shape[-1]}, expected {self.context_dim}"
            )
        flat = self.head(context)
        parts = flat.split(self.sizes, dim=-1)
        batch = context.shape[:-1]
        return {n: p.reshape(*batch, *s) for n, p, s in zip(self.names, parts, self.shapes)}


def make_params(init: Mapping[str, Tensor], context_dim: int | None) -> ParamSource:
    """Free parameters when ``context_dim`` is None, else an amortized head."""
    if context_dim is None:
        return FreeParams(init)
    return AmortizedParams(context_dim, init)


def rowmat(x: Tensor, m: Tensor) -> Tensor:
    """Row vectors times matrices: ``x (..., D) @ m (*b, D, M) -> (..., M)``.

    ``m`` is either one matrix ``(D, M)`` (free parameters) or a batch ``(B, D, M)`` whose
    batch dimension lines up with the last batch dimension of ``x`` (amortized).
    """
    if m.dim() == 2:
        return x @ m
    return (x.unsqueeze(-2) @ m).squeeze(-2)


def rowdot(x: Tensor, w: Tensor) -> Tensor:
    """Inner product over the last dimension: ``x (..., D), w (*b, D) -> (...)``."""
    if w.dim() == 1:
        return x @ w
    return (x * w).sum(-1)
