"""``vilab compare RUN...``: one table and one figure across finished runs.

Each run directory contributes one row from its ``metrics.json`` and ``config.yaml``:
for a fit, the KL(q‖p) of its report card (exact where log Z is known, else the
importance-sampled estimate, marked ``≈``), the ELBO and importance-sampled log Z with
their standard errors, Pareto k̂, the ESS as a fraction of the draws and, on a target with
a reference, the errors of the means and standard deviations in reference standard
deviations (:mod:`vilab.report`); for a VAE, the test log-likelihood with its standard
error. Runs of one (target, family) with several seeds also get a summary row: the mean
over seeds with the standard error across seeds, sd/√n, and the worst k̂.

A directory that holds runs (a demo's output, a sweep's) stands for the runs inside it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

Row = dict[str, Any]


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (those with a ``metrics.json``) named by ``paths``, where a path
    that is not a run but holds runs one level down stands for them.

    Raises:
        ValueError: a path does not exist or holds no finished run.
    """
    if not paths:
        raise ValueError("vilab compare needs at least one run directory")
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ValueError(f"{str(p)!r} is not a directory: give run directories")
        if (p / "metrics.json").is_file():
            runs.append(p)
            continue
        inner = sorted(d for d in p.iterdir() if (d / "metrics.json").is_file())
        if not inner:
            raise ValueError(
                f"{str(p)!r} is not a finished run (no metrics.json) and holds none: "
                "an unfinished run can be completed with --resume"
            )
        runs.extend(inner)
    return runs


def load_row(run: Path) -> Row:
    """One run's row (see the module docstring)."""
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {str(run / 'metrics.json')!r}: {err}") from None
    config: dict[str, Any] = {}
    if (run / "config.yaml").is_file():
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    row: Row = {"run": str(run), "seed": config.get("seed"), "steps": metrics.get("steps")}
    row["seconds"] = metrics.get("seconds")
    if "test" in metrics or "valid_log_px" in metrics:  # a VAE run
        test = metrics.get("test") or {}
        family = (config.get("posterior") or {}).get("kind", "vae")
        data = (config.get("data") or {}).get("name", "data")
        row.update(kind="vae", target=str(data), family=str(family))
        row.update(log_px=test.get("log_px"), log_px_stderr=test.get("log_px_stderr"))
        row["khat"] = (test.get("khat") or {}).get("median")
        return row
    card = metrics.get("report") or {}
    row.update(kind="fit", target=metrics.get("target"), family=metrics.get("family"))
    row["kl"] = card.get("kl", metrics.get("kl"))
    row["kl_stderr"] = card.get("kl_stderr", metrics.get("kl_stderr"))
    row["kl_exact"] = card.get("kl_kind", "exact").startswith("exact")
    for key in ("elbo", "elbo_stderr", "log_z_is", "log_z_is_stderr", "khat", "ess_fraction"):
        row[key] = card.get(key, metrics.get(key))
    ref = card.get("reference") or {}
    row["mean_error"], row["sd_error"] = ref.get("mean_error_q"), ref.get("sd_error_q")
    return row


