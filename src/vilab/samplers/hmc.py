"""Batched Hamiltonian Monte Carlo with per-chain step-size adaptation.

Every chain is independent — one per data point and sample — and all of them move at
once. With a diagonal mass matrix M (inverse ``inv_mass`` = M⁻¹) and step size ε, one
transition draws p ~ N(0, M), runs L leapfrog steps of

    p ← p + ½ε ∇log π(x),   x ← x + ε M⁻¹ p,   p ← p + ½ε ∇log π(x),

and accepts the end point with probability min(1, exp(−ΔH)), H = −log π(x) + ½ pᵀM⁻¹p
(Neal 2011, "MCMC using Hamiltonian dynamics"). A proposal whose log-density, gradient or
energy is not finite is rejected like any other: the chain stays where it was, so no NaN
ever leaves the sampler and no gradient clamp is needed (seed 000's pain point).

Step sizes are adapted per chain during burn-in by dual averaging (Nesterov 2009, as in
Hoffman & Gelman 2014, §3.2.1) toward a target acceptance rate, then frozen at the
averaged value: the kept samples come from a fixed, π-invariant kernel.

:func:`hmc_trace` runs a fixed number of transitions of :func:`hmc_step`'s kernel (unit
mass) with a *potential* that returns log π, its gradient and a by-product of the same
pass (UIVI's μ(ε)), carried along with each chain's state: one call per leapfrog step and
nothing read back to the host, for samplers that run inside a training step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

LogProb = Callable[[Tensor], Tensor]
#: ``x (..., D) -> (log π(x) (...), ∇log π(x) (..., D), a by-product (..., K))``.
Potential = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def log_prob_and_grad(log_prob: LogProb, x: Tensor) -> tuple[Tensor, Tensor]:
    """``log π(x)`` ``(...)`` and ``∇_x log π(x)`` ``(..., D)``; non-finite entries are
    left for the caller to reject. Works inside ``torch.no_grad``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = log_prob(x)
        if not lp.requires_grad:  # a constant log-density (e.g. −inf everywhere)
            return lp.detach(), torch.zeros_like(x)
        (grad,) = torch.autograd.grad(lp.sum(), x, allow_unused=True)
    return lp.detach(), torch.zeros_like(x) if grad is None else grad.detach()


class DualAveraging:
    """Per-chain dual averaging of log ε toward a target acceptance rate δ.

        H̄_t = (1 − 1/(t + t₀)) H̄_{t−1} + (δ − α_t)/(t + t₀)
        log ε_t = μ − √t/γ · H̄_t,   log ε̄_t = t^−κ log ε_t + (1 − t^−κ) log ε̄_{t−1}

    with μ = log(10 ε₀), γ = 0.05, t₀ = 10, κ = 0.75 (Hoffman & Gelman 2014). Each chain
    adapts on its own, noisy, acceptance signal; the averaging weight t^−κ is floored at
    0.05 so that ε̄ forgets the small early steps (with the plain weights ε̄ lands well
    below the adapted ε and the acceptance rate well above δ — measured on Gaussians).

    Args:
        step_size: initial ε₀ per chain, shape ``(...)``.
        target: δ, the target acceptance probability.
    """

    def __init__(self, step_size: Tensor, target: float = 0.8) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target acceptance must be in (0, 1), got {target}")
        self.target = target
        self.mu = torch.log(10.0 * step_size)
        self.h_bar = torch.zeros_like(step_size)
        self.log_eps = torch.log(step_size)
        self.log_eps_bar = torch.zeros_like(step_size)
        self.t = 0
        self.gamma, self.t0, self.kappa, self.smoothing = 0.05, 10.0, 0.75, 0.05

    def update(self, accept_prob: Tensor) -> Tensor:
        """Feed this transition's acceptance probabilities; returns the next ε."""
        self.t += 1
        t = self.t
        w = 1.0 / (t + self.t0)
        self.h_bar = (1.0 - w) * self.h_bar + w * (self.target - accept_prob)
        self.log_eps = self.mu - math.sqrt(t) / self.gamma * self.h_bar
        eta = max(t ** (-self.kappa), self.smoothing)
        self.log_eps_bar = eta * self.log_eps + (1.0 - eta) * self.log_eps_bar
        return self.log_eps.exp()

    @property
    def final(self) -> Tensor:
        """The averaged step size ε̄ to use after adaptation."""
        return self.log_eps_bar.exp() if self.t else self.log_eps.exp()


