"""Importance-sampled log q(z) of a semi-implicit family, with its standard error, its
sizing and the record of what evaluation's estimates came to (Titsias & Ruiz 2019; Yin &
Zhou 2018 for the upper bound).

For q(z) = E_{ε ~ N(0, I)} [w(ε)], w(ε) = N(z; μ(ε), diag σ²), the estimate from K prior
draws is

    log q̂(z) = log (1/K) Σ_k w_k,   s.e. ≈ √((K Σw² / (Σw)² − 1)/(K − 1)) = sd(w)/(mean(w) √K)

(the delta method, from the same draws). :func:`importance_sums` gathers log Σ w (and
log Σ w²) chunk by chunk, ``(S[, B])`` for S samples z, doubling K until the root mean
square of the per-sample standard errors is at most a target, or a cap is reached.
:class:`LogQRecord` keeps running totals of evaluation's estimates on their device, and
:func:`log_q_note` says in words how a KL bracket's log q was estimated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vilab.families.gaussian import LOG_2PI


@dataclass(frozen=True)
class LogQEstimate:
    """:meth:`~vilab.families.semi_implicit.SemiImplicit.log_q_estimate`: the ``lower``
    (plain importance-sampled) and ``upper`` (SIVI, None without the generating ε)
    estimates of log q(z) ``(S[, B])``, the ``stderr`` of each lower estimate (NaN where
    not computed), and the number K of prior draws of ε used (``draws``)."""

    lower: Tensor
    upper: Tensor | None
    stderr: Tensor
    draws: int


def gaussian_log_prob(z: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """log N(z; μ, diag σ²) over the last dimension: ``z``, ``mu`` broadcast, ``(..., D)``,
    σ ``(D,)`` -> ``(...)``."""
    r = (z - mu) / sigma
    return -0.5 * (r * r).sum(-1) - sigma.log().sum() - 0.5 * z.shape[-1] * LOG_2PI


def bank_log_prob(z: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """log w = log N(z_s; μ_k, diag σ²) for every sample ``z (S, [B,] D)`` and draw
    ``mu (m, [B,] D)``: ``(m, S[, B])``. For a small D one coordinate at a time (a sum
    over a last dimension of 2 is several times slower than adding two planes)."""
    dim = z.shape[-1]
    if dim > 8:
        return gaussian_log_prob(z.unsqueeze(0), mu.unsqueeze(1), sigma)
    total = None
    for d in range(dim):
        r = (z[..., d].unsqueeze(0) - mu[..., d].unsqueeze(1)) / sigma[d]
        total = r * r if total is None else total + r * r
    assert total is not None
    return -0.5 * total - sigma.log().sum() - 0.5 * dim * LOG_2PI


def importance_sums(
    log_weights: Callable[[int], Tensor],
    k: int,
    sizing: tuple[float, int] | None,
    chunk: int,
    with_stderr: bool,
) -> tuple[Tensor, Tensor | None, int]:
    """``(log Σ_k w_k, its delta-method s.e. of log((1/K) Σ w) or None, K)``.

    Args:
        log_weights: ``m -> log w (m, S[, B])`` for m fresh prior draws of ε.
        k: draws to start from (all of them when ``sizing`` is None).
        sizing: ``(target s.e. in nats, cap on K)``: K doubles until the root mean square
            of the per-sample standard errors is at most the target (one read-back per
            doubling) or K reaches the cap; None: K fixed.
        chunk: draws scored at once.
        with_stderr: also gather log Σ w² for the standard error (needed when sizing).
    """
    parts, squares = [], []  # per chunk: log Σ w and log Σ w² over its draws
    drawn, want = 0, k
    while True:
        for m in chunks(want - drawn, chunk):
            log_w = log_weights(m)  # (m, S[, B])
            parts.append(torch.logsumexp(log_w, 0))
            if with_stderr:
                squares.append(torch.logsumexp(2.0 * log_w, 0))
        drawn = want
        lse = torch.logsumexp(torch.stack(parts), 0)  # (S[, B])
        se = None
        if with_stderr:
            lse2 = torch.logsumexp(torch.stack(squares), 0)
            se = delta_stderr(lse, lse2, drawn)
        if sizing is None or drawn >= sizing[1]:
            break
        assert se is not None
        if float(rms(se)) <= sizing[0]:  # one read-back per doubling
            break
        want = min(2 * drawn, sizing[1])
    return lse, se, drawn


def chunks(total: int, size: int) -> list[int]:
    """``total`` split into pieces of at most ``size``."""
    return [min(size, total - i) for i in range(0, total, size)]


def delta_stderr(log_sum: Tensor, log_sum_sq: Tensor, k: int) -> Tensor:
    """The delta-method standard error of log((1/K) Σ w) from log Σ w and log Σ w²
    (same shape), inf for K < 2."""
    if k < 2:
        return torch.full_like(log_sum, math.inf)
    ratio = torch.exp(math.log(k) + log_sum_sq - 2.0 * log_sum)  # K Σw² / (Σw)² ≥ 1
    return ((ratio - 1.0).clamp(min=0.0) / (k - 1)).sqrt()


def rms(se: Tensor) -> Tensor:
    """Root mean square of the finite standard errors (NaN where none is), a 0-d tensor."""
    sq = se * se
    return torch.nanmean(torch.where(torch.isfinite(sq), sq, torch.full_like(sq, math.nan))).sqrt()


class LogQRecord:
    """Running totals of the evaluation estimates of log q(z) (on their device until
    :meth:`summary` reads them)."""

    def __init__(self) -> None:
        self.sq_sum: Tensor | None = None
        self.count = 0
        self.draws: list[int] = []

    def add(self, est: LogQEstimate) -> None:
        sq = est.stderr.detach()
        total = (sq * sq).sum()
        self.sq_sum = total if self.sq_sum is None else self.sq_sum + total
        self.count += sq.numel()  # (the number of samples scored)
        self.draws = [min([est.draws, *self.draws]), max([est.draws, *self.draws])]

    def summary(self, target: float | None) -> dict[str, float | int | None]:
        """``log_q_stderr`` (rms of the per-sample s.e.), ``log_q_draws`` and
        ``log_q_draws_min`` (the largest and smallest K), ``log_q_stderr_target``
        (``target``), ``log_q_estimates`` (samples scored); None where nothing was."""
        rms_se = None if self.sq_sum is None else math.sqrt(float(self.sq_sum) / self.count)
        return {
            "log_q_stderr": rms_se,
            "log_q_draws": self.draws[1] if self.draws else None,
            "log_q_draws_min": self.draws[0] if self.draws else None,
            "log_q_stderr_target": target,
            "log_q_estimates": self.count,
        }


def log_q_note(summary: dict[str, float | int | None], default_k: int) -> str:
    """How a KL bracket's log q(z) was estimated, in words, from a :meth:`LogQRecord.summary`
    (``default_k``: the K named when nothing was recorded)."""
    if summary["log_q_estimates"]:
        k_min, k_max = summary["log_q_draws_min"], summary["log_q_draws"]
        draws = f"K={k_max}" if k_min == k_max else f"K={k_min} to {k_max}"
        target = summary["log_q_stderr_target"]
        sized = f" (sized to s.e. ≤ {target:g})" if target is not None else ""
        se = f"; the per-sample s.e. of log q is {summary['log_q_stderr']:.3g} (rms)"
    else:
        draws, sized, se = f"K={default_k}", "", ""
    return (
        f"semi-implicit q: log q(z) estimated by importance sampling over ε with "
        f"{draws} prior draws{sized}{se}; kl uses the upper (SIVI) estimate "
        "that adds the generating ε, kl_lower the plain one; the true KL lies "
        "between them in expectation"
    )
