"""Benchmark: microseconds per point of a Stan program's log density + gradient, vilab's
batched C++ shim against httpstan's extension module called directly, in one process.

Programs from the posteriordb copy (``--posteriordb``, default ``$POSTERIOR_DB_PATH``, else
``../shared/posteriordb``): ``eight_schools`` (eight_schools_centered, D = 10) and
``diamonds`` (diamonds-diamonds, D = 26). vilab's side is
:meth:`vilab.targets.stan_model.StanModel.log_density_gradient` on a batch ``(N, D)``
with 1 and 2 C++ threads; httpstan's is its compiled services module's ``log_prob_grad``
(and ``log_prob`` for the value), one point per call, as pystan 3 reaches it. Both are
Stan's ``log_prob_grad<true, true>``: the script checks that values and gradients are
equal to the bit on 20 points. Each timing is the best of several repetitions.

Compiling costs 30–55 s per program and side on first use (cached afterwards: vilab's in
``$VILAB_CACHE_DIR`` or ``~/.cache/vilab/stan``, httpstan's in its own cache).

Run (the Stan extra, ``make setup``)::

    .venv/bin/python benchmarks/stan_speed.py [--part eight_schools|diamonds|both]
    .venv/bin/python benchmarks/stan_speed.py --quick    # eight schools, fewer points

Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import numpy as np

from vilab.targets.stan import from_stan

PROGRAMS = {
    "eight_schools": ("eight_schools_centered", "eight_schools"),
    "diamonds": ("diamonds", "diamonds"),
}


def best_of(fn: Callable[[], object], reps: int) -> float:
    """The shortest of ``reps`` timings of ``fn()``, seconds."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def httpstan_module(code: str) -> Any:
    """httpstan's compiled services module for ``code`` (built on first use)."""
    import httpstan.models

    name = httpstan.models.calculate_model_name(code)
    try:
        return httpstan.models.import_services_extension_module(name)
    except Exception:  # not built yet
        asyncio.run(httpstan.models.build_services_extension_module(code))
        return httpstan.models.import_services_extension_module(name)


def measure(db: Path, part: str, n: int, reps: int) -> dict[str, Any]:
    """µs per point on both sides, and the largest differences of values and gradients."""
    model, data = PROGRAMS[part]
    stan = db / "models" / "stan" / f"{model}.stan"
    with zipfile.ZipFile(db / "data" / "data" / f"{data}.json.zip") as zf:
        d = json.loads(zf.read(zf.namelist()[0]))
    t0 = time.perf_counter()
    target = from_stan(stan, d)
    load = time.perf_counter() - t0
    z = np.random.default_rng(0).normal(size=(n, target.dim)) * 0.3
    out: dict[str, Any] = {"program": model, "dim": target.dim, "load_s": load}
    for threads in (1, 2):
        target.model.threads = threads
        t = best_of(lambda: target.model.log_density_gradient(z), reps)
        out[f"vilab_{threads}_threads_us"] = t / n * 1e6
    mod = httpstan_module(stan.read_text())
    rows = [list(map(float, r)) for r in z[: min(n, 300)]]
    t = best_of(lambda: [mod.log_prob_grad(d, r, True) for r in rows], max(1, reps // 2))
    out["httpstan_direct_us"] = t / len(rows) * 1e6
    lp, grad = target.model.log_density_gradient(z[:20])
    out["max_grad_diff"] = float(
        np.abs(np.array([mod.log_prob_grad(d, r, True) for r in rows[:20]]) - grad).max()
    )
    out["max_lp_diff"] = float(
        np.abs(np.array([mod.log_prob(d, r, True) for r in rows[:20]]) - lp).max()
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(__doc__, (*PROGRAMS, "both"), "both", data_dir=False)
    default_db = os.environ.get("POSTERIOR_DB_PATH") or str(
        Path(__file__).resolve().parents[2] / "shared" / "posteriordb"
    )
    p.add_argument(
        "--posteriordb", default=default_db, help="[$POSTERIOR_DB_PATH, else ../shared/posteriordb]"
    )
    args = p.parse_args(argv)
    db = Path(args.posteriordb) / "posterior_database"
    if not db.is_dir():
        p.error(f"no posteriordb at {args.posteriordb} (--posteriordb)")
    parts = (
        ["eight_schools"] if args.quick else list(PROGRAMS) if args.part == "both" else [args.part]
    )
    results = []
    for part in parts:
        r = measure(db, part, 200 if args.quick else 4000, 2 if args.quick else 5)
        results.append(r)
        print(
            f"{r['program']} (D={r['dim']}): vilab {r['vilab_1_threads_us']:.2f} µs/point (1 thread), "
            f"{r['vilab_2_threads_us']:.2f} (2 threads); httpstan direct {r['httpstan_direct_us']:.1f} µs/point; "
            f"max |Δ lp| {r['max_lp_diff']:.3g}, max |Δ grad| {r['max_grad_diff']:.3g}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
