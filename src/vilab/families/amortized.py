"""An amortized posterior q(z | x): an encoder network gives the context of a family.

    h = encoder(x),   z, log q(z | x) = family.rsample_and_log_prob(S, h)

Any family built with ``context_dim = encoder output size`` works — mean-field, planar,
radial, IAF (h enters the MADE), Sylvester — with no class per combination.
"""

from __future__ import annotations

from torch import Tensor, nn

from vilab.core.device import autocast
from vilab.families.base import Family


class AmortizedPosterior(nn.Module):
    """``encoder`` followed by a conditional ``family``.

    Args:
        encoder: network ``(B, *event) -> (B, C)``.
        family: a family with ``context_dim = C``.
    """

    def __init__(self, encoder: nn.Module, family: Family) -> None:
        super().__init__()
        if family.context_dim is None:
            raise ValueError("the family of an amortized posterior needs context_dim")
        self.encoder, self.family = encoder, family
        #: ``"bf16"``: in training mode the encoder runs under bfloat16 autocast and h
        #: comes back in float32, so the family's log-densities stay in float32; in
        #: evaluation mode everything is float32 (the reported log p(x) is the model's).
        self.precision = "float32"

    def context(self, x: Tensor) -> Tensor:
        """``h = encoder(x)``, shape ``(B, C)``; compute once, sample many times."""
        if self.precision == "float32" or not self.training:
            return self.encoder(x)
        with autocast(x.device, self.precision):
            h = self.encoder(x)
        return h.float()

    def rsample_and_log_prob(self, n: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z (n, B, D)`` and ``log q(z | x) (n, B)``."""
        return self.family.rsample_and_log_prob(n, self.context(x))
