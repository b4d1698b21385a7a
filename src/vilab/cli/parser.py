"""The command line's parser: every command's options, and ``vilab fit``'s options as config
overrides (one table, :data:`FIT_OPTIONS`, serves both)."""

from __future__ import annotations

import argparse
from typing import Any

#: ``vilab fit``'s options: flag -> (config key, argparse keywords). One table serves the
#: parser and :func:`_fit_overrides`.
FIT_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "--target": (
        "target.name",
        {
            "help": "U1..U4, banana, banana_family, a posterior with a known answer (funnel2, "
            "funnel10, gaussian_ill10, gaussian_ill100, mixture, logistic_breast_cancer), or "
            "module:function / file.py:function, or a Stan program stan:model.stan"
        },
    ),
    "--family": (
        "family.kind",
        {
            "help": "mean_field, full_rank, planar, radial, iaf, "
            "sylvester_{orthogonal,householder,triangular}, affine_coupling, spline_coupling, "
            "spline_autoregressive, naf, stack, uivi"
        },
    ),
    "--layers": ("family.layers", {"type": int, "help": "flow depth K"}),
    "--base": ("family.base", {"help": "base of a flow: standard, mean_field, full_rank"}),
    "--hidden": ("family.hidden", {"type": int, "nargs": "+", "help": "MADE hidden widths"}),
    "--steps": ("steps", {"type": int}),
    "--samples": ("samples", {"type": int, "help": "samples of q per step"}),
    "--lr": ("optim.lr", {"type": float}),
    "--seed": ("seed", {"type": int}),
    "--beta-steps": (
        "objective.beta_steps",
        {"type": int, "help": "β-annealing over this many steps (0: off)"},
    ),
    "--stl": (
        "objective.stl",
        {"action": "store_const", "const": True, "help": "sticking-the-landing gradients"},
    ),
    "--max-seconds": ("max_seconds", {"type": float, "help": "stop training after this long"}),
    "--eval-samples": ("eval_samples", {"type": int, "help": "samples for the exact KL"}),
    "--data": ("target.data", {"help": "data of a Stan target (stan:model.stan): a JSON file"}),
    "--dim": ("target.dim", {"type": int, "help": "dimension of a user target"}),
    "--box": ("target.box", {"type": float, "nargs": 4, "metavar": ("X0", "X1", "Y0", "Y1")}),
    "--log-z": ("target.log_z", {"type": float, "help": "known log-normalizer of a user target"}),
    "--context-dim": (
        "target.context_dim",
        {"type": int, "help": "context size of a user target family"},
    ),
    "--context-range": (
        "target.context_range",
        {"type": float, "nargs": 2, "metavar": ("LO", "HI")},
    ),
    "--support": (
        "target.support",
        {
            "metavar": "SUPPORT",
            "help": "where a user target's density is positive: real, positive, or one "
            "[lo, hi] per coordinate in YAML, null for no bound (e.g. '[[0, null], [-1, 1]]'); "
            "q is mapped onto it",
        },
    ),
    "--posteriordb": (
        "target.posteriordb",
        {"help": "posteriordb folder (default: $POSTERIOR_DB_PATH)"},
    ),
    "--no-figures": (
        "figures",
        {"action": "store_const", "const": False, "help": "skip the figures (figures=false)"},
    ),
    "--device": ("device", {}),  # added by _device_option
}


def _fit_overrides(args: argparse.Namespace) -> list[str]:
    """Command-line options as config overrides (``--set`` ones come last and win)."""
    out = []
    for flag, (key, _) in FIT_OPTIONS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):
            value = f"[{', '.join(map(str, value))}]"
        if value is not None:
            out.append(f"{key}={value}")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vilab", description="Variational inference with flows.")
    sub = p.add_subparsers(dest="command", required=True)
    _fit_parser(sub)
    _train_parser(sub)
    _eval_parser(sub)
    _demo_parser(sub)
    _draws_parser(sub)
    c = sub.add_parser(
        "compare", help="one table and one figure across finished runs (families × targets × seeds)"
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or folders of runs")
    c.add_argument("--figure", default="compare.png", help="where to write the figure")
    c.add_argument("--no-figure", action="store_true", help="print the table only")
    return p


def _fit_parser(sub: Any) -> None:
    f = sub.add_parser("fit", help="fit a family to a 2-D energy, the banana or your log-density")
    f.add_argument("--config", help="YAML config file (see configs/)")
    for flag, (_, options) in FIT_OPTIONS.items():
        if flag != "--device":
            f.add_argument(flag, **options)
    _set_option(f, "optim.schedule=constant")
    _device_option(f, "auto")
    _run_dir_options(f, "runs/<target>_<family>")


def _set_option(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help=f"any config key, e.g. {example}"
    )


def _train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train a VAE with an amortized flexible posterior")
    t.add_argument("--config", help="YAML config file (see configs/vae_*.yaml)")
    _set_option(t, "posterior.kind=iaf")
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


def _eval_parser(sub: Any) -> None:
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
    e.add_argument(
        "--ais",
        default="fast",
        choices=["fast", "classic"],
        help="AIS settings: fast (4 chains × 700 distributions of 1 leapfrog step with "
        "partial momentum, a pilot chain steering ε, up to 1000 images at once on the CPU) "
        "or classic (before: 16 chains × 500 distributions, 5 leapfrog steps, 100 images "
        "at a time); the options below replace the preset's",
    )
    e.add_argument("--chains", type=_positive, help="AIS chains per image")
    e.add_argument("--num-dists", type=_positive, help="AIS intermediate distributions")
    e.add_argument("--leapfrog", type=_positive, help="AIS leapfrog steps per transition")
    e.add_argument("--init", default="posterior", choices=["posterior", "prior"], help="AIS start")
    e.add_argument("--nproc", type=_positive, help="share the images among N processes")
    _device_option(e, "the run's device setting")


def _demo_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="fit U1–U4 and the banana; one figure and a KL table")
    d.add_argument("--out", default="runs/demo")
    _set_option(d, "steps=2000 (for every fit)")
    d.add_argument("--workers", type=int, help="parallel processes (default: CPU count)")
    _device_option(d, "auto")


def _draws_parser(sub: Any) -> None:
    d = sub.add_parser(
        "draws", help="draws of a finished fit as ArviZ data (netCDF): named, constrained, weighted"
    )
    d.add_argument("run_dir", metavar="RUN", help="a finished `vilab fit` run directory")
    d.add_argument("--n", type=_positive, default=4000, help="draws of q (default 4000)")
    d.add_argument("--out", required=True, help="the netCDF file to write (never overwritten)")
    d.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
