"""``vilab eval RUN_DIR``: log p(x) of a trained VAE run, recorded in its ``metrics.json``.

The request is a typed :class:`~vilab.config.EvalRunConfig`, validated (pydantic) before
anything is loaded; the run is read by :func:`vilab.train.runs.load_trained_vae` (best
weights, else the last); the estimate is :func:`vilab.evaluation.evaluate` (importance
sampling) or :func:`vilab.evaluation.evaluate_ais`, seeded by the run's seed, the same in
one process or several; the result is merged into ``metrics.json`` under
``eval_<split>`` / ``ais_<split>`` through the run lifecycle (:func:`vilab.train.run.record`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vilab.config import EvalRunConfig
from vilab.core.seeding import Stream, derive_seed
from vilab.distributed import SINGLE, World
from vilab.evaluation import KHAT_MIN_SAMPLES, evaluate, evaluate_ais
from vilab.evaluation.ais import CLASSIC, FAST
from vilab.train.run import record
from vilab.train.runs import load_trained_vae
from vilab.train.vae import vae_data_for

#: What makes each method cheaper (the cost line's hint).
HINTS = {
    "is": "cheaper: --samples N or --images N",
    "ais": "cheaper: --num-dists N, --chains N or --images N",
}


def ais_settings(r: EvalRunConfig, run_batch: int | None = None) -> dict[str, Any]:
    """The keyword settings of :func:`evaluate_ais` that ``r`` asks for: its preset
    (``fast``: :data:`FAST`; ``classic``: :data:`CLASSIC`, 100 images at a time at most,
    fewer if the run's ``eval.batch`` says so) with ``chains``, ``num_dists``,
    ``leapfrog`` and ``batch`` replaced where given."""
    settings = dict(FAST if r.ais == "fast" else CLASSIC)
    if r.ais == "classic":
        settings["batch"] = min(run_batch or 100, 100)
    given = {"chains": r.chains, "num_dists": r.num_dists, "num_leapfrog": r.leapfrog}
    settings.update({k: v for k, v in {**given, "batch": r.batch}.items() if v is not None})
    return settings


def evaluate_run(
    run_dir: str | Path,
    request: EvalRunConfig | None = None,
    world: World = SINGLE,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` as ``request`` asks (default: importance sampling
    on the test split with the run's ``eval`` settings) and record the result in its
    ``metrics.json``; returns the result (the same on every rank).

    Raises:
        ValueError: ``run_dir`` is not a ``vilab train`` run, or its weights do not fit.
    """
    r = request or EvalRunConfig()
    run_dir = Path(run_dir)
    local = world.local_rank if world.distributed else None
    config, vae, weights = load_trained_vae(run_dir, r.device, r.data_dir, local)
    where = next(vae.parameters()).device
    data = vae_data_for(config, None)
    x = data.test if r.split == "test" else data.valid
    x = (x[: r.images] if r.images else x).to(where)
    seed = derive_seed(config.seed, Stream.TEST)
    e = config.eval
    batch = r.batch or e.batch
    t0 = time.perf_counter()
    if r.method == "is":
        samples = r.samples or e.samples
        result = evaluate(
            vae,
            x,
            samples,
            r.chunk or e.chunk,
            batch,
            iwae_k=50,
            seed=seed,
            world=world,
            progress=progress,
            hint=HINTS["is"],
            khat=samples >= KHAT_MIN_SAMPLES,
        )
    else:
        settings = ais_settings(r, e.batch)
        result = evaluate_ais(
            vae,
            x,
            init=r.init,
            seed=seed,
            world=world,
            progress=progress,
            hint=HINTS["ais"],
            **settings,
        )
    result["seconds"] = time.perf_counter() - t0
    result["device"] = str(where)
    result["weights"] = weights.name
    result["world_size"] = world.size
    record(run_dir, f"{'eval' if r.method == 'is' else 'ais'}_{r.split}", result, world)
    return result
