"""An MLP's output and its backward pass to the input, by hand.

For y = f_L(… f_1(x)), f_l(h) = act_l(W_l h + b_l) (no activation after the last layer),
the vector-Jacobian product is

    gᵀ ∂y/∂x = (((g W_L) ⊙ act'_{L−1}(a_{L−1})) W_{L−1} ⋯ ⊙ act'_1(a_1)) W_1,

with a_l the pre-activations of the forward pass. :func:`mlp_input_grad` computes the
same products autograd would (the aten backward kernels it calls), without its graph or
bookkeeping: the semi-implicit family's HMC over its noise ε needs it at every leapfrog
step (Titsias & Ruiz 2019), where autograd's overhead dominates a small network.

Shapes: x ``(..., in)`` (the first layer's W cut to the input columns used), output
``(..., out)``, g ``(..., out)`` -> ``(..., in)``. A network that is not ``nn.Linear``
layers with the known activations between them (:func:`mlp_layers` returns None) is left
to autograd; :class:`frozen` keeps its parameters out of that graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Activation module -> its backward ``(g, a, y) -> g ⊙ act'(a)`` from the pre-activation
#: ``a`` and the output ``y``: the aten kernels autograd itself calls (the same numbers, and
#: several times faster on the CPU than a ``torch.where`` over a boolean mask).
_aten = torch.ops.aten
ACT_GRADS: dict[type[nn.Module], Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda g, a, y: _aten.threshold_backward(g, y, 0),
    nn.Tanh: lambda g, a, y: _aten.tanh_backward(g, y),
    nn.ELU: lambda g, a, y: _aten.elu_backward(g, 1.0, 1, 1, False, a),
    nn.Softplus: lambda g, a, y: _aten.softplus_backward(g, a, 1.0, 20.0),
    nn.GELU: lambda g, a, y: _aten.gelu_backward(g, a, approximate="none"),
}

#: One linear layer: ``(W, b, activation after it or None, the activation's backward)``.
Layer = tuple[Tensor, Tensor, Callable[[Tensor], Tensor] | None, Callable[..., Tensor] | None]


def mlp_layers(net: nn.Module, in_features: int) -> list[Layer] | None:
    """``(W, b, activation, its gradient)`` per linear layer of an MLP of ``nn.Linear``
    and known activations (the first W cut to its first ``in_features`` columns),
    detached; None for any other network (gated units, another activation or setting, a
    network that does not end in a linear layer)."""
    mods = list(net) if isinstance(net, nn.Sequential) else []
    out: list[Layer] = []
    for m in mods:
        if isinstance(m, nn.Linear):
            out.append((m.weight.detach(), m.bias.detach(), None, None))
        elif out and out[-1][2] is None and _plain_activation(m):
            w, b, _, _ = out[-1]
            out[-1] = (w, b, m, ACT_GRADS[type(m)])
        else:
            return None
    if not out or out[-1][2] is not None:
        return None  # not an MLP that ends in a linear layer
    w0, b0, act, grad = out[0]
    out[0] = (w0[:, :in_features], b0, act, grad)
    return out


def _plain_activation(m: nn.Module) -> bool:
    """An activation :data:`ACT_GRADS` differentiates, with its default settings."""
    if type(m) not in ACT_GRADS:
        return False
    if isinstance(m, nn.Softplus):
        return m.beta == 1.0 and m.threshold == 20.0
    if isinstance(m, nn.ELU):
        return m.alpha == 1.0
    if isinstance(m, nn.GELU):
        return m.approximate == "none"
    return True


def mlp_input_grad(
    layers: list[Layer], x: Tensor, projected: Tensor | None = None
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The MLP's output at ``x (..., in)``, ``(..., out)``, and the vector-Jacobian
    product ``g (..., out) -> gᵀ ∂out/∂x (..., in)`` (the backward pass to the input, by
    hand: the products of autograd without its bookkeeping). ``projected`` is the share
    of the first layer from inputs not in x (a context's W_h h + b, bias included), lined
    up with x's batch; None: the first layer's own bias."""
    w0, b0 = layers[0][0], layers[0][1]
    h = F.linear(x, w0, b0) if projected is None else F.linear(x, w0) + projected
    saved = []
    for i, (w, b, act, _) in enumerate(layers):
        if i:
            h = F.linear(h, w, b)
        if act is not None:
            y = act(h)
            saved.append((h, y))
            h = y
    out = h

    def vjp(g: Tensor) -> Tensor:
        for i in range(len(layers) - 1, 0, -1):
            g = g @ layers[i][0]
            a, y = saved[i - 1]
            g = layers[i - 1][3](g, a, y)  # type: ignore[misc]
        return _input_product(g, layers[0][0])

    return out, vjp


def _input_product(g: Tensor, w: Tensor) -> Tensor:
    """``g @ w`` for the first layer's ``w (H, e)``, e small: computed as ``(wᵀ gᵀ)ᵀ``,
    which BLAS does several times faster for a thin output (the result is a transposed
    view)."""
    if g.dim() < 2:
        return g @ w
    flat = g.reshape(-1, g.shape[-1])
    return (w.t() @ flat.t()).t().reshape(*g.shape[:-1], w.shape[-1])


class frozen:
    """Within the block, the module's parameters do not require gradients (a graph to the
    input only)."""

    def __init__(self, module: nn.Module) -> None:
        self.params = list(module.parameters())

    def __enter__(self) -> None:
        self.requires = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p, r in zip(self.params, self.requires):
            p.requires_grad_(r)
