"""Annealed importance sampling with HMC transitions (Neal 2001; HAIS: Sohl-Dickstein &
Culpepper 2012; for decoder models Wu et al. 2017).

A geometric path from a normalized start density p₀ to an unnormalized target γ,

    log f_t(z) = (1 − β_t) log p₀(z) + β_t log γ(z),   0 = β₀ < β₁ < … < β_T = 1,

is followed by chains z⁽ᶜ⁾ ~ p₀: at each t the log-weight gains
(β_t − β_{t−1}) (log γ(z) − log p₀(z)), then z moves by one HMC transition that leaves
f_t invariant. Then

    Ẑ = (1/C) Σ_c exp(log w⁽ᶜ⁾),   E[Ẑ] = Z,   E[log Ẑ] ≤ log Z

— a stochastic lower bound on log Z (log p(x) for a VAE). Step sizes are adapted per
chain toward a target acceptance rate with the multiplicative rule of the HAIS code of
Wu et al. (ε ← 1.02 ε if accepted-probability > target, else 0.98 ε); each transition
still leaves its f_t invariant. Everything is batched over chains and, for VAEs, images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vilab.estimators.loglik import delta_stderr
from vilab.samplers.hmc import hmc_step, log_prob_and_grad

LogProb = Callable[[Tensor], Tensor]


def sigmoid_schedule(num_dists: int, rad: float = 4.0) -> Tensor:
    """β_0..β_T (T = ``num_dists``) on a sigmoid, denser at both ends (Grosse et al. 2015)."""
    if num_dists < 1:
        raise ValueError(f"num_dists must be ≥ 1, got {num_dists}")
    if num_dists == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.sigmoid(torch.linspace(-rad, rad, num_dists + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass(frozen=True)
class AISResult:
    """``log_z (*B)``: log of the mean weight over chains; ``stderr (*B)``: its delta-method
    Monte Carlo standard error; ``log_w (C, *B)``; ``accept_rate``: mean over
    transitions and chains."""

    log_z: Tensor
    stderr: Tensor
    log_w: Tensor
    accept_rate: float
    num_dists: int


@torch.no_grad()
def ais(
    log_init: LogProb,
    sample_init: Callable[[int], Tensor],
    log_target: LogProb,
    num_chains: int,
    num_dists: int = 500,
    num_leapfrog: int = 5,
    step_size: float = 0.1,
    target_accept: float = 0.65,
    schedule: Tensor | None = None,
) -> AISResult:
    """Annealed importance sampling of Z = ∫ γ(z) dz.

    Args:
        log_init: log p₀, normalized, ``(C, *B, D) -> (C, *B)``.
        sample_init: ``C -> z (C, *B, D)``, draws from p₀.
        log_target: log γ, ``(C, *B, D) -> (C, *B)``.
        num_chains: C, independent chains per batch element.
        num_dists: T, the number of intermediate distributions.
        num_leapfrog: leapfrog steps per HMC transition.
        step_size: initial ε for every chain.
        target_accept: acceptance rate the step sizes are steered to.
        schedule: β_0..β_T (default: :func:`sigmoid_schedule`).
    """
    if num_chains < 1:
        raise ValueError(f"num_chains must be ≥ 1, got {num_chains}")
    betas = sigmoid_schedule(num_dists) if schedule is None else schedule.double()
    if betas[0] != 0 or betas[-1] != 1 or (betas[1:] < betas[:-1]).any():
        raise ValueError("schedule must rise from β₀ = 0 to β_T = 1")
    z = sample_init(num_chains)
    eps = torch.full(z.shape[:-1], step_size, dtype=z.dtype, device=z.device)
    log_w = torch.zeros(z.shape[:-1], dtype=torch.float64, device=z.device)
    li, lt = log_init(z), log_target(z)
    accept_sum = torch.zeros((), dtype=torch.float64, device=z.device)  # no read per step
    n_moves = 0
    for b_prev, b in zip(betas[:-1].tolist(), betas[1:].tolist()):
        log_w += (b - b_prev) * (lt - li).double()

        def f_t(v: Tensor, b: float = b) -> Tensor:
            return (1.0 - b) * log_init(v) + b * log_target(v)

        current = log_prob_and_grad(f_t, z)
        z, _, _, prob, _ = hmc_step(f_t, z, eps, num_leapfrog, None, current)
        eps = eps * torch.where(prob > target_accept, 1.02, 0.98)
        accept_sum += prob.double().mean()
        n_moves += 1
        li, lt = log_init(z), log_target(z)
    lse = torch.logsumexp(log_w, 0)
    log_z = lse - math.log(num_chains)
    stderr = delta_stderr(lse, torch.logsumexp(2 * log_w, 0), num_chains)
    if num_chains == 1:  # one chain carries no estimate of its own spread
        stderr = torch.full_like(stderr, math.nan)
    accept = float(accept_sum) / max(n_moves, 1)
    return AISResult(log_z, stderr, log_w, accept, len(betas) - 1)