def group_rows(rows: list[Row]) -> list[Row]:
    """Summary rows for every (target, family) run with more than one seed."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["target"], r["family"])].append(r)
    out = []
    for (target, family), rs in groups.items():
        if len(rs) < 2:
            continue
        s: Row = {"target": target, "family": family, "seed": f"{len(rs)} seeds"}
        s["kind"] = rs[0]["kind"]
        for key in ("kl", "elbo", "log_z_is", "log_px", "mean_error", "sd_error", "seconds"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if len(vals) == len(rs):
                mean = sum(vals) / len(vals)
                sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                s[key], s[f"{key}_stderr"] = mean, sd / math.sqrt(len(vals))
        s["kl_exact"] = all(r.get("kl_exact", True) for r in rs)
        khats = [r["khat"] for r in rs if r.get("khat") is not None]
        s["khat"] = max(khats) if khats else None
        esses = [r["ess_fraction"] for r in rs if r.get("ess_fraction") is not None]
        s["ess_fraction"] = min(esses) if esses else None
        out.append(s)
    return out


def _pm(v: float | None, se: float | None, digits: int = 4) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def table(rows: list[Row]) -> str:
    """The Markdown table of ``rows`` (runs, then the summaries of :func:`group_rows`)."""
    fits = [r for r in rows if r["kind"] == "fit"]
    vaes = [r for r in rows if r["kind"] == "vae"]
    parts = []
    if fits:
        lines = [
            "| target | family | seed | KL(q‖p) (nats) | ELBO | log Z (IS) | k̂ | ESS | "
            "mean err (sd) | sd err (sd) | steps | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fits:
            kl = _pm(r.get("kl"), r.get("kl_stderr"))
            kl = kl if r.get("kl_exact", True) or r.get("kl") is None else f"≈ {kl}"
            lines.append(
                f"| {r['target']} | {r['family']} | {_num(r.get('seed'), '')} | {kl} | "
                f"{_pm(r.get('elbo'), r.get('elbo_stderr'))} | "
                f"{_pm(r.get('log_z_is'), r.get('log_z_is_stderr'))} | "
                f"{_num(r.get('khat'), '.2f')} | {_num(r.get('ess_fraction'), '.1%')} | "
                f"{_num(r.get('mean_error'), '.3f')} | {_num(r.get('sd_error'), '.3f')} | "
                f"{_num(r.get('steps'), '')} | {_pm(r.get('seconds'), r.get('seconds_stderr'), 1)} |"
            )
        parts.append("\n".join(lines))
    if vaes:
        lines = [
            "| data | posterior | seed | test log p(x) (nats) | median k̂ | steps | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in vaes:
            lines.append(
                f"| {r['target']} | {r['family']} | {_num(r.get('seed'), '')} | "
                f"{_pm(r.get('log_px'), r.get('log_px_stderr'), 2)} | "
                f"{_num(r.get('khat'), '.2f')} | {_num(r.get('steps'), '')} | "
                f"{_pm(r.get('seconds'), r.get('seconds_stderr'), 1)} |"
            )
        parts.append("\n".join(lines))
    notes = []
    if any(not r.get("kl_exact", True) for r in fits):
        notes.append(
            "≈: importance-sampled KL (log Z unknown), biased low; trust it only when k̂ < 0.7."
        )
    if any(r.get("mean_error") is not None for r in fits):
        notes.append(
            "mean/sd err: max over coordinates of |error| in reference standard deviations, "
            "for q's own moments."
        )
    notes.append(
        "k̂ < 0.5 good, < 0.7 ok, ≥ 0.7: q misses mass of p. Rows of n seeds: mean ± sd/√n."
    )
    return "\n\n".join(parts) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def figure(rows: list[Row], path: Path) -> None:
    """KL (or −ELBO where log Z is unknown, or the test NLL) and k̂ per family, one column
    per target; points are runs (seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in rows if "run" in r]
    targets = list(dict.fromkeys(r["target"] for r in runs))
    families = list(dict.fromkeys(r["family"] for r in runs))
    fig, axes = plt.subplots(2, len(targets), figsize=(3.2 * len(targets), 5.5), squeeze=False)
    for j, t in enumerate(targets):
        top, bottom = axes[0, j], axes[1, j]
        label = "KL(q‖p)"
        for i, f in enumerate(families):
            rs = [r for r in runs if r["target"] == t and r["family"] == f]
            for r in rs:
                if r["kind"] == "vae":
                    y, se, label = (
                        -(r.get("log_px") or math.nan),
                        r.get("log_px_stderr"),
                        "test NLL",
                    )
                elif r.get("kl") is not None:
                    y, se = r["kl"], r.get("kl_stderr")
                else:
                    y, se, label = -(r.get("elbo") or math.nan), r.get("elbo_stderr"), "−ELBO"
                top.errorbar(i, y, yerr=se or 0.0, fmt="o", color=f"C{i}", capsize=3)
                if r.get("khat") is not None and math.isfinite(r["khat"]):
                    bottom.plot(i, r["khat"], "s", color=f"C{i}")
        for ax in (top, bottom):
            ax.set_xticks(range(len(families)), families, rotation=45, ha="right", fontsize=7)
        top.set_title(str(t), fontsize=9)
        top.set_ylabel(label, fontsize=8)
        for y, ls in ((0.5, ":"), (0.7, "--")):
            bottom.axhline(y, color="grey", ls=ls, lw=0.8)
        bottom.set_ylabel("Pareto k̂", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(
    paths: list[str | Path], figure_path: str | Path | None = None
) -> tuple[str, list[Row]]:
    """The table (Markdown) and rows of the runs under ``paths``; with ``figure_path``,
    also the figure there."""
    runs = find_runs(paths)
    rows = [load_row(r) for r in runs]
    rows += group_rows(rows)
    if figure_path is not None:
        figure(rows, Path(figure_path))
    return table(rows), rows
