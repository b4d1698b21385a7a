"""Annealed importance sampling with HMC transitions (Neal 2001; HAIS: Sohl-Dickstein &
Culpepper 2012; for decoder models Wu et al. 2017).

A geometric path from a normalized start density p₀ to an unnormalized target γ,

    log f_t(z) = (1 − β_t) log p₀(z) + β_t log γ(z),   0 = β₀ < β₁ < … < β_T = 1,

is followed by chains z⁽ᶜ⁾ ~ p₀: at each t the log-weight gains
(β_t − β_{t−1}) (log γ(z) − log p₀(z)), then z moves by one Metropolis-corrected HMC
transition that leaves f_t invariant. Then

    Ẑ = (1/C) Σ_c exp(log w⁽ᶜ⁾),   E[Ẑ] = Z,   E[log Ẑ] ≤ log Z

— a stochastic lower bound on log Z (log p(x) for a VAE).

Step sizes are adapted toward a target acceptance rate with the multiplicative rule of
the HAIS code of Wu et al. (ε ← (1 + r) ε if the last transition's acceptance probability
exceeded the target, else (1 − r) ε; r = ``adapt_rate``, 0.02 there), on the device,
from the previous transition's acceptance. Every transition is an exact
Metropolis–Hastings kernel that leaves its f_t invariant whatever ε it is given, but
E[Ẑ] = Z is proved for kernels chosen independently of the chains they move. So by
default (``pilots=1``) one extra chain per batch element — per image — steers an ε that
all its chains share, and is left out of the estimate: the counted chains see a kernel
sequence that does not depend on them, and the estimator is exact AIS, a stochastic lower
bound. With ``pilots=0`` each chain steers its own ε from its own acceptance (HAIS, and
this function before): measured on the linear-Gaussian model (three images, 1000
repetitions of 4 chains, 1000 distributions, 5 leapfrog steps, r = 0.02), the log of the
mean weight came out 0.04–0.05 nats above log Z and the mean 4-chain log Ẑ 0.005–0.019
(± 0.008) nats *above* log p(x) — no longer a lower bound — where a fixed ε or a pilot
gave a mean weight within 0.02 nats of Z and a mean log Ẑ 0.03–0.05 nats below.

Optionally (``momentum = α``) the momentum is refreshed only partly between transitions
and flipped on rejection (Horowitz 1991; used by HAIS): the chains move on (z, p) with
f_t(z) N(p; 0, I), the same Z, and short trajectories keep their direction.

The transition is fused: each chain carries log p₀, log γ and both gradients at its
current point, so the weight increment and the next distribution's starting value and
gradient (any β) are combinations of what the last leapfrog step already computed — one
value-and-gradient evaluation per leapfrog step and nothing else, and no read-back from
the device inside the loop. Everything is batched over chains and, for VAEs, images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vilab.estimators.loglik import delta_stderr
from vilab.samplers.hmc import hmc_step, log_prob_and_grad, metropolis

LogProb = Callable[[Tensor], Tensor]

#: Schedule shapes for :func:`schedule`.
SCHEDULES = ("sigmoid", "linear", "geometric")


def sigmoid_schedule(num_dists: int, rad: float = 4.0) -> Tensor:
    """β_0..β_T (T = ``num_dists``) on a sigmoid, denser at both ends (Grosse et al. 2015)."""
    if num_dists < 1:
        raise ValueError(f"num_dists must be ≥ 1, got {num_dists}")
    if num_dists == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.sigmoid(torch.linspace(-rad, rad, num_dists + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def schedule(num_dists: int, kind: str = "sigmoid", rad: float = 4.0) -> Tensor:
    """β_0..β_T of shape ``kind``: ``sigmoid`` (:func:`sigmoid_schedule` with ``rad``),
    ``linear``, or ``geometric`` (β_t = 10^{−rad (1 − t/T)} for t ≥ 1, denser near 0 —
    the path of Neal 2001 for a broad start; ``rad`` decades)."""
    if num_dists < 1:
        raise ValueError(f"num_dists must be ≥ 1, got {num_dists}")
    if kind == "sigmoid":
        return sigmoid_schedule(num_dists, rad)
    t = torch.linspace(0.0, 1.0, num_dists + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind == "geometric":
        b = 10.0 ** (-rad * (1.0 - t))
        b[0] = 0.0
        return b
    raise ValueError(f"schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class AISResult:
    """``log_z (*B)``: log of the mean weight over chains; ``stderr (*B)``: its delta-method
    Monte Carlo standard error; ``log_w (C, *B)``; ``accept_rate``: mean over
    transitions and chains; ``step_size (C, *B)``: the chains' final ε."""

    log_z: Tensor
    stderr: Tensor
    log_w: Tensor
    accept_rate: float
    num_dists: int
    step_size: Tensor | None = None


