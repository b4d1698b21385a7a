"""Reading a run directory, in one place: its ``metrics.json``, what kind of run it is, the
trained VAE to evaluate (the best weights, else the last; the moving average where the
run kept one) and a finished fit's trainer (its family and target, for draws)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vilab.config import FitConfig, TrainConfig, load_fit_config, load_train_config, read_yaml
from vilab.core.checkpoint import brief, load_checkpoint
from vilab.core.device import resolve_device
from vilab.train.fit import Fitter
from vilab.vae import VAE, build_vae


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with a clear error if it is not one."""
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); delete or repair it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} holds a {type(value).__name__}, not a JSON object")
    return value


def load_model(vae: VAE, path: Path) -> None:
    """Load the weights to evaluate from a checkpoint into ``vae``: ``best.pt``'s model, a
    training checkpoint's moving average of the weights if the run kept one
    (``optim.ema``), else its model.

    Raises:
        ValueError: the file is not a checkpoint of a model with this configuration.
    """
    state = load_checkpoint(path)
    try:
        if "ema" in state:  # a training checkpoint of a run with optim.ema: the average
            n = len("module.")
            weights = {k[n:]: v for k, v in state["ema"].items() if k.startswith("module.")}
        else:
            weights = state["model"]
        vae.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit the run's config.yaml ({brief(err)})"
        ) from None


def check_train_run(run_dir: Path) -> None:
    """Raises ``ValueError`` saying in one line what ``run_dir`` is unless it is a run of
    ``vilab train``: missing, without config.yaml, a ``vilab fit`` run (fit-only keys such
    as ``target``; its exact KL is in its metrics.json), or a config of neither kind."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        what = "is not a vilab run directory" if run_dir.exists() else "does not exist"
        raise ValueError(f"{str(run_dir)!r} {what} (no config.yaml)")
    keys = set(read_yaml(config))
    fit_only = set(FitConfig.model_fields) - set(TrainConfig.model_fields)
    train_only = set(TrainConfig.model_fields) - set(FitConfig.model_fields)
    if keys & fit_only:
        metrics = run_dir / "metrics.json"
        where = f"are in {str(metrics)!r}" if metrics.is_file() else "are not written yet"
        raise ValueError(
            f"{str(run_dir)!r} is a `vilab fit` run, not a `vilab train` run: `vilab eval` "
            f"estimates a VAE's log p(x); a fit's numbers (the exact KL) {where}"
        )
    if not keys & train_only:
        raise ValueError(
            f"{str(config)!r} is the config of neither a `vilab train` nor a `vilab fit` run "
            f"(keys: {', '.join(sorted(map(str, keys))) or 'none'})"
        )


def load_trained_vae(
    run_dir: Path,
    device: str | None = None,
    data_dir: str | None = None,
    local_rank: int | None = None,
) -> tuple[TrainConfig, VAE, Path]:
    """The run's config (with ``data_dir`` if given), its VAE with the weights to
    evaluate — ``best.pt`` if the run has one, else ``checkpoint.pt`` — on ``device``
    (default: the run's ``device`` setting), and the weights' path.

    Raises:
        ValueError: ``run_dir`` is not a ``vilab train`` run, or its weights do not fit.
    """
    check_train_run(run_dir)
    overrides = [f"data.data_dir={data_dir}"] if data_dir else []
    config = load_train_config(run_dir / "config.yaml", overrides)
    where = resolve_device(device or config.device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    vae = build_vae(config)
    best = run_dir / "best.pt"
    weights = best if best.exists() else run_dir / "checkpoint.pt"
    load_model(vae, weights)
    return config, vae.to(where), weights


def check_fit_run(run_dir: Path) -> dict[str, Any]:
    """The ``metrics.json`` of the finished ``vilab fit`` run in ``run_dir``; else a
    ``ValueError`` saying in one line what it is (missing, no config.yaml, a ``vilab
    train`` run, not finished, or interrupted)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        what = "is not a vilab run directory" if run_dir.exists() else "does not exist"
        raise ValueError(f"{str(run_dir)!r} {what} (no config.yaml)")
    fit_only = set(FitConfig.model_fields) - set(TrainConfig.model_fields)
    if not set(read_yaml(config)) & fit_only:
        raise ValueError(f"{str(run_dir)!r} is not a `vilab fit` run (its config has no target)")
    metrics, ckpt = run_dir / "metrics.json", run_dir / "checkpoint.pt"
    if not metrics.is_file() or not ckpt.is_file():
        missing = "metrics.json" if not metrics.is_file() else "checkpoint.pt"
        raise ValueError(f"{str(run_dir)!r} is not a finished fit run (no {missing})")
    values = read_json(metrics)
    if values.get("interrupted"):
        raise ValueError(
            f"{str(run_dir)!r} was interrupted at step {values.get('steps')}: finish it first "
            f"(vilab fit --resume --out {run_dir})"
        )
    return values


def load_fitted(run_dir: Path, device: str = "cpu") -> Fitter:
    """The :class:`~vilab.train.fit.Fitter` of the finished fit run in ``run_dir``: its
    family and target rebuilt from ``config.yaml`` (a Stan program is compiled, or taken
    from the cache) with the trained weights of ``checkpoint.pt``, on ``device``.

    Raises:
        ValueError: not a finished fit run (:func:`check_fit_run`), or a checkpoint that
            does not fit its config.
    """
    check_fit_run(run_dir)
    config = load_fit_config(run_dir / "config.yaml", [f"device={device}"])
    fitter = Fitter(config)
    ckpt = run_dir / "checkpoint.pt"
    fitter.load_state_dict(load_checkpoint(ckpt), f"checkpoint {str(ckpt)!r}")
    return fitter
