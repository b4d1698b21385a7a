"""Bounds as functions of log-weights, reduced over the sample dimension 0.

    ELBO   = E_q[log w],                      log w = log p(x, z) − log q(z | x)
    IWAE_K = E[log (1/K) Σ_k w_k]  ≥ ELBO      (Burda et al. 2016)

The same functions serve a 2-D target (log_w of shape (S,)) and a VAE ((S, B)).
:func:`iwae` is the one log-mean-exp over samples; :func:`beta_at` is the one annealing
schedule, for fits (β on log p̃) and VAEs (β on the KL term).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def elbo(log_w: Tensor, keep: Tensor | None = None) -> Tensor:
    """Monte Carlo ELBO: the mean of ``log_w`` over dim 0 (over the draws ``keep`` marks,
    see :func:`kept_mean`). ``(S, *B) -> (*B)``."""
    return kept_mean(log_w, keep)


def kept_mean(x: Tensor, keep: Tensor | None = None) -> Tensor:
    """The mean over dim 0 of the entries ``keep`` (bool, x's shape) marks,
    Σ_s keep_s x_s / Σ_s keep_s (NaN where none is kept); the plain mean without ``keep``.
    The others may be ±inf: they receive no gradient. ``(S, *B) -> (*B)``."""
    if keep is None:
        return x.mean(0)
    return torch.where(keep, x, torch.zeros_like(x)).sum(0) / keep.sum(0)


def iwae(log_w: Tensor) -> Tensor:
    """IWAE bound with K = S: ``log mean_k exp(log_w_k)`` over dim 0. ``(S, *B) -> (*B)``."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def annealed_elbo_surrogate(
    log_p: Tensor, log_q: Tensor, beta: float = 1.0, keep: Tensor | None = None
) -> Tensor:
    """Surrogate whose gradient is that of E_q[β log p̃(z) − log q(z)] (Rezende & Mohamed
    2015, §6.1 β-annealing); equals the ELBO at β = 1; over the draws ``keep`` marks where
    given (:func:`kept_mean`). ``(S, *B) -> (*B)``."""
    return kept_mean(beta * log_p - log_q, keep)


def beta_at(
    step: int,
    *,
    beta_start: float,
    beta_steps: int | None,
    total_steps: int | None = None,
    frac: float | None = None,
) -> float:
    """The annealing weight β_t = min(1, β₀ + t / T) (Rezende & Mohamed 2015, §6.1; as KL
    warm-up, Sønderby et al. 2016).

    Args:
        step: optimizer steps done; t = ``step`` unless ``frac`` is given.
        beta_start: β₀ ∈ [0, 1].
        beta_steps: T; None for 40% of ``total_steps``; 0 turns annealing off (β = 1).
        total_steps: the run's length in steps (needed with ``frac`` or ``beta_steps=None``).
        frac: the run's progress in [0, 1] (:func:`vilab.train.schedule.progress`); then
            t = frac · total_steps, so a ``max_seconds`` budget completes the schedule.

    Raises:
        ValueError: ``total_steps`` is missing where it is needed.
    """
    if (frac is not None or beta_steps is None) and total_steps is None:
        raise ValueError(
            f"beta_at needs total_steps with frac={frac!r} or beta_steps={beta_steps!r}"
        )
    T = 0.4 * total_steps if beta_steps is None else beta_steps  # noqa: N806
    if T == 0:
        return 1.0
    t = step if frac is None else frac * total_steps  # type: ignore[operator]
    return min(1.0, beta_start + t / T)
