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

from vilab.estimators.sizing import Sizing, run_sized
from vilab.families.base import Family
from vilab.targets.base import Target

#: The sized exact KL's defaults: target standard error (nats) and relative to the KL
#: (the larger is the target), pilot (the floor), cap.
KL_STDERR, KL_REL_STDERR, KL_MIN_SAMPLES, KL_MAX_SAMPLES = 1e-3, 0.01, 10_000, 1_000_000
KL_SIZING = Sizing(KL_STDERR, KL_MIN_SAMPLES, KL_MAX_SAMPLES, rel_stderr=KL_REL_STDERR)


@dataclass(frozen=True)
class KLEstimate:
    """Exact KL(q‖p) = log Z − ELBO, with its Monte Carlo standard error (nats), from
    ``samples`` draws; ``stderr_target`` is the standard error asked for (None: a fixed
    count), ``capped`` says the cap was reached above it, ``note`` why it stopped short."""

    kl: float
    kl_stderr: float
    elbo: float
    log_z: float
    samples: int
    stderr_target: float | None = None
    capped: bool = False
    note: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """``KL 0.00207 ± 0.00009 (s.e., 12,000 draws)``."""
        return f"KL {pm(self.kl, self.kl_stderr)} (s.e., {self.samples:,} draws)"


def pm(value: float, stderr: float) -> str:
    """``value ± stderr`` to the decimal of the standard error's first significant digit
    (at least one decimal, at most 12)."""
    if not (math.isfinite(stderr) and stderr > 0):
        return f"{value:.6g} ± {stderr:.2g}"
    digits = min(12, max(1, -math.floor(math.log10(stderr))))
    return f"{value:.{digits}f} ± {stderr:.{digits}f}"


@torch.no_grad()
def exact_kl(
    family: Family,
    target: Target,
    log_z: float,
    n: int | None = None,
    chunk: int = 50_000,
    context: Tensor | None = None,
    *,
    sizing: Sizing | None = None,
    what: str | None = None,
) -> KLEstimate:
    """KL(q‖p) from draws of q and the exact log Z.

    The samples are drawn ``chunk`` at a time (``family.rsample_and_log_prob(m, context)``,
    z ``(m, [1,] D)``, log q ``(m[, 1])``); the gaps log q − log p̃ are gathered flat in
    float64 and reduced once per round.

    Args:
        family: q; with a context ``(1, C)`` the conditional q(z | c) is measured.
        target: p̃ (with the same context when given).
        log_z: log Z of the target (at that context).
        n: exactly this many samples of q; None: as ``sizing`` says.
        chunk: samples drawn at once.
        sizing: target standard error, pilot and cap (default :data:`KL_SIZING`);
            ignored when ``n`` is given.
        what: the phase's name for the cost line and progress bar; None: silent.

    Returns:
        A :class:`KLEstimate` (KL̂, its standard error, ELBÔ = −mean gap, log Z, n, and
        how the count was reached).

    Raises:
        ValueError: ``n < 2`` or a pilot under 2 draws (no standard error).
        FloatingPointError: a non-finite gap (q puts mass where p̃ is −inf, or overflow).
    """
    if sizing is None or n is not None:
        sizing = KL_SIZING if n is None else Sizing(fixed=n)
    first = sizing.fixed if sizing.fixed is not None else sizing.min_samples
    if first < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {first}")
    gaps: list[Tensor] = []

    def draw(m: int) -> None:
        z, log_q = family.rsample_and_log_prob(m, context)
        gap = (log_q - target.log_prob(z, context)).reshape(-1).double()
        if not torch.isfinite(gap).all():
            bad = int((~torch.isfinite(gap)).sum())
            raise FloatingPointError(f"{bad} of {m} samples of q have a non-finite log q − log p")
        gaps.append(gap)

    def stderr() -> float:
        if len(gaps) > 1:
            gaps[:] = [torch.cat(gaps)]
        return float(gaps[0].std() / math.sqrt(gaps[0].numel()))

    def kl_now() -> float:
        return float(gaps[0].mean()) + log_z  # (stderr() has gathered the rounds)

    run = run_sized(draw, stderr, sizing, chunk, what, cap_key="kl.max_samples", scale=kl_now)
    gap = torch.cat(gaps)
    mean = float(gap.mean())
    return KLEstimate(
        mean + log_z,
        run.stderr,
        -mean,
        log_z,
        run.samples,
        run.target,
        run.capped,
        run.note,
        run.seconds,
    )
