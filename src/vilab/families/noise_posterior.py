"""The HMC target of UIVI's reverse sampler: the posterior of the noise given a sample
(Titsias & Ruiz, AISTATS 2019, §3),

    log π(ε) = log q(ε | z [, h]) + c = −½ |ε|² − ½ Σ_d (z_d − μ_d(ε [, h]))² / σ_d²
               − Σ_d log σ_d − (D/2) log 2π,
    ∇_ε log π = J_μ(ε)ᵀ ((z − μ(ε)) / σ²) − ε,

as a :data:`~vilab.samplers.hmc.Potential` ``ε (..., e) -> (log π (...), ∇_ε log π
(..., e), μ(ε) (..., D))`` with z ``(..., D)``, σ and the network held fixed (no graph to
the parameters). :func:`mlp_noise_target` takes the network's forward and its hand-written
backward to ε (:func:`vilab.nets.input_grad.mlp_input_grad`: one network pass per value
and gradient); :func:`autograd_noise_potential` takes autograd through any network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vilab.nets.input_grad import Layer, frozen, mlp_input_grad
from vilab.samplers.hmc import Potential

#: ``ε -> ∇_ε log π``: what the leapfrog steps inside a trajectory need (no log π to sum).
Gradient = Callable[[Tensor], Tensor]


def mlp_noise_target(
    layers: list[Layer], z: Tensor, projected: Tensor | None, inv_var: Tensor, const: Tensor
) -> tuple[Potential, Gradient]:
    """log π and its gradient through an MLP's layer table
    (:func:`~vilab.nets.input_grad.mlp_layers`): ``z (..., D)`` detached, ``projected``
    the context's share of the first layer lined up with ε's batch (None without a
    context), ``inv_var`` 1/σ² ``(D,)``, ``const`` −Σ log σ − (D/2) log 2π."""

    def potential(eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            mu, grad_mu = mlp_input_grad(layers, eps, projected)
            d = z - mu
            r = d * inv_var  # ∂ log N / ∂μ
            lp = -0.5 * (eps * eps).sum(-1) + (-0.5 * (d * r).sum(-1) + const)
            return lp, grad_mu(r) - eps, mu

    def gradient(eps: Tensor) -> Tensor:
        with torch.no_grad():
            mu, grad_mu = mlp_input_grad(layers, eps, projected)
            return grad_mu((z - mu) * inv_var) - eps

    return potential, gradient


def autograd_noise_potential(
    mean: Callable[[Tensor], Tensor], net: nn.Module, z: Tensor, inv_var: Tensor, const: Tensor
) -> Potential:
    """log π and its gradient by autograd through ``mean`` (ε -> μ(ε [, h]), a network of
    layers :func:`~vilab.nets.input_grad.mlp_layers` does not know), with ``net``'s
    parameters frozen for the pass; the other arguments as :func:`mlp_noise_target`'s."""

    def potential(eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            e = eps.detach().requires_grad_(True)
            with frozen(net):
                mu = mean(e)
            d = z - mu
            lp = -0.5 * (e * e).sum(-1) + (-0.5 * (d * d * inv_var).sum(-1) + const)
            (grad,) = torch.autograd.grad(lp.sum(), e)
        return lp.detach(), grad.detach(), mu.detach()

    return potential
