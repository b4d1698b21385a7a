"""The report card of a fit: did q work, in any dimension?

From S draws z_s ~ q and the log-weights log w_s = log p̃(z_s) − log q(z_s)
(:mod:`vilab.estimators.importance`) the card gives

* the ELBO = mean(log w) with its standard error;
* log Ẑ, the importance-sampled log-normalizer, with its standard error, and where log Z
  is known its z-score (log Ẑ − log Z)/se;
* the Pareto k̂ of the weights and its reading (< 0.5 good, < 0.7 ok, ≥ 0.7 unreliable;
  Yao et al. 2018, Vehtari et al. 2024) and the effective sample size;
* KL(q‖p): exact (log Z − ELBO) where log Z is known — by quadrature in 2-D or given —,
  else the importance-sampled log Ẑ − ELBO, labelled as such (biased low, and meaningful
  only when k̂ < 0.7);
* for a target with reference draws (``reference_draws``, posteriordb's), the same errors
  on the constrained scale and Pathfinder's 1-Wasserstein distance of 100 draws of q
  (picked, and PSIS-resampled) next to its floor (:mod:`vilab.estimators.reference`);
* means and standard deviations of z under q and PSIS-corrected (self-normalized with
  the Pareto-smoothed weights), and, for a target with a reference
  (:class:`vilab.targets.suite.Reference`), the errors of both in units of the reference
  standard deviation, max over coordinates (the convention of Inference Gym, Sountsov,
  Radul & Vasudevan 2020: |μ̂_d − μ_d| / σ_d and |σ̂_d − σ_d| / σ_d).

A semi-implicit q has no closed-form log q(z); its card uses the family's conservative
(SIVI upper) estimate, which the ``log_q`` field says.

S is given (exactly S draws) or sized (:mod:`vilab.estimators.sizing`,
:data:`REPORT_SIZING`): a pilot (the floor: k̂'s tail of 3√S ≥ 200 draws), then rounds
until log Ẑ's delta-method s.e. ≤ max(stderr, rel_stderr × (log Ẑ − ELBO)), up to the
cap; it stops at a round (×8 at most) whose k̂ ≥ 0.7: the weights' variance is infinite,
and no count makes log Ẑ trustworthy.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vilab.estimators.importance import (
    KHAT_OK,
    log_mean_exp_stderr,
    pareto_khat,
    summarize,
    weighted_moments,
)
from vilab.estimators.reference import reference_scores
from vilab.estimators.sizing import Sized, Sizing, run_sized
from vilab.families.base import Family
from vilab.targets.base import Target

#: The sized card's defaults: target s.e. of log Ẑ, 0.001 nats or 1% of its KL
#: log Ẑ − ELBO (the larger); pilot (the floor, for k̂) 5,000; cap 100,000 draws.
REPORT_SIZING = Sizing(1e-3, 5_000, 100_000, rel_stderr=0.01)

KL_EXACT = "exact: log Z known, KL = log Z − ELBO"
KL_IS = "importance-sampled: log Ẑ − ELBO (log Z unknown); biased low, trust it only when k̂ < 0.7"


class Draws(NamedTuple):
    """Draws of q scored under the target, float64: ``z (n, D)``, the log-weights
    log p̃(z) − log q(z) ``(n,)`` (formed in the draws' dtype), log p̃ and log q ``(n,)``."""

    z: Tensor
    log_w: Tensor
    log_p: Tensor
    log_q: Tensor


@torch.no_grad()
def draw_log_weights(family: Family, target: Target, n: int, chunk: int = 10_000) -> Draws:
    """``n`` draws of q and their log-weights (:class:`Draws`), in chunks.

    Raises:
        FloatingPointError: a NaN or +inf log-weight.
    """
    zs, lws, lps, lqs = [], [], [], []
    for start in range(0, n, chunk):
        z, log_q = family.rsample_and_log_prob(min(chunk, n - start))
        log_p = target.log_prob(z)
        lw = (log_p - log_q).double()
        if torch.isnan(lw).any() or torch.isposinf(lw).any():
            bad = int((torch.isnan(lw) | torch.isposinf(lw)).sum())
            raise FloatingPointError(
                f"{bad} of {lw.numel()} draws of q give a NaN or +inf log-weight "
                f"log p̃(z) − log q(z) on target {target.name!r}"
            )
        zs.append(z.detach().double())
        lws.append(lw)
        lps.append(log_p.detach().double())
        lqs.append(log_q.detach().double())
    return Draws(*(torch.cat(t) for t in (zs, lws, lps, lqs)))


def sized_draws(
    family: Family, target: Target, sizing: Sizing, what: str | None = None
) -> tuple[Draws, Sized]:
    """The card's draws (:func:`draw_log_weights`) as ``sizing`` says: by log Ẑ's
    delta-method s.e. against max(stderr, rel_stderr × (log Ẑ − ELBO)), stopping at a
    round whose k̂ ≥ 0.7 (module docstring); or a fixed count.

    Raises:
        ValueError: fewer than 100 draws (no k̂, no card).
    """
    first = sizing.fixed if sizing.fixed is not None else sizing.min_samples
    if first < 100:
        raise ValueError(f"the report card needs at least 100 draws of q, got {first}")
    parts: list[Draws] = []

    def draw(m: int) -> None:
        parts.append(draw_log_weights(family, target, m, chunk=m))

    def log_w() -> Tensor:
        if len(parts) > 1:
            parts[:] = [Draws(*(torch.cat(t) for t in zip(*parts)))]
        return parts[0].log_w

    def gap() -> float:  # log Ẑ − ELBO, the scale of a relative target
        lw = log_w()
        return float(log_mean_exp_stderr(lw)[0] - lw.mean())

    def settle() -> str | None:
        lw = log_w()
        khat = float(pareto_khat(lw))
        if khat < KHAT_OK:
            return None
        return (
            f"k̂ = {khat:.2f} ≥ {KHAT_OK} at {lw.numel():,} draws: the weights' variance is "
            "infinite, no count of draws makes log Ẑ or its s.e. trustworthy; stopped there"
        )

    def stderr() -> float:
        return float(log_mean_exp_stderr(log_w())[1])

    run = run_sized(draw, stderr, sizing, 10_000, what, settle, "report.max_samples", gap)
    log_w()  # the rounds gathered into one
    return parts[0], run


@torch.no_grad()
def report_card(
    family: Family,
    target: Target,
    samples: int | None = None,
    log_z: float | None = None,
    exact_kl: tuple[float, float] | None = None,
    *,
    sizing: Sizing | None = None,
    what: str | None = None,
) -> dict[str, Any]:
    """The card of a free family on a context-free target, JSON-ready.

    Args:
        family: q (free; fix a context with :class:`~vilab.families.base.AtContext`).
        target: p̃ (fix a context with ``target.at(c)``).
        samples: S, exactly S draws of q; None: as ``sizing`` (:data:`REPORT_SIZING`) says.
        log_z: the exact log Z where known.
        exact_kl: ``(kl, stderr)`` already measured (the exact KL), used instead of this
            card's log Z − ELBO; the card's ELBO is then log Z − kl, the same measurement's.
        what: the phase's name for the cost line and progress bar; None: silent.
    """
    fixed = None if samples is None else Sizing(fixed=samples)
    draws, run = sized_draws(family, target, fixed or sizing or REPORT_SIZING, what)
    z, s = draws.z, summarize(draws.log_w)
    mean_q, sd_q = z.mean(0), z.std(0)
    mean_psis, sd_psis = weighted_moments(z, s.log_w_smoothed)
    card: dict[str, Any] = {
        "samples": s.samples,
        "log_z_is_stderr_target": run.target,
        "capped": run.capped,
        "dim": int(z.shape[-1]),
        "elbo": s.elbo,
        "elbo_stderr": s.elbo_stderr,
        "log_z_is": s.log_z,
        "log_z_is_stderr": s.log_z_stderr,
        "log_z": log_z,
        "khat": s.khat,
        "khat_reading": s.reading + _tail_note(s.khat, s.ess / s.samples),
        "ess": s.ess,
        "ess_fraction": s.ess / s.samples,
        "ess_psis": s.ess_psis,
        "log_q": "exact" if family.has_log_prob else "estimated (semi-implicit, SIVI upper)",
        **({"sizing_note": run.note} if run.note else {}),
    }
    if log_z is not None:
        card["log_z_is_zscore"] = (s.log_z - log_z) / max(s.log_z_stderr, 1e-300)
        kl, se = exact_kl if exact_kl is not None else (log_z - s.elbo, s.elbo_stderr)
        # with a KL measured on more draws, the ELBO shown is the same measurement's
        card.update(kl=kl, kl_stderr=se, kl_kind=KL_EXACT, elbo=log_z - kl, elbo_stderr=se)
    else:
        card.update(kl=s.kl, kl_stderr=s.kl_stderr, kl_kind=KL_IS)
    card.update(
        mean_q=mean_q.tolist(),
        sd_q=sd_q.tolist(),
        mean_psis=mean_psis.tolist(),
        sd_psis=sd_psis.tolist(),
    )
    reference = getattr(target, "reference", None)
    if reference is not None:
        mu, sd = (t.double() for t in reference.tensors(torch.float64, mean_q.device))
        card["reference"] = {
            "source": reference.source,
            "mean_error_q": _err(mean_q, mu, sd),
            "sd_error_q": _err(sd_q, sd, sd),
            "mean_error_psis": _err(mean_psis, mu, sd),
            "sd_error_psis": _err(sd_psis, sd, sd),
        }
    draws = getattr(target, "reference_draws", None)
    if draws is not None:
        card["reference_draws"] = _vs_reference_draws(target, draws, z, s.log_w_smoothed)
    return card


def _vs_reference_draws(target: Target, reference: Any, z: Tensor, log_w: Tensor) -> dict:
    """q against reference draws (posteriordb's) on the constrained scale, in the
    quantities both name (:meth:`Target.param_names`): errors of means and sds in
    reference sds (q's and PSIS-weighted), max over them, and Pathfinder's W1 of 100 draws
    of q (picked, and PSIS-resampled) beside the floor that 100 reference draws get
    (:func:`vilab.estimators.reference.reference_scores`)."""
    names = [n for n in target.param_names() if n in set(reference.names)]
    if not names:
        return {"note": f"no quantity of the target is in the reference ({reference.names})"}
    index = [target.param_names().index(n) for n in names]
    x = target.constrain(z).detach().double().cpu().numpy()[:, index]
    lw = log_w.double().cpu().numpy()
    scores = reference_scores(x, reference.columns(names), lw, reference.chains, names)
    return {"names": names} | scores


def _at(r: dict[str, Any], moment: str) -> str:
    """Where the largest PSIS-corrected error of ``moment`` lies and the reference's own
    Monte Carlo standard error of that moment there (cards of older runs lack them)."""
    at = r.get(f"{moment}_error_psis_at")
    mcse = r.get(f"{moment}_error_psis_ref_mcse")
    return "" if at is None or mcse is None else f" at {at}, reference's own MCSE {mcse:.3f}"


def _tail_note(khat: float, ess_fraction: float) -> str:
    """With k̂ ≥ 0.7 but nearly equal weights, where the mismatch lies."""
    if khat >= KHAT_OK and ess_fraction >= 0.9:
        return (
            f" — though the bulk agrees (ESS {ess_fraction:.0%}): the mismatch is in the tails, "
            "where p is heavier than q"
        )
    return ""


def _width(text: str) -> int:
    """Terminal columns of ``text``: combining marks (the hat of k̂) take none."""
    return sum(not unicodedata.combining(ch) for ch in text)


def _err(estimate: Tensor, truth: Tensor, sd: Tensor) -> float:
    """max_d |estimate_d − truth_d| / sd_d."""
    return float(((estimate - truth).abs() / sd).max())


def summarize_cards(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """One card for an amortized fit from its per-context cards: the worst k̂ and ESS,
    the mean KL and ELBO (standard errors combined as independent), the draws of q of all
    contexts together."""
    n = len(cards)
    worst = max(cards, key=lambda c: c["khat"])
    notes = [c["sizing_note"] for c in cards if c.get("sizing_note")]
    out = {
        "contexts": n,
        "samples": sum(c["samples"] for c in cards),
        "capped": any(c.get("capped", False) for c in cards),
        "dim": cards[0]["dim"],
        "elbo": sum(c["elbo"] for c in cards) / n,
        "elbo_stderr": math.sqrt(sum(c["elbo_stderr"] ** 2 for c in cards)) / n,
        "kl": sum(c["kl"] for c in cards) / n,
        "kl_stderr": math.sqrt(sum(c["kl_stderr"] ** 2 for c in cards)) / n,
        "kl_kind": cards[0]["kl_kind"],
        "khat": worst["khat"],
        "khat_reading": f"worst context: {worst['khat_reading']}",
        "ess": min(c["ess"] for c in cards),
        "ess_fraction": min(c["ess_fraction"] for c in cards),
        "log_q": cards[0]["log_q"],
        "by_context": cards,
    }
    if notes:
        out["sizing_note"] = f"{len(notes)} of {n} contexts: {notes[0]}"
    return out


def format_card(card: dict[str, Any], title: str = "report card", max_dims: int = 4) -> str:
    """The card as aligned text lines for the terminal."""

    def pm(v: float | None, se: float | None, digits: int = 4) -> str:
        if v is None:
            return "—"
        return f"{v:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")

    where = f" over {card['contexts']} contexts" if "contexts" in card else ""
    lines = [f"{title} ({card['dim']}-D, {card['samples']:,} draws of q{where})"]
    rows = [("ELBO", pm(card["elbo"], card["elbo_stderr"]))]
    if "log_z_is" in card:
        known = card.get("log_z")
        extra = (
            f"   (known {known:.6f}; z = {card['log_z_is_zscore']:+.1f})"
            if known is not None
            else ""
        )
        rows.append(("log Z (importance)", pm(card["log_z_is"], card["log_z_is_stderr"]) + extra))
    kind = "exact" if card["kl_kind"] == KL_EXACT else "importance-sampled"
    rows.append((f"KL(q‖p), {kind}", pm(card["kl"], card["kl_stderr"])))
    rows.append(("Pareto k̂", f"{card['khat']:.2f}   {card['khat_reading']}"))
    rows.append(("ESS", f"{card['ess']:,.0f} ({100 * card['ess_fraction']:.1f}% of the draws)"))
    if "mean_psis" in card:
        d = card["dim"]
        shown = min(d, max_dims)
        cells = ", ".join(
            f"{card['mean_psis'][i]:.3g} ± {card['sd_psis'][i]:.3g}" for i in range(shown)
        )
        more = f", … ({d - shown} more in metrics.json)" if d > shown else ""
        rows.append(("mean ± sd (PSIS)", cells + more))
    if "reference" in card:
        r = card["reference"]
        rows.append(
            (
                "error vs reference",
                f"means {r['mean_error_q']:.3f} sd (q), {r['mean_error_psis']:.3f} sd (PSIS); "
                f"sds {r['sd_error_q']:.3f} (q), {r['sd_error_psis']:.3f} (PSIS); max over dims",
            )
        )
    r = card.get("reference_draws")
    if r is not None and "w1" in r:
        rows.append(
            (
                "vs reference draws",
                f"means {r['mean_error_q']:.3f} sd (q), {r['mean_error_psis']:.3f} sd (PSIS"
                f"{_at(r, 'mean')}); sds {r['sd_error_q']:.3f} (q), {r['sd_error_psis']:.3f} "
                f"(PSIS{_at(r, 'sd')}); W1 {r['w1']:.3g} (q)"
                + (f", {r['w1_psis']:.3g} (PSIS-resampled)" if "w1_psis" in r else "")
                + f"; floor {r['w1_floor']:.3g} ({r['w1_draws']} draws"
                + (f", mean of {r['w1_repeats']} splits)" if "w1_repeats" in r else ")"),
            )
        )
    if card["log_q"] != "exact":
        rows.append(("log q(z)", card["log_q"]))
    if card.get("sizing_note"):
        rows.append(("draws", card["sizing_note"]))
    width = max(_width(k) for k, _ in rows)
    lines += [f"  {k}{' ' * (width - _width(k))}  {v}" for k, v in rows]
    return "\n".join(lines)
