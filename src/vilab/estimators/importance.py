"""Importance-sampling diagnostics: functions of the log-weights of S draws from q.

With z_s ~ q and log w_s = log p̃(z_s) − log q(z_s), s = 1, …, S:

    log Ẑ = log (1/S) Σ_s w_s                       (importance-sampled log Z)
    se(log Ẑ) = sqrt((mean(w²)/mean(w)² − 1) / S)   (delta method)
    ELBO = (1/S) Σ_s log w_s,   KL̂(q‖p) = log Ẑ − ELBO
    ESS = 1 / Σ_s w̃_s²,  w̃ the self-normalized (Pareto-smoothed) weights

**Pareto k̂** (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto smoothed importance
sampling", JMLR 25, 2024): a generalized Pareto distribution is fitted to the largest
M = min(S/5, 3√S) weights; its shape k̂ estimates how heavy the weights' tail is, i.e.
how many moments of w exist (1/k̂). Yao, Vehtari, Simpson & Gelman ("Yes, but did it
work?", ICML 2018) read it as a diagnostic of the variational fit:

* k̂ < 0.5: the weights have finite variance; q covers p and importance-sampled
  estimates converge at the usual rate;
* 0.5 ≤ k̂ < 0.7: finite mean, infinite variance; PSIS-corrected estimates are still
  usable but converge more slowly;
* k̂ ≥ 0.7: q misses mass of p; importance-sampled estimates (log Ẑ, KL̂, corrected
  moments) cannot be trusted however many draws are taken.

The Pareto fit and the smoothing are arviz-stats' (``arviz_stats.base.array_stats.
psislw``, the Zhang & Stephens 2009 estimator with a weakly informative prior), run on the
CPU in float64. Note that arviz-stats follows the leave-one-out convention and takes
log-*likelihoods*, whose negatives are the log-weights; :func:`psis` hides that.

Shapes: ``log_w`` is ``(..., S)``; every statistic is ``(...)`` (one per leading index,
e.g. per image of a VAE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

#: k̂ thresholds of Vehtari et al. (2024) and Yao et al. (2018).
KHAT_GOOD, KHAT_OK = 0.5, 0.7


def _check(log_w: Tensor) -> Tensor:
    if not isinstance(log_w, Tensor) or log_w.dim() < 1:
        raise ValueError("log_w must be a tensor of shape (..., S) with S ≥ 1 draws")
    if log_w.shape[-1] < 2:
        raise ValueError(
            f"log_w needs at least 2 draws on its last axis, got shape {tuple(log_w.shape)}"
        )
    if torch.isnan(log_w).any() or torch.isposinf(log_w).any():
        raise ValueError("log_w contains NaN or +inf: a log-weight must be a number or −inf")
    return log_w.detach()


#: Log-weights closer than this (nats) count as equal where the Pareto fit fails on them.
EQUAL_NATS = 1e-6


def psis(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Pareto-smoothed, self-normalized log-weights and the Pareto shape k̂.

    Args:
        log_w: ``(..., S)`` log importance weights (independent draws, r_eff = 1).

    Returns:
        ``(log_w̃, k̂)``: ``(..., S)`` smoothed log-weights with Σ_s w̃_s = 1 along the last
        axis (float64, on ``log_w``'s device), and ``(...)`` k̂. With fewer than ~40 draws
        the tail is too short to fit and k̂ is +inf, as in arviz-stats; so it is where the
        tail's weights underflow beside the largest (then the weights are only normalized).
    """
    from arviz_stats.base import array_stats

    log_w = _check(log_w)
    arr = log_w.cpu().double().numpy().reshape(-1, log_w.shape[-1])
    smoothed, khat = np.empty_like(arr), np.empty(arr.shape[0])
    for i, row in enumerate(arr):
        smoothed[i], khat[i] = _psis_row(row, array_stats)
    out = torch.as_tensor(smoothed).reshape(log_w.shape).to(log_w.device)
    return out, torch.as_tensor(khat).reshape(log_w.shape[:-1]).to(log_w.device)


def _psis_row(lw: np.ndarray, array_stats: object) -> tuple[np.ndarray, float]:
    """One row: draws with zero weight (log w = −inf) keep it; a tail of equal weights
    (nothing to fit: the weights are bounded; equal to within :data:`EQUAL_NATS` where
    the fit fails on rounding) gives k̂ = −inf and plain normalization.
    A tail whose weights underflow beside the largest (log-weights hundreds of nats apart:
    exp(log w − max) is 0 in float64, and the Pareto fit on those zeros returns NaN
    weights) cannot be fitted either: k̂ = +inf, read as unreliable, and the plain
    normalized weights."""
    finite = np.isfinite(lw)
    out = np.full_like(lw, -np.inf)
    sub = lw[finite]
    plain = sub - np.logaddexp.reduce(sub) if len(sub) else sub
    try:
        # arviz-stats takes log-likelihoods: the weights are exp(−ary).
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            smoothed, khat = array_stats.psislw(-sub, r_eff=1.0)  # type: ignore[attr-defined]
    except ValueError as err:
        if "same" not in str(err):
            raise
        smoothed, khat = plain, -np.inf
    if np.isnan(smoothed).any():  # a degenerate tail: equal to rounding, or underflowed
        smoothed, khat = plain, (-np.inf if np.ptp(sub) < EQUAL_NATS else np.inf)
    out[finite] = smoothed
    return out, float(khat)


