"""Comparing draws of q with reference draws of p (posteriordb's, long NUTS runs).

Two scores, pure functions on arrays:

* errors of means and standard deviations in units of the reference sd (Inference Gym,
  Sountsov, Radul et al. 2020), per coordinate d,

      e_mean,d = |m̂_d − m_d| / s_d,    e_sd,d = |ŝ_d − s_d| / s_d,

  with m̂, ŝ the plain moments of q's draws or the self-normalized ones under weights
  w_s ∝ exp(log w_s) (PSIS-smoothed log-weights;
  :func:`vilab.estimators.importance.weighted_moments`);
* the 1-Wasserstein distance between 100 draws of q and the reference draws, beside the
  floor that 100 draws of the reference itself get (Pathfinder's protocol: Zhang,
  Carpenter, Gelman & Vehtari 2022, "Pathfinder: parallel quasi-Newton variational
  inference", JMLR 23(306), §4); the 100 draws either picked uniformly from q's or
  resampled from them in proportion to their importance weights, with replacement
  (sampling–importance–resampling, Rubin 1988: the draws PSIS-corrected q yields, as the
  PSIS-weighted moments above, and how multi-path Pathfinder returns its own).
  W1 between the empirical measures μ = (1/n) Σ δ_{x_i}
  and ν = (1/m) Σ δ_{y_j} is the transport linear program

      W1(μ, ν) = min_{π ≥ 0} Σ_ij π_ij ‖x_i − y_j‖₂  s.t.  Σ_j π_ij = 1/n, Σ_i π_ij = 1/m,

  solved exactly: by an optimal assignment (``linear_sum_assignment``) when one size
  divides the other, m = k n — each x_i repeated k times; the transport polytope with
  integral margins has integral vertices (Birkhoff–von Neumann), so some optimal plan
  moves each y_j whole and the assignment is exact —, else by HiGHS (``linprog``). What
  the R package ``transport`` (Schuhmacher et al.) that Pathfinder used computes.

The reference is itself a finite Markov chain sample, so its moments carry a Monte Carlo
standard error (:func:`reference_mcse`: arviz-stats' MCSE of the mean and of the sd, from
the effective sample size over its chains; Vehtari, Gelman, Simpson, Carpenter & Bürkner
2021). Where q's error is of that size, the reference cannot tell it from zero: on
one_comp_mm_elim_abs the sd of K_m (a log-normal-like tail) has MCSE 0.12 reference sds
over posteriordb's 10 × 1,000 draws, larger than the 0.1 an error is often asked to stay
under.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment, linprog
from scipy.sparse import coo_matrix, vstack
from scipy.spatial.distance import cdist

from vilab.estimators.importance import weighted_moments

#: Draws of q per W1, as in Pathfinder.
W1_DRAWS = 100
#: The largest side of an assignment problem (a dense large² cost matrix) before W1 is
#: solved as a linear program instead.
MAX_ASSIGNMENT = 2000
#: Reference draws W1 is measured against by default (all 10,000 of posteriordb's take
#: ~18 s per LP on one CPU core; 1,000 take 0.1–0.4 s as an assignment, 500 take 0.01–0.04
#: s); None uses them all.
W1_REFERENCE_SIZE = 500
#: Independent splits and picks W1 and its floor are averaged over: for a perfect q (draws
#: of p itself) one split's W1 / floor scatters by ±10 % in 2-D and ±1.6 % in 10-D (sd over
#: 20 splits of N(0, I)), the mean of ten by ±3 % and ±0.9 %.
W1_REPEATS = 10


def _2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"{what} must be finite draws of shape (N, P), got shape {x.shape}")
    return x


def moment_errors(
    draws: np.ndarray, reference: np.ndarray, log_w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(e_mean, e_sd)``, each ``(P,)``: the errors of q's (or the weighted) means and sds
    in reference sds, columns of ``draws (S, P)`` and ``reference (M, P)`` matched."""
    x, y = _2d(draws, "draws"), _2d(reference, "reference")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"draws have {x.shape[1]} columns, the reference {y.shape[1]}")
    if log_w is None:
        mean, sd = x.mean(0), x.std(0, ddof=1)
    else:
        lw = torch.as_tensor(np.asarray(log_w, dtype=np.float64).reshape(-1))
        if lw.shape[0] != x.shape[0]:
            raise ValueError(f"log_w must be {x.shape[0]} numbers (one per draw), got {lw.shape}")
        if torch.isnan(lw).any():
            raise ValueError(f"log_w holds {int(torch.isnan(lw).sum())} NaN of {len(lw)}")
        m_w, s_w = weighted_moments(torch.as_tensor(x), lw - torch.logsumexp(lw, 0))
        mean, sd = m_w.numpy(), s_w.numpy()
    m, s = y.mean(0), y.std(0, ddof=1)
    if not (s > 0).all():
        raise ValueError(f"reference sds must be > 0, got {s}")
    return np.abs(mean - m) / s, np.abs(sd - s) / s


