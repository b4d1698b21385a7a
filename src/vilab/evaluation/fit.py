"""How close a fitted q got: the exact KL(q‖p) where log Z is known, and the report card
(:mod:`vilab.report`) everywhere; per evaluation context for a target family.

    KL(q‖p) = E_q[log q(z) − log p̃(z)] + log Z

With log Z known (built-in) or computed by quadrature (2-D with a box), the KL is estimated
from draws of q with its standard error (:func:`vilab.estimators.kl.exact_kl`): as many
as bring the standard error under ``kl.stderr`` (a pilot of ``kl.min_samples``, at most
``kl.max_samples``; :mod:`vilab.estimators.sizing`), or exactly ``eval_samples`` when
given. A family whose log q is itself an estimate (a semi-implicit q) gives a bracket
(:func:`kl_bracket`), sized the same way on its upper estimate but never past
:data:`BRACKET_SAMPLES` draws. Without log Z the KL is the report card's
importance-sampled one. The card (:func:`vilab.report.report_card`) is sized by the
standard error of its log Ẑ (``report.*``) or takes exactly ``report_samples``.

With ``progress``, each phase predicted past a few seconds announces its cost and shows
a bar, and the KL is printed on stderr as ``KL 0.00207 ± 0.00009 (s.e., 12,000 draws)``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from vilab.core.progress import say
from vilab.estimators.kl import KL_SIZING, KLEstimate, exact_kl
from vilab.estimators.kl import pm as _pm
from vilab.estimators.sizing import Sizing, run_sized
from vilab.families.base import AtContext, Family
from vilab.report import REPORT_SIZING, report_card, summarize_cards
from vilab.targets.base import Target, default_eval_contexts
from vilab.targets.grid import grid_log_z

#: Draws of a semi-implicit q for its KL bracket (each costs K network passes), at most,
#: and its pilot.
BRACKET_SAMPLES, BRACKET_PILOT = 20_000, 2_000


def as_sizing(given: Sizing | int | None, default: Sizing) -> Sizing:
    """A count (exactly that many draws), a :class:`Sizing`, or None (``default``)."""
    if given is None:
        return default
    return given if isinstance(given, Sizing) else Sizing(fixed=given)


def target_log_z(target: Target, context: Tensor | None = None) -> float | None:
    """The exact log Z if known; in 2-D with a box, by quadrature; else None."""
    if context is not None:
        target = target.at(context)
    if target.log_z is not None:
        return float(target.log_z)
    if target.dim == 2 and target.quad_box is not None:
        return grid_log_z(target)
    return None


def eval_context_rows(target: Target, given: list[float] | None) -> list[list[float]] | None:
    """The evaluation contexts of a target family (None for a single target), fixed before
    training: ``given`` (each number repeated ``context_dim`` times) or
    :func:`~vilab.targets.base.default_eval_contexts`."""
    c_dim = target.context_dim
    if c_dim is None:
        return None
    if not given:
        return default_eval_contexts(target)
    return [[float(c)] * c_dim for c in given]


@torch.no_grad()
def kl_bracket(
    family: Family,
    target: Target,
    log_z: float,
    n: Sizing | int | None = None,
    what: str | None = None,
) -> dict[str, Any]:
    """KL(q‖p) for a family whose log q(z) is estimated
    (:meth:`~vilab.families.base.Family.rsample_and_log_q_bounds`): the lower estimate
    (plain importance sampling, biased low) and the upper one (the SIVI bound); ``kl``
    reports the upper, conservative one. From ``n`` draws (a count, or sized by the upper
    estimate's standard error from a pilot of at most :data:`BRACKET_PILOT`), never more
    than :data:`BRACKET_SAMPLES`. The family's record of its log q estimates is reset
    first, so that the notes returned (:meth:`~vilab.families.base.Family.estimate_notes`:
    K, the s.e. of log q reached) cover this bracket only."""
    sizing = as_sizing(n, KL_SIZING).capped_at(BRACKET_SAMPLES, BRACKET_PILOT)
    family.reset_log_q_summary()
    lows: list[Tensor] = []
    ups: list[Tensor] = []

    def draw(m: int) -> None:
        z, lower, upper = family.rsample_and_log_q_bounds(m)
        log_p = target.log_prob(z)
        lows.append((lower - log_p).double().reshape(-1))
        ups.append((upper - log_p).double().reshape(-1))

    def stderr() -> float:
        if len(ups) > 1:
            lows[:], ups[:] = [torch.cat(lows)], [torch.cat(ups)]
        return float(ups[0].std() / math.sqrt(ups[0].numel()))

    def kl_now() -> float:
        return float(ups[0].mean()) + log_z

    cap_key = "kl.max_samples"
    if sizing.fixed is None and sizing.max_samples == BRACKET_SAMPLES:
        cap_key = "BRACKET_SAMPLES: each draw of a semi-implicit q costs K network passes"
    run = run_sized(draw, stderr, sizing, 2000, what, cap_key=cap_key, scale=kl_now)
    lo, up = torch.cat(lows), torch.cat(ups)
    n_drawn = up.numel()
    out = {
        "kl": float(up.mean()) + log_z,
        "kl_stderr": run.stderr,
        "kl_lower": float(lo.mean()) + log_z,
        "kl_lower_stderr": float(lo.std() / math.sqrt(n_drawn)),
        "elbo": -float(up.mean()),
        "log_z": log_z,
        "kl_samples": n_drawn,
        **run.metrics("kl_"),
        **family.estimate_notes(),
    }
    return out


def kl_at(
    family: Family,
    target: Target,
    log_z: float,
    n: Sizing | int | None = None,
    what: str | None = None,
) -> dict[str, Any]:
    """The KL entries of ``metrics.json``: exact where the family's log q is
    (:func:`~vilab.estimators.kl.exact_kl`), else :func:`kl_bracket`; ``n`` a count or a
    :class:`~vilab.estimators.sizing.Sizing` (None: the default one)."""
    if not family.exact_log_q:
        return kl_bracket(family, target, log_z, n, what)
    sizing = as_sizing(n, KL_SIZING)
    return _kl_dict(exact_kl(family, target, log_z, sizing=sizing, what=what))


def _kl_dict(est: KLEstimate) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kl": est.kl,
        "kl_stderr": est.kl_stderr,
        "elbo": est.elbo,
        "log_z": est.log_z,
        "kl_samples": est.samples,
        "kl_stderr_target": est.stderr_target,
        "kl_capped": est.capped,
    }
    if est.note:
        out["kl_sizing_note"] = est.note
    return out


def kl_line(kl: dict[str, Any], where: str = "") -> str:
    """``KL 0.00207 ± 0.00009 (s.e., 12,000 draws)`` of :func:`kl_at`'s entries, with
    the note when the count stopped short of the target."""
    upper = " (upper, SIVI)" if "kl_lower" in kl else ""
    line = f"KL{where}{upper} {_pm(kl['kl'], kl['kl_stderr'])} (s.e., {kl['kl_samples']:,} draws)"
    note = kl.get("kl_sizing_note")
    return f"{line}: {note}" if note else line


@torch.no_grad()
def evaluate_fit(
    family: Family,
    target: Target,
    kl: Sizing | int | None = None,
    report: Sizing | int | None = None,
    contexts: list[list[float]] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The fit's final figures: ``kl``, ``kl_stderr``, ``kl_samples``, ``elbo``,
    ``log_z`` (``kl`` None where log Z is unknown, with a ``kl_note``), the report card
    under ``"report"`` (:func:`vilab.report.report_card`) and ``evaluation_seconds``
    (``kl``, ``report``); for a target family, the means over ``contexts``
    (:func:`eval_context_rows`, made tensors of ``dtype`` on ``device``) with
    ``kl_by_context``.

    ``kl`` and ``report``: how many draws, a count (exactly that many) or a
    :class:`~vilab.estimators.sizing.Sizing` (None: :data:`KL_SIZING`,
    :data:`REPORT_SIZING`). With ``progress``, cost lines, bars and the KL line on stderr.
    """
    kl_sizing, card_sizing = as_sizing(kl, KL_SIZING), as_sizing(report, REPORT_SIZING)
    if target.context_dim is None:
        seconds = {"kl": 0.0, "report": 0.0}
        t0 = time.perf_counter()
        log_z = target_log_z(target)
        if log_z is None:
            out: dict[str, Any] = {"kl": None, "kl_stderr": None, "log_z": None}
            out["kl_note"] = "log Z unknown: give target.log_z or, in 2-D, a box"
        else:
            out = kl_at(family, target, log_z, kl_sizing, _what("exact KL", progress))
            if progress:
                say(f"vilab: {kl_line(out)}")
        seconds["kl"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        known = None if out["kl"] is None else (out["kl"], out["kl_stderr"])
        card = report_card(
            family,
            target,
            log_z=log_z,
            exact_kl=known,
            sizing=card_sizing,
            what=_what("report card", progress),
        )
        seconds["report"] = time.perf_counter() - t0
        out.setdefault("elbo", card["elbo"])
        out.setdefault("elbo_stderr", card["elbo_stderr"])
        return {**out, "report": card, "evaluation_seconds": seconds}
    rows = [(row, torch.tensor([row], dtype=dtype, device=device)) for row in contexts or []]
    return _evaluate_contexts(family, target, kl_sizing, card_sizing, rows, progress)


def _what(phase: str, progress: bool) -> str | None:
    return phase if progress else None


def _evaluate_contexts(
    family: Family,
    target: Target,
    kl_sizing: Sizing,
    card_sizing: Sizing,
    rows: list[tuple[list[float], Tensor]],
    progress: bool,
) -> dict[str, Any]:
    """:func:`evaluate_fit` of a target family at each context (a row and its ``(1, C)``
    tensor), each sized alone."""
    per, cards = [], []
    seconds = {"kl": 0.0, "report": 0.0}
    for row, c in rows:
        t0 = time.perf_counter()
        where = f" at context {_row(row)}"
        log_z = target_log_z(target, c[0])
        q, p = AtContext(family, c), target.at(c[0])
        if log_z is not None:
            kl = kl_at(q, p, log_z, kl_sizing, _what(f"exact KL{where}", progress))
            if progress:
                say(f"vilab: {kl_line(kl, where)}")
        seconds["kl"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        what = _what(f"report card{where}", progress)
        if log_z is None:  # the card's importance-sampled KL
            card = report_card(q, p, sizing=card_sizing, what=what)
            per.append({"context": row, "kl": None, "kl_stderr": None, "log_z": None})
            per[-1]["elbo"] = card["elbo"]
        else:
            per.append({"context": row, **kl})
            known = (kl["kl"], kl["kl_stderr"])
            card = report_card(q, p, log_z=log_z, exact_kl=known, sizing=card_sizing, what=what)
        seconds["report"] += time.perf_counter() - t0
        cards.append({"context": row, **card})
    n = len(per)
    known_all = all(p["kl"] is not None for p in per)
    out = {
        "kl": sum(p["kl"] for p in per) / n if known_all else None,
        "kl_stderr": math.sqrt(sum(p["kl_stderr"] ** 2 for p in per)) / n if known_all else None,
        "kl_samples": sum(p.get("kl_samples", 0) for p in per) if known_all else None,
        "elbo": sum(p["elbo"] for p in per) / n,
        "log_z": None,
        "kl_by_context": per,
        "report": summarize_cards(cards),
        "evaluation_seconds": seconds,
    }
    if not known_all:
        out["kl_note"] = (
            "log Z unknown at the evaluation contexts: give target.log_z or, in 2-D, a "
            "box for the exact KL; the report card has an importance-sampled one"
        )
    return out


def _row(row: list[float]) -> str:
    """A context row, short: ``0.75`` for one repeated number, else the list."""
    if len(set(row)) == 1:
        return f"{row[0]:g}"
    return "[" + ", ".join(f"{v:g}" for v in row) + "]"
