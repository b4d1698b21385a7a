"""How close a fitted q got: the exact KL(q‖p) where log Z is known, and the report card
(:mod:`vilab.report`) everywhere; per evaluation context for a target family.

    KL(q‖p) = E_q[log q(z) − log p̃(z)] + log Z

With log Z known (built-in) or computed by quadrature (2-D with a box), the KL is estimated
from ``eval_samples`` draws of q with its standard error
(:func:`vilab.estimators.kl.exact_kl`). A family whose log q is itself an estimate (a
semi-implicit q) gives a bracket (:func:`kl_bracket`). Without log Z the KL is the report
card's importance-sampled one.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from vilab.estimators.kl import KLEstimate, exact_kl
from vilab.families.base import AtContext, Family
from vilab.report import report_card, summarize_cards
from vilab.targets.base import Target, default_eval_contexts
from vilab.targets.grid import grid_log_z

#: Draws of a semi-implicit q for its KL bracket (each costs K network passes), at most.
BRACKET_SAMPLES = 20_000


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
def kl_bracket(family: Family, target: Target, log_z: float, n: int) -> dict[str, Any]:
    """KL(q‖p) for a family whose log q(z) is estimated
    (:meth:`~vilab.families.base.Family.rsample_and_log_q_bounds`): the lower estimate
    (plain importance sampling, biased low) and the upper one (the SIVI bound); ``kl``
    reports the upper, conservative one. From min(n, :data:`BRACKET_SAMPLES`) draws."""
    n = min(n, BRACKET_SAMPLES)
    lows, ups = [], []
    for m in [min(2000, n - i) for i in range(0, n, 2000)]:
        z, lower, upper = family.rsample_and_log_q_bounds(m)
        log_p = target.log_prob(z)
        lows.append((lower - log_p).double())
        ups.append((upper - log_p).double())
    lo, up = torch.cat(lows), torch.cat(ups)
    return {
        "kl": float(up.mean()) + log_z,
        "kl_stderr": float(up.std() / math.sqrt(n)),
        "kl_lower": float(lo.mean()) + log_z,
        "kl_lower_stderr": float(lo.std() / math.sqrt(n)),
        "elbo": -float(up.mean()),
        "log_z": log_z,
        "kl_samples": n,
        **family.estimate_notes(),
    }


def kl_at(family: Family, target: Target, log_z: float, n: int) -> dict[str, Any]:
    """The KL entries of ``metrics.json``: exact where the family's log q is
    (:func:`~vilab.estimators.kl.exact_kl`), else :func:`kl_bracket`."""
    if not family.exact_log_q:
        return kl_bracket(family, target, log_z, n)
    return _kl_dict(exact_kl(family, target, log_z, n))


def _kl_dict(est: KLEstimate) -> dict[str, Any]:
    d = asdict(est)
    d["kl_samples"] = d.pop("samples")
    return d


@torch.no_grad()
def evaluate_fit(
    family: Family,
    target: Target,
    eval_samples: int,
    report_samples: int,
    contexts: list[list[float]] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """The fit's final figures: ``kl``, ``kl_stderr``, ``elbo``, ``log_z`` (``kl`` None
    where log Z is unknown, with a ``kl_note``) and the report card under ``"report"``
    (:func:`vilab.report.report_card`, ``report_samples`` draws); for a target family,
    the means over ``contexts`` (:func:`eval_context_rows`, made tensors of ``dtype`` on
    ``device``) with ``kl_by_context``."""
    if target.context_dim is None:
        log_z = target_log_z(target)
        if log_z is None:
            out: dict[str, Any] = {"kl": None, "kl_stderr": None, "log_z": None}
            out["kl_note"] = "log Z unknown: give target.log_z or, in 2-D, a box"
        else:
            out = kl_at(family, target, log_z, eval_samples)
        known = None if out["kl"] is None else (out["kl"], out["kl_stderr"])
        card = report_card(family, target, report_samples, log_z, known)
        out.setdefault("elbo", card["elbo"])
        out.setdefault("elbo_stderr", card["elbo_stderr"])
        return {**out, "report": card}
    rows = [(row, torch.tensor([row], dtype=dtype, device=device)) for row in contexts or []]
    return _evaluate_contexts(family, target, eval_samples, report_samples, rows)


def _evaluate_contexts(
    family: Family,
    target: Target,
    eval_samples: int,
    report_samples: int,
    rows: list[tuple[list[float], Tensor]],
) -> dict[str, Any]:
    """:func:`evaluate_fit` of a target family at each context (a row and its ``(1, C)``
    tensor)."""
    per, cards = [], []
    for row, c in rows:
        log_z = target_log_z(target, c[0])
        q, p = AtContext(family, c), target.at(c[0])
        if log_z is None:  # the card's importance-sampled KL
            card = report_card(q, p, report_samples)
            per.append({"context": row, "kl": None, "kl_stderr": None, "log_z": None})
            per[-1]["elbo"] = card["elbo"]
        else:
            kl = kl_at(q, p, log_z, eval_samples)
            per.append({"context": row, **kl})
            card = report_card(q, p, report_samples, log_z, (kl["kl"], kl["kl_stderr"]))
        cards.append({"context": row, **card})
    n = len(per)
    known = all(p["kl"] is not None for p in per)
    out = {
        "kl": sum(p["kl"] for p in per) / n if known else None,
        "kl_stderr": math.sqrt(sum(p["kl_stderr"] ** 2 for p in per)) / n if known else None,
        "elbo": sum(p["elbo"] for p in per) / n,
        "log_z": None,
        "kl_by_context": per,
        "report": summarize_cards(cards),
    }
    if not known:
        out["kl_note"] = (
            "log Z unknown at the evaluation contexts: give target.log_z or, in 2-D, a "
            "box for the exact KL; the report card has an importance-sampled one"
        )
    return out