def metropolis(log_ratio: Tensor, proposal: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """The accept/reject of every chain's proposal: ``(accept_prob, accepted)``, ``(...)``,
    with accept_prob = min(1, exp(log_ratio)) and one uniform per chain, drawn after the
    proposal. A proposal whose log-ratio, state ``(..., D)`` or gradient ``(..., D)`` is not
    finite is rejected (one finiteness test of the three: a sum times 0 is 0 if all its
    terms are finite, NaN otherwise)."""
    ok = torch.isfinite(log_ratio + (proposal.sum(-1) + grad.sum(-1)) * 0.0)
    log_ratio = torch.where(ok, log_ratio, torch.full_like(log_ratio, -math.inf))
    accept_prob = log_ratio.clamp(max=0.0).exp()
    return accept_prob, torch.rand_like(accept_prob) < accept_prob


def hmc_step(
    log_prob: LogProb,
    x: Tensor,
    step_size: Tensor,
    num_leapfrog: int,
    inv_mass: Tensor | None = None,
    current: tuple[Tensor, Tensor] | None = None,
    jitter: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One HMC transition for every chain.

    Args:
        log_prob: log π, ``(..., D) -> (...)``.
        x: current states ``(..., D)``.
        step_size: ε per chain, ``(...)`` (or a scalar tensor).
        num_leapfrog: L ≥ 1.
        inv_mass: diagonal of M⁻¹, broadcastable to ``x`` (default: identity).
        current: ``(log π(x), ∇log π(x))`` if already known.
        jitter: scale ε by U(1 − jitter, 1 + jitter) per chain for this transition.

    Returns:
        ``(x', log π(x'), ∇log π(x'), accept_prob, accepted)`` — accept_prob and accepted
        of shape ``(...)``; rejected chains keep x.
    """
    if num_leapfrog < 1:
        raise ValueError(f"num_leapfrog must be ≥ 1, got {num_leapfrog}")
    lp0, g0 = current if current is not None else log_prob_and_grad(log_prob, x)
    inv_m = torch.ones_like(x) if inv_mass is None else inv_mass.expand_as(x)
    eps = step_size.unsqueeze(-1) if step_size.dim() else step_size
    if jitter:
        eps = eps * (1.0 + jitter * (2.0 * torch.rand_like(eps) - 1.0))
    p0 = torch.randn_like(x) / inv_m.sqrt()
    k0 = 0.5 * (p0 * p0 * inv_m).sum(-1)
    xq, p, g = x, p0 + 0.5 * eps * g0, g0
    for i in range(num_leapfrog):
        xq = xq + eps * inv_m * p
        lp, g = log_prob_and_grad(log_prob, xq)
        p = p + (eps if i < num_leapfrog - 1 else 0.5 * eps) * g
    k1 = 0.5 * (p * p * inv_m).sum(-1)
    accept_prob, accepted = metropolis((lp - k1) - (lp0 - k0), xq, g)
    keep = accepted.unsqueeze(-1)
    x_new = torch.where(keep, xq, x)
    lp_new = torch.where(accepted, lp, lp0)
    g_new = torch.where(keep, g, g0)
    return x_new, lp_new, g_new, accept_prob, accepted


@dataclass(frozen=True)
class HMCResult:
    """``samples (num_samples, ..., D)``; ``step_size (...)`` after adaptation;
    ``accept_rate (...)``: mean acceptance probability over the kept transitions."""

    samples: Tensor
    step_size: Tensor
    accept_rate: Tensor
    final: Tensor


@torch.no_grad()
def hmc(
    log_prob: LogProb,
    x0: Tensor,
    num_samples: int,
    burn_in: int = 100,
    step_size: float | Tensor = 0.1,
    num_leapfrog: int = 5,
    target_accept: float = 0.8,
    inv_mass: Tensor | None = None,
    adapt: bool = True,
    thin: int = 1,
    jitter: float = 0.5,
) -> HMCResult:
    """Run independent chains from ``x0 (..., D)``: ``burn_in`` transitions with step-size
    adaptation, then ``num_samples`` kept transitions (every ``thin``-th) at the frozen
    averaged step size.

    Args:
        log_prob: log π up to a constant, ``(..., D) -> (...)``; any torch function.
        x0: initial states, one per chain.
        num_samples: number of kept samples per chain.
        burn_in: adaptation transitions (discarded).
        step_size: initial ε, a float or one per chain ``(...)``.
        num_leapfrog: leapfrog steps per transition.
        target_accept: target acceptance probability of the adaptation.
        inv_mass: diagonal inverse mass, broadcastable to ``x0``.
        adapt: adapt ε during burn-in (else keep it fixed).
        thin: keep every ``thin``-th transition.
        jitter: each transition uses ε·U(1 − jitter, 1 + jitter) (Neal 2011, §5.4.2.2):
            it breaks the resonances of a fixed trajectory length, which otherwise make the
            acceptance rate a non-monotone function of ε and confuse the adaptation.
    """
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if num_samples < 0 or burn_in < 0 or thin < 1:
        raise ValueError(
            f"need num_samples ≥ 0, burn_in ≥ 0, thin ≥ 1; got {num_samples}, {burn_in}, {thin}"
        )
    x = x0.detach().clone()
    eps = torch.as_tensor(step_size, dtype=x.dtype, device=x.device).expand(x.shape[:-1]).clone()
    if not (eps > 0).all():
        raise ValueError("step sizes must be positive")
    current = log_prob_and_grad(log_prob, x)
    if not torch.isfinite(current[0]).all():
        raise ValueError("log_prob is not finite at some initial states x0")
    adapter = DualAveraging(eps, target_accept) if adapt and burn_in else None
    for _ in range(burn_in):
        x, lp, g, prob, _ = hmc_step(log_prob, x, eps, num_leapfrog, inv_mass, current, jitter)
        current = (lp, g)
        if adapter is not None:
            eps = adapter.update(prob)
    if adapter is not None:
        eps = adapter.final
    kept, rate = [], torch.zeros_like(eps)
    for i in range(num_samples * thin):
        x, lp, g, prob, _ = hmc_step(log_prob, x, eps, num_leapfrog, inv_mass, current, jitter)
        current = (lp, g)
        rate = rate + prob
        if (i + 1) % thin == 0:
            kept.append(x)
    samples = torch.stack(kept) if kept else x.new_zeros((0, *x.shape))
    return HMCResult(samples, eps, rate / max(1, num_samples * thin), x)


@dataclass(frozen=True)
class HMCTrace:
    """What :func:`hmc_trace` returns: ``samples (num_samples, ..., D)``, the potential's
    by-product at each of them ``extras (num_samples, ..., K)``, ``accept_prob (burn_in +
    num_samples, ...)`` of every transition, and the final ``(x, log π, ∇log π, extra)``."""

    samples: Tensor
    extras: Tensor
    accept_prob: Tensor
    final: tuple[Tensor, Tensor, Tensor, Tensor]


def hmc_trace(
    potential: Potential,
    x0: Tensor,
    step_size: Tensor,
    num_leapfrog: int,
    burn_in: int,
    num_samples: int,
    jitter: float = 0.0,
    current: tuple[Tensor, Tensor, Tensor] | None = None,
    gradient: Callable[[Tensor], Tensor] | None = None,
) -> HMCTrace:
    """``burn_in + num_samples`` transitions of every chain from ``x0 (..., D)``, keeping
    the last ``num_samples``: the kernel of :func:`hmc_step` with unit mass, the same
    random draws in the same order (per transition: the jitter, the momentum, the
    acceptance uniform) and the same arithmetic as :func:`hmc_step` given ``step_size``
    expanded to one per chain, so that ``log_prob`` and ``potential`` agreeing gives the
    same chains. ``step_size`` ``(...)`` or 0-d (shared: expanded, each chain still
    jittered on its own) stays fixed; adapt it between calls from ``accept_prob``. A rejected chain keeps its state, log-density,
    gradient and by-product; non-finite proposals are rejected. No host read-back.

    Args:
        potential: ``x -> (log π(x), ∇log π(x), extra)``; ``extra`` (e.g. a network's
            output at x) is returned for the kept states.
        current: the potential at ``x0`` if already known.
        gradient: ``x -> ∇log π(x)`` alone, for the leapfrog steps inside a trajectory
            (only its end point's log π and by-product are used); default: the
            potential's.
    """
    if num_leapfrog < 1 or num_samples < 1 or burn_in < 0:
        raise ValueError(
            "need num_leapfrog ≥ 1, num_samples ≥ 1, burn_in ≥ 0; got "
            f"{num_leapfrog}, {num_samples}, {burn_in}"
        )
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    x = x0.detach()
    lp0, g0, e0 = current if current is not None else potential(x)
    step = step_size.expand(x.shape[:-1]).unsqueeze(-1)  # per chain, jittered per chain
    kept, extras, probs = [], [], []
    for t in range(burn_in + num_samples):
        eps = step
        if jitter:
            eps = eps * (1.0 + jitter * (2.0 * torch.rand_like(eps) - 1.0))
        p0 = torch.randn_like(x)
        k0 = 0.5 * (p0 * p0).sum(-1)
        xq, p = x, p0 + 0.5 * eps * g0
        for i in range(num_leapfrog):
            xq = xq + eps * p
            if i < num_leapfrog - 1:
                g = potential(xq)[1] if gradient is None else gradient(xq)
                p = p + eps * g
            else:
                lp, g, e = potential(xq)
                p = p + 0.5 * eps * g
        k1 = 0.5 * (p * p).sum(-1)
        accept_prob, accepted = metropolis((lp - k1) - (lp0 - k0), xq, g)
        keep = accepted.unsqueeze(-1)
        x = torch.where(keep, xq, x)
        lp0 = torch.where(accepted, lp, lp0)
        g0 = torch.where(keep, g, g0)
        e0 = torch.where(keep, e, e0)
        probs.append(accept_prob)
        if t >= burn_in:
            kept.append(x)
            extras.append(e0)
    return HMCTrace(torch.stack(kept), torch.stack(extras), torch.stack(probs), (x, lp0, g0, e0))
