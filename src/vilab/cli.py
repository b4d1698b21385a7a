"""Command line: ``vilab fit``, ``train``, ``eval``, ``demo`` and ``compare``. Thin: parses, builds a
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

from vilab.config import ConfigError, load_fit_config

if TYPE_CHECKING:
    from vilab.config import TrainConfig
    from vilab.distributed import World


def _fit_overrides(args: argparse.Namespace) -> list[str]:
    """Command-line options as config overrides (``--set`` ones come last and win)."""
    pairs = {
        "target.name": args.target,
        "target.dim": args.dim,
        "target.log_z": args.log_z,
        "target.context_dim": args.context_dim,
        "target.support": args.support,
        "family.kind": args.family,
        "family.layers": args.layers,
        "family.base": args.base,
        "steps": args.steps,
        "samples": args.samples,
        "optim.lr": args.lr,
        "seed": args.seed,
        "objective.beta_steps": args.beta_steps,
        "max_seconds": args.max_seconds,
        "eval_samples": args.eval_samples,
        "device": args.device,
    }
    out = [f"{k}={v}" for k, v in pairs.items() if v is not None]
    if args.box is not None:
        out.append(f"target.box=[{', '.join(map(str, args.box))}]")
    if args.context_range is not None:
        out.append(f"target.context_range=[{args.context_range[0]}, {args.context_range[1]}]")
    if args.hidden is not None:
        out.append(f"family.hidden=[{', '.join(map(str, args.hidden))}]")
    if args.stl:
        out.append("objective.stl=true")
    if args.no_figures:
        out.append("figures=false")
    return out + list(args.set or [])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` (what each worker runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _device_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--device",
        type=_device,
        help=f"where to compute: auto (CUDA when present), cpu, cuda, cuda:N (default {default})",
    )


def _device(text: str) -> str:
    from vilab.core.device import check_device_spec

    try:
        return check_device_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _run_dir_options(p: argparse.ArgumentParser, default: str) -> None:
    """``--out``, ``--resume``, ``--overwrite``, ``--no-progress`` (vilab.train.rundir)."""
    p.add_argument("--out", help=f"run directory (default {default}, made unique)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint, with its own config.yaml "
        "(other options may change budgets, logging and evaluation, e.g. --steps)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (refused otherwise)"
    )
    p.add_argument("--no-progress", action="store_true")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vilab", description="Variational inference with flows.")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a family to a 2-D energy, the banana or your log-density")
    f.add_argument("--config", help="YAML config file (see configs/)")
    f.add_argument(
        "--target",
        help="U1..U4, banana, banana_family, a posterior with a known answer (funnel2, "
        "funnel10, gaussian_ill10, gaussian_ill100, mixture, logistic_breast_cancer), or "
        "module:function / file.py:function",
    )
    f.add_argument(
        "--family",
        help="mean_field, full_rank, planar, radial, iaf, "
        "sylvester_{orthogonal,householder,triangular}, affine_coupling, spline_coupling, "
        "spline_autoregressive, naf",
    )
    f.add_argument("--layers", type=int, help="flow depth K")
    f.add_argument("--base", help="base of a flow: standard, mean_field, full_rank")
    f.add_argument("--hidden", type=int, nargs="+", help="MADE hidden widths (IAF)")
    f.add_argument("--steps", type=int)
    f.add_argument("--samples", type=int, help="samples of q per step")
    f.add_argument("--lr", type=float)
    f.add_argument("--seed", type=int)
    f.add_argument("--beta-steps", type=int, help="β-annealing over this many steps (0: off)")
    f.add_argument("--stl", action="store_true", help="sticking-the-landing gradients")
    f.add_argument("--max-seconds", type=float, help="stop training after this long")
    f.add_argument("--eval-samples", type=int, help="samples for the exact KL")
    f.add_argument("--dim", type=int, help="dimension of a user target")
    f.add_argument("--box", type=float, nargs=4, metavar=("X0", "X1", "Y0", "Y1"))
    f.add_argument("--log-z", type=float, help="known log-normalizer of a user target")
    f.add_argument("--context-dim", type=int, help="context size of a user target family")
    f.add_argument("--context-range", type=float, nargs=2, metavar=("LO", "HI"))
    f.add_argument(
        "--support",
        metavar="SUPPORT",
        help="where a user target's density is positive: real, positive, or one [lo, hi] "
        "per coordinate in YAML, null for no bound (e.g. '[[0, null], [-1, 1]]'); q is "
        "mapped onto it",
    )
    f.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config key, e.g. optim.schedule=constant",
    )
    f.add_argument("--no-figures", action="store_true", help="skip the figures (figures=false)")
    _device_option(f, "auto")
    _run_dir_options(f, "runs/<target>_<family>")

    t = sub.add_parser("train", help="train a VAE with an amortized flexible posterior")
    t.add_argument("--config", help="YAML config file (see configs/vae_*.yaml)")
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config key, e.g. posterior.kind=iaf",
    )
    t.add_argument(
        "--data-dir", help="directory with mnist/ and binarized_mnist/ (default $VILAB_DATA_DIR)"
    )
    t.add_argument("--steps", type=int)
    t.add_argument("--seed", type=int)
    _device_option(t, "auto")
    _run_dir_options(t, "runs/vae_<posterior>")
    t.add_argument(
        "--nproc",
        type=_positive,
        help="data-parallel processes on this machine (runs torchrun --standalone)",
    )

    e = sub.add_parser("eval", help="importance-sampled log p(x) of a trained VAE run")
    e.add_argument("run_dir")
    e.add_argument(
        "--samples",
        type=_positive,
        help="importance samples per image (default: the run's eval.samples)",
    )
    e.add_argument("--chunk", type=_positive, help="samples drawn at once (bounds memory)")
    e.add_argument("--batch", type=_positive, help="images evaluated at once")
    e.add_argument("--split", default="test", choices=["test", "valid"])
    e.add_argument("--data-dir")
    e.add_argument(
        "--method", default="is", choices=["is", "ais"], help="importance sampling or annealed IS"
    )
    e.add_argument("--images", type=_positive, help="evaluate only the first N images")
    e.add_argument("--chains", type=_positive, default=16, help="AIS chains per image")
    e.add_argument(
        "--num-dists", type=_positive, default=500, help="AIS intermediate distributions"
    )
    e.add_argument(
        "--leapfrog", type=_positive, default=5, help="AIS leapfrog steps per transition"
    )
    e.add_argument("--init", default="posterior", choices=["posterior", "prior"], help="AIS start")
    e.add_argument("--nproc", type=_positive, help="share the images among N processes")
    _device_option(e, "the run's device setting")

    d = sub.add_parser("demo", help="fit U1–U4 and the banana; one figure and a KL table")
    d.add_argument("--out", default="runs/demo")
    d.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="config overrides for every fit"
    )
    d.add_argument("--workers", type=int, help="parallel processes (default: CPU count)")
    _device_option(d, "auto")

    c = sub.add_parser(
        "compare", help="one table and one figure across finished runs (families × targets × seeds)"
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or folders of runs")
    c.add_argument("--figure", default="compare.png", help="where to write the figure")
    c.add_argument("--no-figure", action="store_true", help="print the table only")
    return p


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
        from vilab.evaluation import check_train_run

        check_train_run(Path(args.run_dir))
        return
    config = _train_config(args, _stored_config(args))
    if config.data.batch_size < args.nproc:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} is smaller than --nproc {args.nproc}: "
            "every process needs at least one image of each global batch"
        )


def _cmd_fit(args: argparse.Namespace) -> int:
    from vilab.train.fit import fit
    from vilab.train.rundir import unique_dir

    config = load_fit_config(args.config, _fit_overrides(args), _stored_config(args))
    name = f"{config.target.name.rpartition(':')[2]}_{config.family.kind}"
    out = Path(args.out) if args.out else unique_dir(Path("runs") / name)
    progress, resume, overwrite = not args.no_progress, args.resume, args.overwrite
    metrics = fit(config, out, progress, resume, overwrite=overwrite)
    shown = {k: v for k, v in metrics.items() if k not in ("kl_by_context", "report")}
    card = None
    if "report" in metrics:
        from vilab.report import format_card

        title = f"report card: {metrics['target']} · {metrics['family']}"
        card = format_card(metrics["report"], title)
    return _finished("fit", out, shown, card)


def _cmd_demo(args: argparse.Namespace) -> int:
    from vilab.demo import run_demo

    overrides = ([f"device={args.device}"] if args.device else []) + list(args.set or [])
    run_demo(args.out, overrides, args.workers)
    print((Path(args.out) / "kl_table.md").read_text(), end="")
    print(f"figure: {Path(args.out) / 'demo.png'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from vilab.compare import compare

    figure = None if args.no_figure else Path(args.figure)
    text, _ = compare(args.runs, figure)
    print(text, end="")
    if figure is not None:
        print(f"figure: {figure}")
    return 0


def _train_config(args: argparse.Namespace, base: dict | None = None) -> TrainConfig:
    from vilab.config import load_train_config

    pairs = [("steps", args.steps), ("seed", args.seed), ("device", args.device)]
    overrides = [f"{k}={v}" for k, v in pairs if v is not None]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    return load_train_config(args.config, overrides + list(args.set or []), base)


def _cmd_train(args: argparse.Namespace, world: World) -> int:
    from vilab.train.rundir import unique_dir
    from vilab.train.vae import train_vae

    config = _train_config(args, _stored_config(args, world))
    name = Path("runs") / f"vae_{config.posterior.kind}"
    out = Path(args.out) if args.out else world.broadcast(unique_dir(name))
    progress, resume = not args.no_progress, args.resume
    metrics = train_vae(config, out, progress, resume, world=world, overwrite=args.overwrite)
    if not world.is_main:
        return 0
    return _finished("train", out, metrics)


def _cmd_eval(args: argparse.Namespace, world: World) -> int:
    from vilab.evaluation import evaluate_run

    result = evaluate_run(
        args.run_dir,
        args.samples,
        args.chunk,
        args.batch,
        args.split,
        args.data_dir,
        args.method,
        args.chains,
        args.num_dists,
        args.leapfrog,
        args.images,
        args.init,
        world,
        device=args.device,
    )
    if world.is_main:
        print(json.dumps(result, indent=2))
    return 0
