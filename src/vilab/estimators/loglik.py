"""Importance-sampled log p(x) with a streaming log-sum-exp and its standard error.

    log p̂(x) = log (1/K) Σ_k w_k,   w_k = p(x, z_k) / q(z_k | x),   z_k ~ q(· | x)

(the IWAE_K bound, Burda et al. 2016; a consistent estimate of log p(x) as K → ∞). The K
samples are drawn ``chunk`` at a time for a whole batch of images at once, and the sums
Σ w and Σ w² are carried as log-sum-exps, so memory is bounded by the chunk and no Python
loop runs over images. The Monte Carlo standard error of log p̂(x) is, by the delta
method,

    se = sqrt( (mean(w²) / mean(w)² − 1) / K ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vilab.estimators.elbo import iwae as iwae_bound


@dataclass(frozen=True)
class ISEstimate:
    """Per-image importance-sampled log p(x) ``(B,)`` and its Monte Carlo standard error;
    from the same samples, the ELBO (mean of log w) and IWAE_k for ``k = iwae_k`` (mean of
    log-mean-exp over disjoint blocks of k samples of the first chunk), ``(B,)`` each."""

    log_px: Tensor
    stderr: Tensor
    num_samples: int
    elbo: Tensor | None = None
    iwae: Tensor | None = None
    iwae_k: int | None = None


@torch.no_grad()
def importance_log_likelihood(
    log_weights: Callable[[int], Tensor],
    num_samples: int,
    chunk: int = 1000,
    iwae_k: int | None = None,
) -> ISEstimate:
    """Streaming importance-sampling estimate of log p(x) for a batch of images.

    Args:
        log_weights: ``k -> log w`` of shape ``(k, B)``: k fresh samples of
            ``log p(x, z) − log q(z | x)`` for each of the B images.
        num_samples: K, the total number of importance samples per image.
        chunk: samples drawn per call (bounds memory at ``chunk × B`` weights).
        iwae_k: also estimate IWAE_k from the first chunk (needs k ≤ chunk, K).
    """
    if num_samples < 1 or chunk < 1:
        raise ValueError(f"num_samples and chunk must be ≥ 1, got {num_samples}, {chunk}")
    if iwae_k is not None and not 1 <= iwae_k <= min(chunk, num_samples):
        raise ValueError(f"iwae_k must be in [1, min(chunk, num_samples)], got {iwae_k}")
    lse_w = lse_w2 = sum_w = iwae = None
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        log_w = log_weights(k).double()
        if log_w.dim() != 2 or log_w.shape[0] != k:
            raise ValueError(
                f"log_weights({k}) must return shape ({k}, B), got {tuple(log_w.shape)}"
            )
        if iwae is None and iwae_k is not None:
            blocks = log_w[: (k // iwae_k) * iwae_k].unflatten(0, (-1, iwae_k))
            iwae = iwae_bound(blocks.movedim(1, 0)).mean(0)
        a, b = torch.logsumexp(log_w, 0), torch.logsumexp(2.0 * log_w, 0)
        lse_w = a if lse_w is None else torch.logaddexp(lse_w, a)
        lse_w2 = b if lse_w2 is None else torch.logaddexp(lse_w2, b)
        sum_w = log_w.sum(0) if sum_w is None else sum_w + log_w.sum(0)
        done += k
    assert lse_w is not None and lse_w2 is not None and sum_w is not None
    log_px = lse_w - math.log(num_samples)
    stderr = delta_stderr(lse_w, lse_w2, num_samples)
    return ISEstimate(log_px, stderr, num_samples, sum_w / num_samples, iwae, iwae_k)


def delta_stderr(lse_w: Tensor, lse_w2: Tensor, n: int) -> Tensor:
    """Standard error of log((1/n) Σ w) from ``logsumexp(log w)`` and
    ``logsumexp(2 log w)``: sqrt((mean(w²)/mean(w)² − 1)/n), with
    mean(w²)/mean(w)² = n Σw² / (Σw)²."""
    rel_var = torch.expm1((lse_w2 - 2.0 * lse_w + math.log(n)).clamp_min(0.0))
    return torch.sqrt(rel_var / n)


def mean_with_stderr(values: Tensor, mc_stderr: Tensor | None = None) -> tuple[float, float]:
    """Mean over images and the standard error of that mean from the per-image Monte
    Carlo errors (independent across images): ``sqrt(Σ se_i²) / N``."""
    n = values.numel()
    mean = float(values.double().mean())
    if mc_stderr is None:
        return mean, float(values.double().std() / math.sqrt(n)) if n > 1 else 0.0
    return mean, float(mc_stderr.double().pow(2).sum().sqrt() / n)
