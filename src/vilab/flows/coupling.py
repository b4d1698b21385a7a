"""Coupling flows: half the coordinates pass unchanged and parametrize an elementwise
bijection of the other half (Dinh et al., "Density estimation using Real NVP", ICLR 2017).

With the split point k = ⌊D/2⌋, a layer keeps one part ``a`` and transforms the other ``b``:

    y_a = x_a,   y_b = g(x_b; θ),   θ = NN(x_a [, h]),
    log |det ∂y/∂x| = Σ_{i ∈ b} log |∂g/∂x_i|,

because the Jacobian is block-triangular with the identity on ``a``. Without ``flip`` the
layer keeps ``a = x[:k]`` and transforms ``b = x[k:]`` (⌈D/2⌉ coordinates); with ``flip``
it keeps ``x[k:]`` and transforms ``x[:k]``, so alternating ``flip`` between layers
transforms every coordinate (for odd D the parts have ⌊D/2⌋ and ⌈D/2⌉ coordinates). The
inverse is one pass: ``x_a = y_a`` gives θ, then ``x_b = g⁻¹(y_b; θ)``.

Free or amortized is the context h: it enters the conditioner's first layer through its own
linear map, the same function as a network on the concatenation ``[x_a, h]`` but computed
once per context row ``(B, C)`` and broadcast over the samples ``(S, B, D)`` (as in IAF's
MADE). The conditioner's weights are always free parameters.

:class:`AffineCoupling` is RealNVP's ``g(x) = x ⊙ exp(s) + t`` with a soft-clamped
log-scale; the spline coupling (:class:`~vilab.flows.spline.SplineCoupling`) uses the same
machinery with a rational-quadratic spline as ``g``. The other way to condition an
elementwise bijection, θ from a MADE, is :class:`~vilab.flows.autoregressive.Autoregressive`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vilab.core.params import check_dims
from vilab.flows.base import Flow
from vilab.flows.made import check_hidden


class Conditioner(nn.Module):
    """An MLP ``(..., d_in) [+ context (B, C)] -> (..., d_out, n_params)`` with ReLU
    activations (as nflows' and zuko's coupling networks; on CPU an ELU costs about ten
    times a ReLU); the context enters the first hidden layer through a bias-free linear map.

    The output layer starts at ``init_scale`` times PyTorch's default weights and a zero
    bias, so a flow built on it starts close to its ``θ = 0`` map (the identity for the
    couplings and splines of vilab).

    Args:
        d_in: conditioning inputs.
        d_out: transformed coordinates.
        n_params: parameters per transformed coordinate.
        hidden: hidden widths (at least one).
        context_dim: size C of the context h (None for a free flow).
        init_scale: factor on the output layer's initial weights.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_params: int,
        hidden: Sequence[int],
        context_dim: int | None = None,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        widths = check_hidden(hidden)
        self.d_out, self.n_params = d_out, n_params
        self.first = nn.Linear(d_in, widths[0])
        self.context = (
            None if context_dim is None else nn.Linear(context_dim, widths[0], bias=False)
        )
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], d_out * n_params)
        with torch.no_grad():
            self.out.weight.mul_(init_scale)
            self.out.bias.zero_()

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.first(x)
        if self.context is not None:
            if context is None:
                raise ValueError(
                    f"this flow is amortized and needs a context of shape "
                    f"(B, {self.context.in_features})"
                )
            h = h + self.context(context)
        elif context is not None:
            raise ValueError(
                "this flow has free parameters and takes no context; build it with "
                "context_dim=<size of the context> to amortize it"
            )
        h = F.relu(h)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.out(h).unflatten(-1, (self.d_out, self.n_params))


class Coupling(Flow):
    """The coupling machinery: the split, the conditioner, forward and inverse in one pass.

    Subclasses set ``n_params`` (per transformed coordinate) and implement
    :meth:`transform`, the elementwise bijection ``g`` and its log-derivative.

    Args:
        dim: D ≥ 2 (a coupling needs a coordinate to condition on).
        hidden: conditioner hidden widths.
        context_dim: size of the context h (None for a free flow).
        flip: transform the first ⌊D/2⌋ coordinates instead of the last ⌈D/2⌉.
    """

    n_params: int

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        flip: bool = False,
    ) -> None:
        super().__init__()
        check_dims(dim)
        if dim < 2:
            raise ValueError(
                f"a coupling flow needs dim ≥ 2 (one part conditions the other), got dim={dim}; "
                "use an autoregressive flow (iaf, spline_autoregressive) in one dimension"
            )
        self.dim, self.flip = dim, flip
        k = dim // 2
        self.split = k
        d_keep, d_move = (dim - k, k) if flip else (k, dim - k)
        self.conditioner = Conditioner(d_keep, d_move, self.n_params, hidden, context_dim)

    def parts(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(kept, moved)`` parts of ``z``, views ``(..., d_a)``, ``(..., d_b)``."""
        lo, hi = z[..., : self.split], z[..., self.split :]
        return (hi, lo) if self.flip else (lo, hi)

    def join(self, kept: Tensor, moved: Tensor) -> Tensor:
        return torch.cat((moved, kept) if self.flip else (kept, moved), dim=-1)

    def transform(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """``g(x; θ)`` (or ``g⁻¹``) and the log-derivative of the map applied, elementwise:
        ``x`` is ``(..., d_b)``, ``θ`` is ``(..., d_b, n_params)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(
        self, z: Tensor, context: Tensor | None = None, trace: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        kept, moved = self.parts(z)
        y, logdet = self.transform(moved, self.conditioner(kept, context), inverse=False)
        out = self.join(kept, y)
        if trace is not None:
            trace.append(out)
        return out, logdet.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept, moved = self.parts(z)
        x, logdet = self.transform(moved, self.conditioner(kept, context), inverse=True)
        return self.join(kept, x), logdet.sum(-1)


class AffineCoupling(Coupling):
    """RealNVP's affine coupling layer (Dinh et al. 2017, eq. 7-8):

        y_b = x_b ⊙ exp(s) + t,   s = c · tanh(s̃ / c),   (s̃, t) = NN(x_a [, h]),
        log |det ∂y/∂x| = Σ_b s_b,

    the log-scale soft-clamped to (−c, c) (``scale_bound``, default 3: at most a factor
    e³ ≈ 20 per layer), which keeps early training from exploding without a hard clip's
    zero gradient. Inverse: ``x_b = (y_b − t) ⊙ exp(−s)``.

    Args:
        dim, hidden, context_dim, flip: see :class:`Coupling`.
        scale_bound: c > 0.
    """

    n_params = 2

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        flip: bool = False,
        scale_bound: float = 3.0,
    ) -> None:
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound!r}")
        super().__init__(dim, hidden, context_dim, flip)
        self.scale_bound = float(scale_bound)

    def transform(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        raw_s, t = theta.unbind(-1)
        c = self.scale_bound
        s = torch.tanh(raw_s / c) * c
        if inverse:
            return (x - t) * torch.exp(-s), -s
        return torch.addcmul(t, x, torch.exp(s)), s