def _increment(b_prev: float, b: float, log_init: Tensor, log_target: Tensor) -> Tensor:
    """The log-weight's gain from f_{t−1} to f_t at the chain's point before it moves:
    log f_t − log f_{t−1} = (β_t − β_{t−1}) (log γ − log p₀), in float64."""
    return (b - b_prev) * (log_target - log_init).double()


def _values_and_grads(
    log_init: LogProb, log_target: LogProb, z: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(log p₀, log γ, ∇log p₀, ∇log γ)`` at ``z``: one forward and backward of each."""
    li, gi = log_prob_and_grad(log_init, z)
    lt, gt = log_prob_and_grad(log_target, z)
    return li, lt, gi, gt


def _fused_transition(
    log_init: LogProb,
    log_target: LogProb,
    state: tuple[Tensor, ...],
    beta: float,
    eps: Tensor,
    num_leapfrog: int,
    momentum: float = 0.0,
) -> tuple[tuple[Tensor, ...], Tensor]:
    """One HMC transition leaving f_β = (1 − β) log p₀ + β log γ invariant, from
    ``state = (z, log p₀(z), log γ(z), ∇log p₀(z), ∇log γ(z), p)``; returns the new
    state and the acceptance probabilities.

    With ``momentum = 0`` the same random draws, in the same order, and the same
    accept/reject rule as :func:`vilab.samplers.hmc.hmc_step` on f_β (identity mass, no
    jitter): p ~ N(0, I), L leapfrog steps, accept with min(1, exp(−ΔH)); a proposal
    whose density, gradient or energy is not finite is rejected. With ``momentum = α``
    the momentum is refreshed only partly, p ← α p + √(1 − α²) ξ, and a rejection flips
    it (Horowitz 1991; HAIS, Sohl-Dickstein & Culpepper 2012): each of the two steps
    leaves f_β(z) N(p; 0, I) invariant, so successive short trajectories keep going the
    same way instead of starting afresh."""
    z, li, lt, gi, gt, p_prev = state
    a = 1.0 - beta
    e = eps.unsqueeze(-1)
    xi = torch.randn_like(z)
    p0 = xi if not momentum else momentum * p_prev + math.sqrt(1.0 - momentum**2) * xi
    k0 = 0.5 * (p0 * p0).sum(-1)
    zq, p = z, p0 + 0.5 * e * (a * gi + beta * gt)
    for i in range(num_leapfrog):
        zq = zq + e * p
        li_q, lt_q, gi_q, gt_q = _values_and_grads(log_init, log_target, zq)
        g = a * gi_q + beta * gt_q
        p = p + (e if i < num_leapfrog - 1 else 0.5 * e) * g
    k1 = 0.5 * (p * p).sum(-1)
    prob, acc = metropolis((a * li_q + beta * lt_q - k1) - (a * li + beta * lt - k0), zq, g)
    keep = acc.unsqueeze(-1)
    new = (
        torch.where(keep, zq, z),
        torch.where(acc, li_q, li),
        torch.where(acc, lt_q, lt),
        torch.where(keep, gi_q, gi),
        torch.where(keep, gt_q, gt),
        torch.where(keep, p, -p0) if momentum else p_prev,
    )
    return new, prob


@torch.no_grad()
def _check(
    num_chains: int,
    num_leapfrog: int,
    step_size: float | Tensor,
    adapt_rate: float,
    fused: bool,
    pilots: int,
    momentum: float,
) -> None:
    """One-line errors for the settings of :func:`ais` outside what it accepts."""
    if num_chains < 1:
        raise ValueError(f"num_chains must be ≥ 1, got {num_chains}")
    if num_leapfrog < 1:
        raise ValueError(f"num_leapfrog must be ≥ 1, got {num_leapfrog}")
    if not 0.0 <= adapt_rate < 1.0:
        raise ValueError(f"adapt_rate must be in [0, 1), got {adapt_rate}")
    if not isinstance(step_size, Tensor) and not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if momentum and not fused:
        raise ValueError("momentum needs the fused transition")
    if pilots < 0:
        raise ValueError(f"pilots must be ≥ 0, got {pilots}")


def ais(
    log_init: LogProb,
    sample_init: Callable[[int], Tensor],
    log_target: LogProb,
    num_chains: int,
    num_dists: int = 500,
    num_leapfrog: int = 5,
    step_size: float | Tensor = 0.1,
    target_accept: float = 0.65,
    schedule: Tensor | None = None,
    adapt_rate: float = 0.02,
    fused: bool = True,
    pilots: int = 1,
    momentum: float = 0.0,
) -> AISResult:
    """Annealed importance sampling of Z = ∫ γ(z) dz.

    Args:
        log_init: log p₀, normalized, ``(C, *B, D) -> (C, *B)``.
        sample_init: ``C -> z (C, *B, D)``, draws from p₀.
        log_target: log γ, ``(C, *B, D) -> (C, *B)``.
        num_chains: C, independent chains per batch element.
        num_dists: T, the number of intermediate distributions (when ``schedule`` is
            not given).
        num_leapfrog: leapfrog steps per HMC transition.
        step_size: initial ε, a float or a tensor broadcastable to ``(*B)`` (with
            ``pilots=0``: to ``(C, *B)``).
        target_accept: acceptance rate the step sizes are steered to.
        schedule: β_0..β_T (default: :func:`sigmoid_schedule` of ``num_dists``).
        adapt_rate: r of the step-size rule (0: ε fixed).
        pilots: P extra chains per batch element that steer the step size and are then
            left out of the estimate: every chain of the element moves with the same ε,
            adapted from the pilots' mean acceptance probability, so the C counted chains
            see a kernel sequence independent of themselves and Ẑ stays exactly unbiased.
            ``0``: each chain adapts its own ε from its own acceptance (HAIS, and this
            function before) — measured biased upward (module docstring).
        momentum: α of the partial momentum refreshment (0: a fresh momentum every
            transition, as :func:`vilab.samplers.hmc.hmc_step`); the chains then move on
            (z, p) with p₀(z) N(p; 0, I) → γ(z) N(p; 0, I), the same Z.
        fused: the fused transition (default); ``False``: the previous loop — log p₀ and
            log γ evaluated again for the weight, then f_t's value and gradient again,
            then :func:`vilab.samplers.hmc.hmc_step` (the same chains from the same random
            numbers up to rounding, at about (L + 1.5)/L the cost; kept for comparison).
    """
    _check(num_chains, num_leapfrog, step_size, adapt_rate, fused, pilots, momentum)
    betas = sigmoid_schedule(num_dists) if schedule is None else schedule.double()
    if len(betas) < 2 or betas[0] != 0 or betas[-1] != 1 or (betas[1:] < betas[:-1]).any():
        raise ValueError("schedule must rise from β₀ = 0 to β_T = 1")
    pilots = pilots if adapt_rate else 0  # a fixed ε needs no steering
    z = sample_init(num_chains + pilots)
    eps = torch.as_tensor(step_size, dtype=z.dtype, device=z.device)
    eps = eps.expand((1, *z.shape[1:-1]) if pilots else z.shape[:-1]).clone()
    up, down = 1.0 + adapt_rate, 1.0 - adapt_rate
    log_w = torch.zeros(z.shape[:-1], dtype=torch.float64, device=z.device)
    accept_sum = torch.zeros((), dtype=torch.float64, device=z.device)  # no read per step
    bs = betas.tolist()
    if fused:
        p = torch.randn_like(z) if momentum else torch.zeros_like(z)
        state = (z, *_values_and_grads(log_init, log_target, z), p)
    else:
        li, lt = log_init(z), log_target(z)
    for b_prev, b in zip(bs[:-1], bs[1:]):
        if fused:
            log_w += _increment(b_prev, b, state[1], state[2])
            state, prob = _fused_transition(
                log_init, log_target, state, b, eps, num_leapfrog, momentum
            )
        else:
            log_w += _increment(b_prev, b, li, lt)

            def f_t(v: Tensor, b: float = b) -> Tensor:
                return (1.0 - b) * log_init(v) + b * log_target(v)

            current = log_prob_and_grad(f_t, z)
            z, _, _, prob, _ = hmc_step(f_t, z, eps, num_leapfrog, None, current)
            li, lt = log_init(z), log_target(z)
        if adapt_rate:
            steer = prob[:pilots].mean(0, keepdim=True) if pilots else prob
            eps = eps * torch.where(steer > target_accept, up, down)
        accept_sum += prob[pilots:].double().mean()
    log_w = log_w[pilots:]
    lse = torch.logsumexp(log_w, 0)
    log_z = lse - math.log(num_chains)
    stderr = delta_stderr(lse, torch.logsumexp(2 * log_w, 0), num_chains)
    if num_chains == 1:  # one chain carries no estimate of its own spread
        stderr = torch.full_like(stderr, math.nan)
    accept = float(accept_sum) / (len(bs) - 1)
    return AISResult(log_z, stderr, log_w, accept, len(bs) - 1, eps.expand(log_w.shape))
