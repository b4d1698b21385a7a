"""A reader of posteriordb (stan-dev/posteriordb) with ``json`` and ``zipfile`` only.

The database folder holds ``posteriors/<posterior>.json`` (which model, which data, which
reference posterior), ``models/stan/<model>.stan``, ``data/data/<data>.json.zip`` (one JSON
file inside) and ``reference_posteriors/draws/draws/<reference>.json.zip``: a list of
chains, each a dict from a constrained parameter name (``theta[1]``) to its draws, with
the settings in ``reference_posteriors/draws/info/<reference>.info.json``.

The database is found from an explicit path, else ``$POSTERIOR_DB_PATH`` (the posteriordb
packages' convention); either may name the folder that holds ``posteriors/`` or its
parent (a clone of the repository).

Reference: Magnusson, Bürkner & Vehtari 2025, "posteriordb: testing, benchmarking and
developing Bayesian inference algorithms", AISTATS (arXiv:2407.04967).
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ENV = "POSTERIOR_DB_PATH"
HOW_TO_GET = (
    "get one with `git clone https://github.com/stan-dev/posteriordb` and set "
    f"{ENV}=posteriordb/posterior_database (or pass its path)"
)


@dataclass(frozen=True)
class ReferenceDraws:
    """Reference draws of a posterior on the constrained scale.

    Attributes:
        names: P names in posteriordb's style (``mu``, ``theta[1]``).
        draws: ``(N, P)`` float64, the chains one after another.
        chains: the number of chains.
        info: the reference's ``.info.json`` (sampler settings and diagnostics).
    """

    names: tuple[str, ...]
    draws: np.ndarray
    chains: int
    info: dict[str, Any] = field(default_factory=dict)

    def columns(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """The draws of ``names`` in that order, ``(N, len(names))``; a name that the
        reference lacks raises a KeyError that lists the ones it has."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"reference draws have no {missing}; they have {list(self.names)}")
        return self.draws[:, [index[n] for n in names]]


@dataclass(frozen=True)
class PosteriorInfo:
    """One posterior: its names, its Stan code and data, and its reference (None where
    none is declared or its file is absent; ``note`` then says which)."""

    name: str
    model_name: str
    code: str
    data: dict[str, Any]
    reference: ReferenceDraws | None
    reference_name: str | None
    keywords: tuple[str, ...]
    note: str | None = None


def find_database(db: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds ``posteriors/``: ``db``, else ``$POSTERIOR_DB_PATH``; each
    may also be that folder's parent (a clone of the repository).

    Raises:
        ValueError: neither given, or the folder has no ``posteriors/``.
    """
    where = db if db is not None else os.environ.get(ENV)
    if not where:
        raise ValueError(f"no posteriordb database: pass its path or set {ENV}; {HOW_TO_GET}")
    root = Path(where).expanduser()
    for candidate in (root, root / "posterior_database"):
        if (candidate / "posteriors").is_dir():
            return candidate
    source = "the path given" if db is not None else f"${ENV}"
    raise ValueError(
        f"{source} = {str(root)!r} is not a posteriordb database (no 'posteriors/' in it or "
        f"in its 'posterior_database/'); {HOW_TO_GET}"
    )


def posterior_names(db: str | os.PathLike[str] | None = None) -> list[str]:
    """Every posterior's name, sorted."""
    return sorted(
        p.name[: -len(".json")] for p in (find_database(db) / "posteriors").glob("*.json")
    )


def _read_zipped_json(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        inner = [n for n in z.namelist() if n.endswith(".json")]
        if len(inner) != 1:
            raise ValueError(f"{path} should hold one JSON file, it holds {z.namelist()}")
        return json.loads(z.read(inner[0]))


def load_reference_draws(name: str, db: str | os.PathLike[str] | None = None) -> ReferenceDraws:
    """``reference_posteriors/draws/draws/<name>.json.zip`` as :class:`ReferenceDraws`
    (FileNotFoundError if absent)."""
    root = find_database(db) / "reference_posteriors" / "draws"
    path = root / "draws" / f"{name}.json.zip"
    if not path.is_file():
        raise FileNotFoundError(f"reference draws {name!r} are not in this database ({path})")
    chains = _read_zipped_json(path)
    names = tuple(chains[0])
    draws = np.concatenate(
        [np.column_stack([np.asarray(c[n], dtype=np.float64) for n in names]) for c in chains]
    )
    info_path = root / "info" / f"{name}.info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return ReferenceDraws(names, draws, len(chains), info)


def load_posterior(name: str, db: str | os.PathLike[str] | None = None) -> PosteriorInfo:
    """The posterior ``name`` (e.g. ``eight_schools-eight_schools_centered``).

    A declared reference whose file is absent gives ``reference=None`` and a one-line
    ``note`` (also warned), not an error: the fit still gets its report card.

    Raises:
        ValueError: an unknown name (with the closest names) or no database.
    """
    root = find_database(db)
    path = root / "posteriors" / f"{name}.json"
    if not path.is_file():
        close = difflib.get_close_matches(name, posterior_names(root), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown posterior {name!r} in {root}{hint}")
    meta = json.loads(path.read_text())
    model_info = json.loads(
        (root / "models" / "info" / f"{meta['model_name']}.info.json").read_text()
    )
    code_path = model_info["model_implementations"]["stan"]["model_code"]
    code = (root / code_path).read_text()
    data_name = meta.get("data_name")
    data = _read_zipped_json(root / "data" / "data" / f"{data_name}.json.zip") if data_name else {}
    ref_name, reference, note = meta.get("reference_posterior_name"), None, None
    if ref_name:
        try:
            reference = load_reference_draws(ref_name, root)
        except FileNotFoundError:
            note = f"reference posterior {ref_name!r} is declared but its draws are absent here"
            warnings.warn(note, stacklevel=2)
    keywords = tuple(meta.get("keywords") or ())
    return PosteriorInfo(name, meta["model_name"], code, data, reference, ref_name, keywords, note)


def posteriordb_target(spec: str, db: str | os.PathLike[str] | None = None) -> Any:
    """``posteriordb:NAME`` -> the posterior's Stan model as a target
    (``vilab.targets.stan.from_stan``), with ``reference_draws`` (a :class:`ReferenceDraws`
    or None) and ``posterior`` (the :class:`PosteriorInfo`) attached for the report."""
    from vilab.targets.stan import from_stan  # lazily: needs vilab[stan] and a compiler

    info = load_posterior(spec.removeprefix("posteriordb:"), db)
    target = from_stan(info.code, info.data, name=info.name)
    target.reference_draws = info.reference
    target.posterior = info
    return target