def reference_mcse(reference: np.ndarray, chains: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(mcse_mean, mcse_sd)``, each ``(P,)``: the Monte Carlo standard errors of the
    reference's own means and sds, in its sds. ``reference (N, P)`` holds ``chains``
    chains one after another, of equal length (else it is read as one chain)."""
    from arviz_stats.base import array_stats

    y = _2d(reference, "reference")
    if chains < 1 or len(y) % chains or len(y) // chains < 4:
        chains = 1
    blocks = y.reshape(chains, len(y) // chains, y.shape[1])
    s = y.std(0, ddof=1)
    if not (s > 0).all():
        raise ValueError(f"reference sds must be > 0, got {s}")

    def mcse(method: str) -> np.ndarray:
        return np.asarray(array_stats.mcse(blocks, method=method, chain_axis=0, draw_axis=1))

    return mcse("mean") / s, mcse("sd") / s


def wasserstein1(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W1 between the empirical measures of ``x (n, P)`` and ``y (m, P)`` (equal
    weights 1/n and 1/m, Euclidean ground cost); see the module's docstring."""
    x, y = _2d(x, "x"), _2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has {x.shape[1]} columns, y has {y.shape[1]}")
    cost = cdist(x, y)
    n, m = cost.shape
    small, large = min(n, m), max(n, m)
    if large % small == 0 and large <= MAX_ASSIGNMENT:
        # each of the fewer points, repeated large/small times: an assignment problem
        reps = large // small
        square = np.repeat(cost, reps, axis=0) if n < m else np.repeat(cost, reps, axis=1)
        rows, cols = linear_sum_assignment(square)
        return float(square[rows, cols].mean())
    k = np.arange(n * m)
    supply = coo_matrix((np.ones(n * m), (k // m, k)), shape=(n, n * m))
    demand = coo_matrix((np.ones(n * m), (k % m, k)), shape=(m, n * m))
    b = np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)])
    res = linprog(cost.ravel(), A_eq=vstack([supply, demand]).tocsr(), b_eq=b, method="highs")
    if not res.success:  # pragma: no cover - the transport polytope is never empty
        raise RuntimeError(f"the W1 transport LP failed: {res.message}")
    return float(res.fun)


@dataclass(frozen=True)
class W1Score:
    """W1 of ``draws`` q-draws against ``reference_size`` reference draws, and the floor:
    W1 of as many other reference draws against the same ones (what a perfect q gets);
    each the mean over ``repeats`` independent splits and picks, with its standard error."""

    w1: float
    floor: float
    draws: int
    reference_size: int
    repeats: int = 1
    w1_se: float = 0.0
    floor_se: float = 0.0


def w1_vs_reference(
    draws: np.ndarray,
    reference: np.ndarray,
    n: int = W1_DRAWS,
    reference_size: int | None = W1_REFERENCE_SIZE,
    seed: int = 0,
    log_w: np.ndarray | None = None,
    repeats: int = W1_REPEATS,
) -> W1Score:
    """Pathfinder's score: W1(n draws of q, reference) next to W1(n held-out reference
    draws, reference). The reference is split at random: n draws for the floor, and up to
    ``reference_size`` of the others to measure against, so that neither score sees its
    own points. The n draws of q are picked from ``draws (S, P)`` uniformly without
    replacement, or, given ``log_w (S,)`` (log importance weights, e.g. PSIS-smoothed),
    resampled with replacement with probabilities ∝ exp(log_w). Both are averaged over
    ``repeats`` independent splits and picks (:data:`W1_REPEATS`). The same ``seed`` gives
    the same splits (the same floor) with or without ``log_w``."""
    return _w1_scores(draws, reference, [log_w], n, reference_size, seed, repeats)[0]


def _w1_scores(
    draws: np.ndarray,
    reference: np.ndarray,
    log_ws: list[np.ndarray | None],
    n: int = W1_DRAWS,
    reference_size: int | None = W1_REFERENCE_SIZE,
    seed: int = 0,
    repeats: int = W1_REPEATS,
) -> list[W1Score]:
    """:func:`w1_vs_reference` for each of ``log_ws`` (None: uniform picks), on the same
    splits of the reference, whose floors are computed once."""
    x, y = _2d(draws, "draws"), _2d(reference, "reference")
    if len(x) < n or len(y) < 2 * n:
        raise ValueError(
            f"W1 needs {n} draws of q and {2 * n} reference draws, got {len(x)} and {len(y)}"
        )
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    probs = [None if lw is None else _resampling_probs(lw, len(x)) for lw in log_ws]
    rng = np.random.default_rng(seed)
    rngs_q = [np.random.default_rng([seed, 1]) for _ in probs]
    floors, w1s = np.empty(repeats), np.empty((repeats, len(probs)))
    for r in range(repeats):
        perm = rng.permutation(len(y))
        held, rest = y[perm[:n]], y[perm[n:]]
        rest = rest if reference_size is None else rest[:reference_size]
        floors[r] = wasserstein1(held, rest)
        for i, (p, rng_q) in enumerate(zip(probs, rngs_q, strict=True)):
            pick = rng_q.choice(len(x), n, replace=p is not None, p=p)
            w1s[r, i] = wasserstein1(x[pick], rest)

    def se(v: np.ndarray) -> float:
        return float(v.std(ddof=1) / np.sqrt(repeats)) if repeats > 1 else 0.0

    return [
        W1Score(float(w.mean()), float(floors.mean()), n, len(rest), repeats, se(w), se(floors))
        for w in w1s.T
    ]


def _resampling_probs(log_w: np.ndarray, size: int) -> np.ndarray:
    """Probabilities ∝ exp(log_w) of ``size`` draws, checked."""
    lw = np.asarray(log_w, dtype=np.float64).reshape(-1)
    if lw.shape != (size,) or np.isnan(lw).any() or not np.isfinite(lw.max()):
        raise ValueError(f"log_w must be {size} log-weights, one per draw, not all −inf")
    p = np.exp(lw - lw.max())
    return p / p.sum()


def reference_scores(
    draws: np.ndarray,
    reference: np.ndarray,
    log_w: np.ndarray,
    chains: int = 1,
    names: list[str] | None = None,
) -> dict:
    """Every score of ``draws (S, P)`` of q against ``reference (M, P)`` (columns matched;
    ``chains`` chains one after another), q's own and PSIS-corrected by ``log_w (S,)``: the
    largest mean and sd errors (:func:`moment_errors`), the coordinate of each
    PSIS-corrected one (``*_at``: its name in ``names``, else its column index) and the
    reference's own MCSE there (``*_ref_mcse``; :func:`reference_mcse`), and W1 of 100
    draws beside its floor (:func:`w1_vs_reference`)."""
    e_mean, e_sd = moment_errors(draws, reference)
    e_mean_w, e_sd_w = moment_errors(draws, reference, log_w)
    mcse_mean, mcse_sd = reference_mcse(reference, chains)
    at_mean, at_sd = int(e_mean_w.argmax()), int(e_sd_w.argmax())
    w1, w1_psis = _w1_scores(draws, reference, [None, log_w])
    return {
        "mean_error_q": float(e_mean.max()),
        "sd_error_q": float(e_sd.max()),
        "mean_error_psis": float(e_mean_w.max()),
        "sd_error_psis": float(e_sd_w.max()),
        "mean_error_psis_at": at_mean if names is None else names[at_mean],
        "sd_error_psis_at": at_sd if names is None else names[at_sd],
        "mean_error_psis_ref_mcse": float(mcse_mean[at_mean]),
        "sd_error_psis_ref_mcse": float(mcse_sd[at_sd]),
        "ref_mcse_mean_max": float(mcse_mean.max()),
        "ref_mcse_sd_max": float(mcse_sd.max()),
        "w1": w1.w1,
        "w1_psis": w1_psis.w1,
        "w1_floor": w1.floor,
        "w1_se": w1.w1_se,
        "w1_psis_se": w1_psis.w1_se,
        "w1_floor_se": w1.floor_se,
        "w1_draws": w1.draws,
        "w1_reference_size": w1.reference_size,
        "w1_repeats": w1.repeats,
    }
