"""Draws of a fitted q in the ecosystem's format: ArviZ data (an xarray ``DataTree``).

From n draws z_s ~ q on the unconstrained space ``(n, D)`` the tree holds

* ``posterior``: the model's named, constrained quantities (:meth:`Target.param_names`,
  :meth:`Target.constrain`), Stan's names ``theta[1]`` … ``theta[8]`` gathered into one
  variable ``theta`` with a dimension ``theta_dim_0`` (coordinates 1 … 8, Stan's
  1-based indices; ``Sigma[i,j]`` gets two), scalars as scalars; one chain of n draws;
* ``sample_stats``: ``lp`` = log p̃(z) (ArviZ's name for the unnormalized log density),
  ``log_q`` = log q(z), ``log_weight`` = lp − log_q (the importance log-weights) and
  ``log_weight_psis``, the Pareto-smoothed, self-normalized log-weights (Σ exp = 1;
  Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR 25), with k̂ in the
  group's ``pareto_k`` attribute. ``lp`` and ``log_q`` are what
  ``arviz_stats.loo_approximate_posterior`` takes; the smoothed weights correct any
  expectation, e.g. ``(posterior.theta * exp(log_weight_psis)).sum()``.

ArviZ ≥ 1.0 builds on ``arviz-base`` (the ``arviz`` extra); it is imported here only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vilab.core.extras import require
from vilab.estimators.importance import psis
from vilab.families.base import Family
from vilab.report import draw_log_weights
from vilab.targets.base import Target

#: ``name`` or ``name[i,j,…]`` (Stan's and vilab's parameter names).
_NAME = re.compile(r"^(?P<base>[^\[\]]+)(?:\[(?P<index>\d+(?:\s*,\s*\d+)*)\])?$")


def group_names(names: tuple[str, ...] | list[str]) -> dict[str, tuple[tuple[int, ...], list]]:
    """Stan-style names as variables: ``{base: (shape, [(column, index), …])}``.

    ``("mu", "theta[1]", "theta[2]")`` -> ``{"mu": ((), [(0, ())]), "theta": ((2,),
    [(1, (0,)), (2, (1,))])}`` (0-based array indices). A base whose indices do not fill
    their box exactly once (or that mixes a scalar and indices) is kept as one scalar
    variable per name, under the name itself.
    """
    found: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
    loose: list[tuple[int, str]] = []
    for col, name in enumerate(names):
        m = _NAME.match(name)
        if m is None:
            loose.append((col, name))
            continue
        index = m["index"]
        idx = tuple(int(i) - 1 for i in index.split(",")) if index else ()
        found.setdefault(m["base"], []).append((col, idx))
    out: dict[str, tuple[tuple[int, ...], list]] = {}
    for base, cols in found.items():
        ranks = {len(i) for _, i in cols}
        shape = tuple(max(i[k] for _, i in cols) + 1 for k in range(max(ranks)))
        whole = len(ranks) == 1 and len({i for _, i in cols}) == len(cols)
        if (
            whole
            and int(np.prod(shape)) == len(cols)
            and min(min(i, default=0) for _, i in cols) >= 0
        ):
            out[base] = (shape, cols)
        else:
            loose += [(c, names[c]) for c, _ in cols]
    for col, name in loose:
        out[name] = ((), [(col, ())])
    return out


def _variables(x: np.ndarray, names: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """``x (n, P)`` as ``(values, dims, coords)`` for ``arviz_base.from_dict``: each
    variable ``(1, n, *shape)``."""
    values, dims, coords = {}, {}, {}
    for base, (shape, cols) in group_names(names).items():
        arr = np.empty((x.shape[0], *shape))
        for col, idx in cols:
            arr[(slice(None), *idx)] = x[:, col]
        values[base] = arr[None]
        if shape:
            dims[base] = [f"{base}_dim_{k}" for k in range(len(shape))]
            coords.update({d: np.arange(1, s + 1) for d, s in zip(dims[base], shape)})
    return values, dims, coords


@torch.no_grad()
def draws_to_arviz(family: Family, target: Target, n: int, seed: int = 0) -> Any:
    """n draws of the free ``family`` fitted to ``target`` as an ArviZ ``DataTree``
    (module docstring), seeded: the same ``seed`` gives the same draws.

    Raises:
        ValueError: ``n`` < 1, a target with a context (amortized: fix one with
            ``target.at(c)`` and the family with ``AtContext``), or arviz-base missing.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: the number of draws must be an integer >= 1")
    if target.context_dim is not None:
        raise ValueError(
            f"target {target.name!r} is amortized (context_dim={target.context_dim}): draws "
            "need a context; fix one with target.at(c) and AtContext(family, c)"
        )
    az = require("arviz_base", "arviz", "ArviZ draws", "arviz-base")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z, log_w, log_p, log_q = (t.cpu() for t in draw_log_weights(family, target, n))
    smoothed, khat = psis(log_w)
    x = target.constrain(z).detach().cpu().double().numpy().reshape(n, -1)
    values, dims, coords = _variables(x, tuple(target.param_names()))
    stats = {
        "lp": log_p.numpy()[None],
        "log_q": log_q.numpy()[None],
        "log_weight": log_w.numpy()[None],
        "log_weight_psis": smoothed.cpu().numpy()[None],
    }
    about = {"inference_library": "vilab", "target": target.name, "seed": int(seed)}
    attrs = {"/": about, "sample_stats": {"pareto_k": float(khat)}}
    data = {"posterior": values, "sample_stats": stats}
    return az.from_dict(data, dims=dims, coords=coords, attrs=attrs)


def write_netcdf(tree: Any, out: str | Path) -> Path:
    """Write ``tree`` to ``out`` (netCDF-4 through h5netcdf, the ``arviz`` extra); never
    overwrites. Read it back with ``xarray.open_datatree(out)``.

    Raises:
        ValueError: ``out`` exists, or h5netcdf is missing.
    """
    out = Path(out)
    if out.exists():
        raise ValueError(f"{str(out)!r} exists: draws never overwrite a file; choose another --out")
    require("h5netcdf", "arviz", "writing draws to netCDF")
    require("h5py", "arviz", "writing draws to netCDF (h5netcdf's backend)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    tree.to_netcdf(tmp, engine="h5netcdf")
    tmp.replace(out)
    return out
