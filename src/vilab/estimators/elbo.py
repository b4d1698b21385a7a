"""Bounds as functions of log-weights, reduced over the sample dimension 0.

    ELBO   = E_q[log w],                      log w = log p(x, z) − log q(z | x)
    IWAE_K = E[log (1/K) Σ_k w_k]  ≥ ELBO      (Burda et al. 2016)

The same functions serve a 2-D target (log_w of shape (S,)) and a VAE ((S, B)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def elbo(log_w: Tensor) -> Tensor:
    """Monte Carlo ELBO: the mean of ``log_w`` over dim 0. ``(S, *B) -> (*B)``."""
    return log_w.mean(0)


def iwae(log_w: Tensor) -> Tensor:
    """IWAE bound with K = S: ``log mean_k exp(log_w_k)`` over dim 0. ``(S, *B) -> (*B)``."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def annealed_elbo_surrogate(log_p: Tensor, log_q: Tensor, beta: float = 1.0) -> Tensor:
    """Surrogate whose gradient is that of E_q[β log p̃(z) − log q(z)] (Rezende & Mohamed
    2015, §6.1 β-annealing); equals the ELBO at β = 1. ``(S, *B) -> (*B)``."""
    return (beta * log_p - log_q).mean(0)
