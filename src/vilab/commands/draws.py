"""``vilab draws RUN --n 4000 --out draws.nc``: draws of a finished fit as ArviZ data.

The run's family and target are rebuilt from its ``config.yaml`` with the weights of its
``checkpoint.pt`` (:func:`vilab.train.runs.load_fitted`); the draws, their named and
constrained parameters and their importance log-weights are
:func:`vilab.evaluation.draws.draws_to_arviz`, written to netCDF (never over a file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vilab.evaluation.draws import draws_to_arviz, write_netcdf
from vilab.train.runs import check_fit_run, load_fitted


def write_draws(run_dir: str | Path, n: int, out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Write ``n`` seeded draws of the fit in ``run_dir`` to ``out`` (netCDF-4, ArviZ's
    groups ``posterior`` and ``sample_stats``); returns a summary: the file, the draws,
    the variables and their shapes, the Pareto k̂ of the importance weights.

    Raises:
        ValueError: ``n`` < 1, ``out`` exists, ``run_dir`` is not a finished fit run, its
            target is amortized (draws need a context), or arviz-base/h5netcdf is missing.
    """
    run_dir, out = Path(run_dir), Path(out)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--n {n!r}: the number of draws must be an integer >= 1")
    if out.exists():
        raise ValueError(f"{str(out)!r} exists: draws never overwrite a file; choose another --out")
    check_fit_run(run_dir)
    fitter = load_fitted(run_dir)
    if fitter.target.context_dim is not None:
        raise ValueError(
            f"{str(run_dir)!r} fits an amortized family to target {fitter.target.name!r} "
            f"(context_dim={fitter.target.context_dim}): draws need a context, which "
            "`vilab draws` does not take; in Python, fix one with AtContext(family, c)"
        )
    tree = draws_to_arviz(fitter.family, fitter.target, n, seed)
    write_netcdf(tree, out)
    posterior = tree["posterior"]
    return {
        "out": str(out),
        "draws": n,
        "seed": seed,
        "variables": {k: list(v.shape[2:]) for k, v in posterior.data_vars.items()},
        "pareto_k": tree["sample_stats"].attrs["pareto_k"],
    }
