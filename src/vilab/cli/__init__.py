"""Command line: ``vilab fit``, ``train``, ``eval``, ``draws``, ``demo`` and ``compare``. Thin: parses, builds a
config, calls one function per command. Errors in the input end with ``vilab: error: …``
and exit code 2. ``train`` and ``eval`` run data-parallel under ``torchrun`` (or with
``--nproc N``, which starts it; :mod:`vilab.distributed`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vilab.cli.parser import _fit_overrides, _without_nproc, build_parser

__all__ = ["_fit_overrides", "_without_nproc", "build_parser", "main"]
from vilab.config import ConfigError, load_fit_config

if TYPE_CHECKING:
    from vilab.config import EvalRunConfig, TrainConfig
    from vilab.distributed import World


def _stored_config(args: argparse.Namespace, world: World | None = None) -> dict | None:
    """With ``--resume``, the run's own ``config.yaml`` (read on rank 0): the base that
    the other options change (:func:`vilab.train.rundir.check_resume_config` then
    refuses a change to what is trained)."""
    if not args.resume:
        return None
    if not args.out:
        raise ValueError("--resume needs --out RUN_DIR (the run to continue)")
    from vilab.distributed import SINGLE, on_main
    from vilab.train.rundir import stored_config

    out = Path(args.out)
    if not on_main(world or SINGLE, (out / "checkpoint.pt").is_file):
        raise ValueError(f"--resume: no checkpoint.pt in {str(out)!r}")
    return on_main(world or SINGLE, stored_config, out)


def _finished(command: str, out: Path, metrics: dict, card: str | None = None) -> int:
    """Print the metrics, the report card if any and the run directory; an interrupted
    run also says how to resume it and exits 128 + the signal's number."""
    from vilab.train.run import exit_code, resume_hint

    print(json.dumps(metrics, indent=2))
    if card:
        print(card)
    print(f"run directory: {out}")
    if not metrics.get("interrupted"):
        return 0
    print(resume_hint(command, out, metrics), file=sys.stderr)
    return exit_code(metrics)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    world = None
    try:
        if getattr(args, "nproc", None) and os.environ.get("WORLD_SIZE", "1") == "1":
            from vilab.distributed import launch

            _check_before_launch(args)
            return launch(args.nproc, _without_nproc(argv))
        if args.command == "fit":
            return _cmd_fit(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "draws":
            return _cmd_draws(args)
        if args.command in ("train", "eval"):
            from vilab.distributed import world_from_env

            world = world_from_env()
            return _cmd_train(args, world) if args.command == "train" else _cmd_eval(args, world)
    except (ConfigError, ValueError, OSError, FloatingPointError) as err:
        rank = f" (rank {world.rank})" if world is not None and world.distributed else ""
        print(f"vilab: error{rank}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which stops cleanly itself)
        print("vilab: interrupted", file=sys.stderr)
        return 130
    finally:
        if world is not None:
            from vilab.distributed import shutdown

            shutdown(world)
    return 0  # pragma: no cover


def _check_before_launch(args: argparse.Namespace) -> None:
    """The input errors every worker would hit, reported once, before any process starts."""
    if args.command == "eval":
        from vilab.train.runs import check_train_run

        _eval_request(args)
        check_train_run(Path(args.run_dir))
        return
    config = _train_config(args, _stored_config(args))
    if config.data.batch_size < args.nproc:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} is smaller than --nproc {args.nproc}: "
            "every process needs at least one image of each global batch"
        )


def _cmd_fit(args: argparse.Namespace) -> int:
    from vilab.commands.fit import run_fit

    config = load_fit_config(args.config, _fit_overrides(args), _stored_config(args))
    out = Path(args.out) if args.out else None
    result = run_fit(
        config,
        out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    metrics = result.metrics
    shown = {k: v for k, v in metrics.items() if k not in ("kl_by_context", "report")}
    card = None
    if "report" in metrics:
        from vilab.report import format_card

        title = f"report card: {metrics['target']} · {metrics['family']}"
        card = format_card(metrics["report"], title)
    return _finished("fit", result.run_dir, shown, card)


def _cmd_demo(args: argparse.Namespace) -> int:
    from vilab.commands.demo import run_demo

    overrides = ([f"device={args.device}"] if args.device else []) + list(args.set or [])
    run_demo(args.out, overrides, args.workers)
    print((Path(args.out) / "kl_table.md").read_text(), end="")
    print(f"figure: {Path(args.out) / 'demo.png'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from vilab.commands.compare import compare

    figure = None if args.no_figure else Path(args.figure)
    text, _ = compare(args.runs, figure)
    print(text, end="")
    if figure is not None:
        print(f"figure: {figure}")
    return 0


def _cmd_draws(args: argparse.Namespace) -> int:
    from vilab.commands.draws import write_draws

    print(json.dumps(write_draws(args.run_dir, args.n, args.out, args.seed), indent=2))
    return 0


def _train_config(args: argparse.Namespace, base: dict | None = None) -> TrainConfig:
    from vilab.config import load_train_config

    pairs = [("steps", args.steps), ("seed", args.seed), ("device", args.device)]
    overrides = [f"{k}={v}" for k, v in pairs if v is not None]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    return load_train_config(args.config, overrides + list(args.set or []), base)


def _cmd_train(args: argparse.Namespace, world: World) -> int:
    from vilab.commands.train import train_vae
    from vilab.train.rundir import unique_dir

    config = _train_config(args, _stored_config(args, world))
    name = Path("runs") / f"vae_{config.posterior.kind}"
    out = Path(args.out) if args.out else world.broadcast(unique_dir(name))
    progress, resume = not args.no_progress, args.resume
    metrics = train_vae(config, out, progress, resume, world=world, overwrite=args.overwrite)
    if not world.is_main:
        return 0
    return _finished("train", out, metrics)


def _cmd_eval(args: argparse.Namespace, world: World) -> int:
    from vilab.commands.eval import evaluate_run

    result = evaluate_run(args.run_dir, _eval_request(args), world)
    if world.is_main:
        print(json.dumps(result, indent=2))
    return 0


def _eval_request(args: argparse.Namespace) -> EvalRunConfig:
    """``vilab eval``'s options as the typed request, validated before anything loads."""
    from vilab.config import EvalRunConfig

    keys = ("split", "method", "samples", "chunk", "batch", "images", "chains", "num_dists")
    given = {k: getattr(args, k) for k in keys}
    given.update(leapfrog=args.leapfrog, init=args.init, data_dir=args.data_dir, ais=args.ais)
    given["device"] = args.device
    return EvalRunConfig(**{k: v for k, v in given.items() if v is not None})