def pareto_khat(log_w: Tensor) -> Tensor:
    """k̂ of the importance weights ``(..., S) -> (...)`` (see :func:`psis`)."""
    return psis(log_w)[1]


def khat_reading(khat: float) -> str:
    """What a k̂ says about the fit, by the thresholds 0.5 and 0.7 of Vehtari et al."""
    if not math.isfinite(khat) and khat > 0:
        return (
            "unreliable: the tail of the weights could not be fitted (too few draws, or "
            "weights so uneven that all but a few are 0 beside the largest)"
        )
    if khat < KHAT_GOOD:
        return "good (k̂ < 0.5): q covers p; importance-sampled estimates are reliable"
    if khat < KHAT_OK:
        return (
            "ok (0.5 ≤ k̂ < 0.7): weights have infinite variance; "
            "PSIS-corrected estimates usable but slow to converge"
        )
    return (
        "unreliable (k̂ ≥ 0.7): q misses mass of p; importance-sampled log Z, KL and "
        "corrected moments cannot be trusted"
    )


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Kish's effective sample size of self-normalized weights ``(..., S) -> (...)``:
    ESS = (Σ w)² / Σ w² = exp(2 logsumexp(log w) − logsumexp(2 log w))."""
    lw = _check(log_w).double()
    return torch.exp(2.0 * torch.logsumexp(lw, -1) - torch.logsumexp(2.0 * lw, -1))


def log_mean_exp_stderr(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """log Ẑ = log mean exp(log w) and its delta-method standard error ``(...)`` each."""
    lw = _check(log_w).double()
    s = lw.shape[-1]
    a, b = torch.logsumexp(lw, -1), torch.logsumexp(2.0 * lw, -1)
    rel_var = torch.expm1((b - 2.0 * a + math.log(s)).clamp_min(0.0))
    return a - math.log(s), torch.sqrt(rel_var / s)


def kl_estimate(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """KL̂(q‖p) = log Ẑ − ELBO from the same draws, and its delta-method standard error.

    The linearization of log mean(w) − mean(log w) around the means has influence
    d_s = w_s / mean(w) − log w_s, so se = sd(d) / √S. The estimate inherits log Ẑ's
    downward bias (E[log Ẑ] ≤ log Z): it is a lower estimate of the KL.
    """
    lw = _check(log_w).double()
    s = lw.shape[-1]
    log_z, _ = log_mean_exp_stderr(lw)
    kl = log_z - lw.mean(-1)
    d = torch.exp(lw - log_z.unsqueeze(-1) - math.log(s)) * s - lw
    return kl, d.std(-1) / math.sqrt(s)


def weighted_moments(z: Tensor, log_w_normalized: Tensor) -> tuple[Tensor, Tensor]:
    """Self-normalized importance-weighted mean and standard deviation of ``z``.

    Args:
        z: ``(S, D)`` draws.
        log_w_normalized: ``(S,)`` log-weights summing (in exp) to one, e.g. from :func:`psis`.

    Returns:
        ``(mean, sd)``, ``(D,)`` each, float64: μ = Σ w̃ z, σ² = Σ w̃ (z − μ)².
    """
    if z.dim() != 2 or log_w_normalized.shape != z.shape[:1]:
        raise ValueError(
            f"z must be (S, D) and the weights (S,), got {tuple(z.shape)} and "
            f"{tuple(log_w_normalized.shape)}"
        )
    w = log_w_normalized.double().exp().unsqueeze(-1)
    zd = z.detach().double()
    mean = (w * zd).sum(0)
    var = (w * (zd - mean) ** 2).sum(0)
    return mean, var.clamp_min(0.0).sqrt()


@dataclass(frozen=True)
class ImportanceSummary:
    """The importance-sampling figures of one set of draws (floats, nats), and the
    Pareto-smoothed self-normalized log-weights ``(S,)`` they came from, for corrected
    expectations (:func:`weighted_moments`)."""

    samples: int
    elbo: float
    elbo_stderr: float
    log_z: float
    log_z_stderr: float
    kl: float
    kl_stderr: float
    khat: float
    ess: float
    ess_psis: float
    log_w_smoothed: Tensor = field(repr=False, compare=False)

    @property
    def reading(self) -> str:
        return khat_reading(self.khat)


def summarize(log_w: Tensor) -> ImportanceSummary:
    """Every figure of :class:`ImportanceSummary` from ``(S,)`` log-weights."""
    lw = _check(log_w).double()
    if lw.dim() != 1:
        raise ValueError(f"summarize takes one set of draws, shape (S,), got {tuple(lw.shape)}")
    finite = torch.isfinite(lw)
    if not finite.any():
        raise ValueError("every log-weight is −inf: q puts no mass where p has any")
    s = lw.numel()
    log_z, log_z_se = log_mean_exp_stderr(lw)
    kl, kl_se = kl_estimate(lw) if finite.all() else (torch.tensor(math.inf),) * 2
    smoothed, khat = psis(lw)
    return ImportanceSummary(
        samples=s,
        elbo=float(lw.mean()),
        elbo_stderr=float(lw.std() / math.sqrt(s)),
        log_z=float(log_z),
        log_z_stderr=float(log_z_se),
        kl=float(kl),
        kl_stderr=float(kl_se),
        khat=float(khat),
        ess=float(effective_sample_size(lw)),
        ess_psis=float(1.0 / smoothed.exp().pow(2).sum()),
        log_w_smoothed=smoothed,
    )
