"""The exact gap left by the ELBO, given the target's exact log Z.

With z_s ~ q, s = 1, …, n, and log Z known (in 2-D by quadrature,
:func:`vilab.targets.grid.grid_log_z`; in closed form for a Gaussian target):

    KL(q‖p) = E_q[log q(z) − log p̃(z)] + log Z ≥ 0,
    KL̂ = log Z + (1/n) Σ_s g_s,   se = std(g) / √n,   g_s = log q(z_s) − log p̃(z_s),

so KL̂ = log Z − ELBÔ (Blei, Kucukelbir & McAuliffe, "Variational inference: a review
for statisticians", JASA 2017, §2.2). This module sits above families and targets: it
is the one place that scores a family's samples under a target with a known normaliser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vilab.families.base import Family
from vilab.targets.base import Target


@dataclass(frozen=True)
class KLEstimate:
    """Exact KL(q‖p) = log Z − ELBO, with its Monte Carlo standard error (nats)."""

    kl: float
    kl_stderr: float
    elbo: float
    log_z: float
    samples: int


@torch.no_grad()
def exact_kl(
    family: Family,
    target: Target,
    log_z: float,
    n: int = 100_000,
    chunk: int = 50_000,
    context: Tensor | None = None,
) -> KLEstimate:
    """KL(q‖p) from n samples of q and the exact log Z.

    The samples are drawn ``chunk`` at a time (``family.rsample_and_log_prob(m, context)``,
    z ``(m, [1,] D)``, log q ``(m[, 1])``); the gaps log q − log p̃ are gathered flat in
    float64, ``(n,)``, and reduced once.

    Args:
        family: q; with a context ``(1, C)`` the conditional q(z | c) is measured.
        target: p̃ (with the same context when given).
        log_z: log Z of the target (at that context).
        n: number of samples of q (≥ 100,000 for the reported figure).
        chunk: samples drawn at once.

    Returns:
        A :class:`KLEstimate` (KL̂, its standard error, ELBÔ = −mean gap, log Z, n).

    Raises:
        ValueError: ``n < 2`` (no standard error).
        FloatingPointError: a non-finite gap (q puts mass where p̃ is −inf, or overflow).
    """
    if n < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {n}")
    gaps = []
    remaining = n
    while remaining > 0:
        m = min(chunk, remaining)
        z, log_q = family.rsample_and_log_prob(m, context)
        gaps.append((log_q - target.log_prob(z, context)).reshape(-1).double())
        remaining -= m
    gap = torch.cat(gaps)
    if not torch.isfinite(gap).all():
        bad = int((~torch.isfinite(gap)).sum())
        raise FloatingPointError(f"{bad} of {n} samples of q have a non-finite log q − log p")
    mean = float(gap.mean())
    stderr = float(gap.std() / math.sqrt(n))
    return KLEstimate(mean + log_z, stderr, -mean, log_z, n)
