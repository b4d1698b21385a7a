"""Benchmark: vilab on one GPU against plain PyTorch on the same GPU, in ≤ 8 minutes.

What it prints, part by part (``--part``; all by default), for the device ``--device``
(``auto``: the current CUDA device, else the CPU — then every part runs on the CPU at the
sizes given, and says so):

(devices) **The device tests**: ``python -m pytest -q tests/test_devices.py`` in a
    subprocess on this machine (skipped, with a message, if the file is absent).

(train) **Training images/s** of seed 004's mean-field and IAF models
    (``configs/vae_seed004_mean_field.yaml``, ``configs/vae_seed004_iaf.yaml``: MLP
    784-256-256, z = 128, batch 128; centered RMSprop / Adam with EMA 0.999) by vilab —
    ``VAETrainer(config).train_step(log_value=False)`` with ``device`` set, eager and, with
    ``--compile`` (on by default on a GPU), ``compile=true`` — against a plain eager
    PyTorch loop of the same model on the same device, written here without vilab:
    ``nn.Sequential`` MLPs, reparameterization, Bernoulli log-likelihood by
    ``binary_cross_entropy_with_logits``, analytic KL (mean-field) or a MADE-based IAF
    step (gated update, sigmoid bias +2, order reversed between steps, context added in
    the MADE's first layer), the same optimizer (torch's default implementation; vilab
    picks fused Adam and capturable RMSprop on a GPU) and EMA, the same batch, the
    training set already on the device and batches cut by indexing with a permutation
    drawn there, no host read in the step.
    Every row starts from vilab's initial weights (checked: the −ELBO of one batch with
    the same noise). ``--train-warmup`` steps first (compilation and CUDA graph capture
    happen there: their time is reported, not counted), then ``--train-rounds`` rounds of
    ``--train-steps`` steps, rows alternating; the median images/s of each row. On CUDA
    every clock is read after ``torch.cuda.synchronize()``.

(eval) **Seconds per 1000 test images × 1000 importance samples** of log p(x):
    ``vilab.evaluation.evaluate`` (``--eval-batch`` images × ``--eval-chunk`` samples at
    a time; by default vilab's own sizing for the device) against the plain per-image
    loop (the K samples of one image at once, a log-sum-exp, the next image), both on
    the same weights (vilab's after (train), copied) and the same device;
    ``--eval-rounds`` rounds of ``--eval-images`` images, alternating. That both compute
    the same thing is checked exactly: the log-weights of one image with the same noise.

(precision) **bf16 against float32**: seed 004's ``--precision-model`` trained
    ``--precision-steps`` steps from the same seed with ``precision=float32`` and with
    ``precision=bf16`` (networks under bfloat16 autocast, log-densities in float32), the
    training bound logged every step; then the test NLL of each (``evaluate``,
    ``--precision-images`` × ``--precision-samples``, same seed), their difference, and the
    largest gap between the two bound trajectories (means over windows of
    ``--precision-window`` steps). Runs on the CPU too (bf16 autocast works there).

(seed002) **Seed 002's configuration** (``configs/vae_seed002_resnet_iaf.yaml``: ResNet
    encoder and decoder with 64 feature maps, z = 64, 8-step IAF, dynamic binarization)
    trained for the minutes left of ``--minutes``, its validation NLL (``--seed002-valid-
    images`` × ``--seed002-valid-samples`` importance samples) every
    ``--seed002-every`` seconds against wall-clock (which includes start-up, compilation
    and the validations; the training time column does not).

Goals (the issue's): training ≥ 2× the plain eager loop's images/s for both seed 004
models; evaluation ≥ 5× faster than the plain per-image loop; bf16 within 0.1 nats of
float32. On a CPU the figures are printed but are not the GPU goals' setting.

Run::

    make bench-gpu                                          # everything, ≤ 8 min on a GPU
    .venv/bin/python benchmarks/gpu.py --part train|eval|precision|seed002|devices|all
    .venv/bin/python benchmarks/gpu.py --part precision --device cpu   # bf16 on a CPU
    .venv/bin/python benchmarks/gpu.py --quick              # smoke run, seconds (CPU)

Data: Larochelle's static binarized MNIST (seed 004) and MNIST (seed 002, dynamic) from
``--data-dir``, else ``$VILAB_DATA_DIR``, else ``../shared/data`` beside the repository.
Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import baselines
import common
import torch
from common import REPO, SEED004, Estimate, Row, clock, goal_line, join_notes
from torch import Tensor, nn

from vilab.commands.train import validate as validate_vae
from vilab.config import TrainConfig, load_train_config
from vilab.evaluation import evaluate
from vilab.train.vae import VAETrainer
from vilab.vae import VAE

SEED002 = REPO / "configs" / "vae_seed002_resnet_iaf.yaml"
SEED002_NLL = 78.74  # REFERENCE.md §3: test, 1000 IS, after 2500 epochs
DEVICE_TESTS = ["tests/test_devices.py", "tests/test_pyro.py"]
# The goals of the issue.
TRAIN_SPEEDUP_GOAL = 2.0  # vilab images/s ≥ 2 × the plain eager loop's
EVAL_SPEEDUP_GOAL = 5.0  # vilab evaluation ≥ 5 × faster than the plain per-image loop
BF16_GOAL = 0.1  # |test NLL(bf16) − test NLL(float32)| ≤ 0.1 nats
AGREE_SIGMAS = 3.0
SAME_TOL = 1e-4  # same-noise log-weights: relative difference of float32 rounding
# --quick shrinks seed 002's model to seconds on a CPU
SEED002_QUICK = [
    "encoder.channels=4",
    "encoder.features=16",
    "decoder.channels=4",
    "posterior.layers=2",
    "posterior.hidden=[16, 16]",
    "data.batch_size=8",
]


# -- the device ----------------------------------------------------------------------------------
def resolve(spec: str) -> torch.device:
    """``--device`` as a ``torch.device`` (vilab's rule: ``auto`` is the current GPU, else
    the CPU; a GPU that is not there is an error)."""
    from vilab.core.device import resolve_device

    return resolve_device(spec)


# -- the shared set-up -------------------------------------------------------------------------
class Setup(common.Seed004):
    """The command line, the device, the data of seed 004 (loaded once) and the trainers
    that later parts reuse."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        super().__init__(args, device)
        self.device: torch.device = device
        self.trained: dict[str, VAETrainer] = {}  # (train)'s vilab models, for (eval)


# -- (devices) ---------------------------------------------------------------------------------
def part_devices(s: Setup) -> dict[str, Any]:
    args = s.args
    print("## (devices) The device tests\n")
    missing = [t for t in args.devices_test if not (REPO / t).is_file()]
    if missing:
        print(f"Skipped: {', '.join(missing)} not in this checkout.\n", flush=True)
        return {"skipped": f"{', '.join(missing)} not found"}
    paths = [str(REPO / t) for t in args.devices_test]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths]
    if args.quick:
        cmd.append("--collect-only")  # --quick: that they import and collect, not a run
    env = dict(os.environ)
    if s.data_dir:
        env["VILAB_DATA_DIR"] = s.data_dir
    if s.device.type == "cuda" and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = str(s.device.index)  # the tests' cuda is --device's
    shown = " ".join(["python", *cmd[1:]]).replace(str(REPO) + "/", "")
    print(f"`{shown}` on {s.device} ({'CUDA present' if torch.cuda.is_available() else 'no GPU'})")
    t0 = clock()
    try:
        r = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.devices_timeout
        )
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as err:
        rc = None
        text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
    seconds = clock() - t0
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else "(no output)"
    if rc is None:
        summary = f"timed out after {args.devices_timeout:g} s"
    print(f"→ {summary} ({seconds:.0f} s, exit status {rc})\n")
    if rc != 0:
        print("```\n" + "\n".join(lines[-40:]) + "\n```\n")
    sys.stdout.flush()
    return {"command": shown, "returncode": rc, "summary": summary, "seconds": seconds}


# -- (train) -----------------------------------------------------------------------------------
def plain_step(model: nn.Module, config: TrainConfig, data: Tensor) -> common.Step:
    """One eager step of the plain loop: the preset's optimizer and EMA from torch, full
    shuffled batches cut on the data's device, no host read (the loss stays there)."""
    o = config.optim
    optimizer = baselines.plain_optimizer(model, o.name, o.lr)
    batches = baselines.shuffled_batches(data, config.data.batch_size, full_only=True)
    step = baselines.vae_step(model, optimizer, batches, o.ema)
    return lambda: (step()[0], None)


def train_model(s: Setup, name: str) -> dict[str, Any]:
    """The rows of one seed 004 model: plain eager, vilab eager, vilab compiled."""
    args, device = s.args, s.device
    models: dict[str, VAETrainer | nn.Module] = {}
    errors: dict[str, str] = {}
    eager = s.trainer(name)
    config = eager.config
    models["vilab"] = eager
    if args.compile:
        models["vilab_compiled"] = s.trainer(name, compile=True)
    plain = baselines.PLAIN[name]().to(device)
    baselines.copy_parameters(eager.vae, plain)
    models["plain"] = plain
    train = s.data.train.dataset.tensor().to(device)
    labels = {
        "plain": "plain eager PyTorch loop: **the floor**",
        "vilab": "vilab `train_step`, eager",
        "vilab_compiled": "vilab `train_step`, `compile=true`",
    }
    steps = {
        key: plain_step(m, config, train)
        if isinstance(m, nn.Module)
        else common.vilab_step(m, log_value=False)
        for key, m in models.items()
    }
    where = {
        k: str(common.model_device(m.vae if isinstance(m, VAETrainer) else m))
        for k, m in models.items()
    }
    x0 = train[: config.data.batch_size]
    check = {k: common.neg_elbo(m, x0, args.seed) for k, m in models.items()}

    common.set_tf32(args.tf32)
    # A compiled step recompiles once for the epoch's last, smaller batch: its warm-up
    # runs past that batch, so that the recompilation is reported with the compilation.
    batch = config.data.batch_size
    warm_steps = {k: args.train_warmup for k in steps}
    if "vilab_compiled" in steps and len(train) % batch:
        warm_steps["vilab_compiled"] = max(args.train_warmup, len(train) // batch + 2)
    warm: dict[str, float] = {}
    for key, step in list(steps.items()):
        try:
            warm[key] = common.time_block(step, warm_steps[key], device)[1]
        except Exception as err:  # a failed compile is reported, the others go on
            errors[key] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            steps.pop(key)
    table = {key: Row(labels[key]) for key in steps}
    names = list(steps)
    common.race(
        table,
        steps,
        args.train_rounds,
        args.train_steps,
        device,
        lambda r: (
            f"  {name} round {r + 1}/{args.train_rounds}: "
            + ", ".join(f"{k} {table[k].rates[-1]:,.0f}" for k in names)
            + " images/s"
        ),
    )
    after_x = s.test(0, min(1000, len(s.data.test)))
    after = {k: common.neg_elbo(models[k], after_x, args.seed) for k in names}
    goal_key = "vilab_compiled" if "vilab_compiled" in table else "vilab"
    plain_rate = table["plain"].median if "plain" in table else math.nan
    ratios = {k: table[k].median / plain_rate for k in names if k != "plain"}
    s.trained[name] = models[goal_key]  # type: ignore[assignment]
    return {
        "rows": {
            k: {
                "label": t.label,
                "rates": t.rates,
                "median": t.median,
                "warmup_seconds": warm[k],
                "warmup_steps": warm_steps[k],
            }
            for k, t in table.items()
        },
        "errors": errors,
        "same_noise_neg_elbo": check,
        "neg_elbo_after": after,
        "devices": where,
        "ratios": ratios,
        "goal_row": goal_key,
        "goal_ratio": ratios.get(goal_key, math.nan),
        "parameters": {
            "vilab": common.parameter_count(eager.vae),
            "plain": common.parameter_count(plain),
        },
        "batch": config.data.batch_size,
        "optimizer": config.optim.name + (f" + EMA {config.optim.ema}" if config.optim.ema else ""),
        "steps_trained": warm_steps[goal_key] + args.train_rounds * args.train_steps,
    }


def part_train(s: Setup) -> dict[str, Any]:
    args = s.args
    print("## (train) Training images/s, seed 004's models: vilab against a plain eager loop\n")
    print(
        f"On {s.device}, float32{' with TF32' if args.tf32 else ''}; every row trains its own "
        f"copy of vilab's initial weights on the training set held on the device"
        + (
            " (vilab's optimizers on a GPU: fused Adam, capturable RMSprop; the plain loop's: "
            "torch's defaults)"
            if s.device.type == "cuda"
            else ""
        )
        + f". At least {args.train_warmup} warm-up steps per row (compilation and graph "
        f"capture happen there: reported, not counted), then {args.train_rounds} rounds of "
        f"{args.train_steps} steps, rows alternating (order rotated each round); median "
        "images/s.\n",
        flush=True,
    )
    out = {name: train_model(s, name) for name in SEED004}
    print(
        "| model | implementation | images/s (median) | ms/step | min–max | warm-up | "
        "−ELBO, test, after |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in out.items():
        for key, row in r["rows"].items():
            med = row["median"]
            print(
                f"| {name} | {row['label']} | {med:,.0f} | {1e3 * r['batch'] / med:.2f} | "
                f"{min(row['rates']):,.0f}–{max(row['rates']):,.0f} | "
                f"{row['warmup_seconds']:.1f} s ({row['warmup_steps']}) | "
                f"{r['neg_elbo_after'][key]:.2f} |"
            )
    print()
    for name, r in out.items():
        spread = max(r["same_noise_neg_elbo"].values()) - min(r["same_noise_neg_elbo"].values())
        ratios = "; ".join(f"{k} / plain = **{v:.2f}**" for k, v in r["ratios"].items())
        print(
            f"- {name} ({r['parameters']['vilab']:,} parameters, {r['optimizer']}, batch "
            f"{r['batch']}; −ELBO of one batch, same noise, max |Δ| over rows {spread:.1e}; "
            f"vilab on {r['devices'].get('vilab')}): {ratios} (images/s; > 1: vilab faster)"
        )
        for key, err in r["errors"].items():
            print(f"  - {key}: not timed ({err})")
    print(
        "\n(Warm-up: seconds of the first steps (how many); a compiled row's runs past the "
        "first epoch's last, smaller batch, which recompiles. −ELBO after: the first 1000 test "
        "images, one z each, same noise for every row.)\n",
        flush=True,
    )
    return out


# -- (eval) ------------------------------------------------------------------------------------
def eval_sizes(vae: VAE, x: Tensor, k: int, chunk: int | None, batch: int | None) -> tuple:
    """The (chunk, batch) ``evaluate`` will use: the given ones, else vilab's own sizing for
    the device (``vilab.evaluation.eval_sizes``)."""
    try:
        from vilab.evaluation import eval_sizes as sizes
    except ImportError:  # a vilab without device sizing needs both
        return min(chunk or 100, k), batch or 20
    return sizes(vae, x, k, chunk, batch)


@torch.no_grad()
def same_noise_log_weights(vae: VAE, plain: nn.Module, x: Tensor, k: int, seed: int) -> float:
    """max |Δ| between vilab's and the plain model's K log-weights of one image drawn with
    the same noise: zero up to float32 rounding iff they compute the same thing."""
    vae.eval()
    torch.manual_seed(seed)
    a = vae.log_weights(x[:1], k)[:, 0]
    torch.manual_seed(seed)
    b = plain.log_weights(x[0], k)  # type: ignore[operator]
    vae.train()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1.0))


def eval_model(s: Setup, name: str) -> dict[str, Any]:
    args, device = s.args, s.device
    trainer = s.trained.get(name)
    if trainer is None:
        trainer = s.trainer(name)
        for _ in range(args.pretrain_steps):
            trainer.train_step(log_value=False)
    vae: VAE = trainer.vae
    plain = baselines.PLAIN[name]().to(common.model_device(vae))
    baselines.copy_parameters(vae, plain)
    k, n = args.eval_samples, args.eval_images
    x0 = s.test(0, n)
    chunk, batch = eval_sizes(vae, x0, k, args.eval_chunk, args.eval_batch)
    check = same_noise_log_weights(vae, plain, x0, min(k, 100), args.seed)

    def run_vilab(x: Tensor, seed: int) -> tuple[float, float]:
        r = evaluate(vae, x, k, chunk, batch, seed=seed)
        return r["log_px"], r["log_px_stderr"]

    def run_plain(x: Tensor, seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        values, errors = baselines.plain_log_px(plain, x, k)
        return float(values.mean()), common.combined_stderr(errors.tolist())

    runners = {"vilab": run_vilab, "plain": run_plain}
    for run in runners.values():  # lazy initialization (cuBLAS, allocator) is not timed
        run(s.test(0, 2), args.seed)
    est = {m: Estimate(m) for m in runners}
    common.race_estimates(
        est, runners, args.eval_rounds, lambda r: s.test(r * n, n), args.seed, device
    )
    summary = {
        m: {
            "log_px": e.mean,
            "stderr": e.stderr,
            "seconds_per_1000": e.median_seconds,
            "rounds": e.seconds_per_1000,
        }
        for m, e in est.items()
    }
    diff = summary["vilab"]["log_px"] - summary["plain"]["log_px"]
    bound = AGREE_SIGMAS * math.hypot(summary["vilab"]["stderr"], summary["plain"]["stderr"])
    return {
        "estimates": summary,
        "same_noise_rel_diff": check,
        "same": check <= SAME_TOL,
        "diff": diff,
        "bound": bound,
        "within_3_sigma": abs(diff) <= bound,
        "ratio": summary["plain"]["seconds_per_1000"] / summary["vilab"]["seconds_per_1000"],
        "samples": k,
        "images": n * args.eval_rounds,
        "batch": batch,
        "chunk": chunk,
        "steps_trained": trainer.step,
    }


def part_eval(s: Setup) -> dict[str, Any]:
    args = s.args
    print("## (eval) Importance-sampled log p(x): seconds per 1000 test images\n")
    out = {name: eval_model(s, name) for name in SEED004}
    any_r = next(iter(out.values()))
    sized = "given" if args.eval_chunk and args.eval_batch else "vilab's sizing for the device"
    print(
        f"On {s.device}, K = {any_r['samples']} samples per image, float32; vilab's weights "
        f"(after {any_r['steps_trained']} steps) copied into the plain model. vilab: "
        f"`evaluate`, {any_r['batch']} images × {any_r['chunk']} samples at a time ({sized}); "
        f"plain: one image at a time, its K samples at once, a log-sum-exp. "
        f"{args.eval_rounds} round(s) of {args.eval_images} test images, alternating; median "
        "time.\n"
    )
    print("| model | implementation | log p(x) | MC std. error | s / 1000 images |")
    print("|---|---|---:|---:|---:|")
    for name, r in out.items():
        for m, e in r["estimates"].items():
            label = "vilab `evaluate`" if m == "vilab" else "plain per-image loop"
            print(
                f"| {name} | {label} | {e['log_px']:.3f} | {e['stderr']:.3f} | "
                f"{e['seconds_per_1000']:.3f} |"
            )
    print()
    for name, r in out.items():
        print(
            f"- {name}: plain / vilab = **{r['ratio']:.2f}** (time; > 1: vilab faster). Same "
            f"computation: log-weights of one image with the same noise differ by "
            f"{r['same_noise_rel_diff']:.1e} (relative; {'≤' if r['same'] else '>'} "
            f"{SAME_TOL:g}). Estimates: vilab − plain = {r['diff']:+.3f} "
            f"({'within' if r['within_3_sigma'] else 'outside'} {AGREE_SIGMAS:g}σ = "
            f"{r['bound']:.3f}; the delta-method σ understates the error of a heavy-tailed "
            "weight distribution, e.g. of a barely trained model)"
        )
    print(flush=True)
    return out


# -- (precision) -------------------------------------------------------------------------------
def window_means(values: Sequence[float], w: int) -> list[float]:
    return [statistics.fmean(values[i : i + w]) for i in range(0, len(values), w)]


def part_precision(s: Setup) -> dict[str, Any]:
    args, device = s.args, s.device
    name = args.precision_model
    print(f"## (precision) bf16 against float32, seed 004's {name} model\n")
    n, k = args.precision_images, args.precision_samples
    runs: dict[str, dict[str, Any]] = {}
    x = s.test(0, n)

    def train_and_test(t: VAETrainer) -> dict[str, Any]:
        steps = args.precision_steps
        bounds, seconds = common.time_block(lambda: t.train_step().values["bound"], steps, device)
        seed, chunk, batch = args.seed + 5, args.eval_chunk, args.eval_batch
        (r,), eval_seconds = common.time_block(
            lambda: evaluate(t.eval_vae, x, k, chunk, batch, seed=seed), 1, device
        )
        return {"bounds": bounds, "seconds": seconds, "test": r, "eval_seconds": eval_seconds}

    for precision in ("float32", "bf16"):
        runs[precision] = run = train_and_test(s.trainer(name, precision=precision))
        print(
            f"  {precision}: {args.precision_steps} steps in {run['seconds']:.1f} s, "
            f"test NLL {run['test']['nll']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    w = args.precision_window or max(1, args.precision_steps // 20)
    f32, b16 = (window_means(runs[p]["bounds"], w) for p in ("float32", "bf16"))
    gaps = [abs(a - b) for a, b in zip(f32, b16)]
    nll = {p: runs[p]["test"]["nll"] for p in runs}
    se = {p: runs[p]["test"]["log_px_stderr"] for p in runs}
    diff = nll["bf16"] - nll["float32"]
    print(
        f"On {device}; both runs from seed {args.seed} (same initial weights, batches and "
        f"noise stream), {args.precision_steps} steps, eager; test NLL by `evaluate` on "
        f"the first {n} test images × {k} samples, same seed for both.\n"
    )
    print(
        "| precision | training time | bound, last window | test NLL | MC std. error | eval time |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for p, r in runs.items():
        last = window_means(r["bounds"], w)[-1]
        print(
            f"| {p} | {r['seconds']:.1f} s | {last:.2f} | {nll[p]:.3f} | {se[p]:.3f} | "
            f"{r['eval_seconds']:.1f} s |"
        )
    print(
        f"\n**test NLL bf16 − float32 = {diff:+.3f} nats** (MC errors {se['float32']:.3f}, "
        f"{se['bf16']:.3f}); training bound trajectories, means over windows of {w} steps: "
        f"max |Δ| = {max(gaps):.3f}, last window |Δ| = {gaps[-1]:.3f} nats.\n",
        flush=True,
    )
    return {
        "model": name,
        "steps": args.precision_steps,
        "window": w,
        "nll": nll,
        "stderr": se,
        "diff": diff,
        "max_window_gap": max(gaps),
        "last_window_gap": gaps[-1],
        "runs": runs,
    }


# -- (seed002) ---------------------------------------------------------------------------------
def part_seed002(s: Setup, budget: float, note: str) -> dict[str, Any]:
    """Trains seed 002's preset for ``budget`` seconds of wall-clock (``note`` says how
    the budget came about), validating every ``--seed002-every`` seconds."""
    args, device = s.args, s.device
    print("## (seed002) Seed 002's ResNet VAE + 8-step IAF: validation NLL against wall-clock\n")
    if budget < args.seed002_min_seconds:
        print(
            f"Skipped: {budget:.0f} s left of --minutes {args.minutes:g} "
            f"(needs ≥ {args.seed002_min_seconds:g} s).\n",
            flush=True,
        )
        return {"skipped": f"{budget:.0f} s left"}
    t_start = clock()
    extra = [f"threads={args.threads}", f"seed={args.seed}", *common.data_override(s.data_dir)]
    extra += common.runtime(device, args.seed002_precision, args.tf32, args.compile)
    extra += [f"eval.valid_images={args.seed002_valid_images}"]
    extra += [f"eval.valid_samples={args.seed002_valid_samples}"]
    if args.quick:
        extra += SEED002_QUICK
    extra += args.seed002_set
    config = load_train_config(SEED002, extra)
    trainer = VAETrainer(config)
    per_epoch = len(trainer.data.train.dataset) / config.data.batch_size
    e = config.eval
    points: list[dict[str, Any]] = []
    bounds: list[float] = []  # the bound every 50 steps since the last validation

    def validate() -> None:
        t0 = clock(device)
        v = validate_vae(trainer)
        now = clock(device)
        points.append(
            {
                "wall": now - t_start,
                "step": trainer.step,
                "train_seconds": trainer.seconds,
                "valid_nll": -v["valid_log_px"],
                "valid_neg_elbo": -v["valid_elbo"],
                "bound": statistics.fmean(bounds) if bounds else math.nan,
                "validation_seconds": now - t0,
            }
        )
        print(
            f"  seed002 {points[-1]['wall']:.0f} s: step {trainer.step}, valid NLL "
            f"{points[-1]['valid_nll']:.2f}",
            file=sys.stderr,
            flush=True,
        )
        bounds.clear()
        trainer.start_clock()

    validate()
    reserve = 1.5 * points[0]["validation_seconds"] + 2.0  # the last validation
    next_eval = clock() - t_start + args.seed002_every
    max_steps = args.seed002_steps or config.steps
    while trainer.step < max_steps:
        wall = clock() - t_start
        if wall >= budget - reserve:
            break
        log = trainer.step % 50 == 0
        r = trainer.train_step(log_value=log)
        if log:
            bounds.append(r.values["bound"])
        if wall >= next_eval:
            validate()
            next_eval = clock() - t_start + args.seed002_every
    if points[-1]["step"] != trainer.step:
        validate()
    params = sum(p.numel() for p in trainer.vae.parameters())
    print(
        f"`configs/vae_seed002_resnet_iaf.yaml` on {device}, "
        f"{args.seed002_precision}{', compiled' if args.compile else ''}"
        f"{', quick-sized model' if args.quick else ''}: {params:,} parameters, batch "
        f"{config.data.batch_size}, KL warm-up over {config.objective.beta_steps:,} steps; "
        f"{note}. Validation: the first {e.valid_images} validation "
        f"images × {e.valid_samples} importance samples. Wall-clock counts start-up, "
        "compilation and validations; training time does not. Train bound: the mean of the "
        "ELBO logged every 50 steps since the row before.\n"
    )
    print(
        "| wall-clock | steps | epochs | training time | images/s, so far | train bound | "
        "valid −ELBO | valid NLL |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in points:
        rate = p["step"] * config.data.batch_size / p["train_seconds"] if p["train_seconds"] else 0
        print(
            f"| {p['wall'] / 60:.2f} min | {p['step']:,} | {p['step'] / per_epoch:.2f} | "
            f"{p['train_seconds']:.0f} s | {rate:,.0f} | "
            + (f"{p['bound']:.2f}" if math.isfinite(p["bound"]) else "–")
            + f" | {p['valid_neg_elbo']:.2f} | {p['valid_nll']:.2f} |"
        )
    best = min(points, key=lambda p: p["valid_nll"])
    print(
        f"\nBest validation NLL {best['valid_nll']:.2f} nats at {best['wall'] / 60:.2f} min "
        f"(step {best['step']:,}). Seed 002 reports a test NLL of {SEED002_NLL} nats "
        f"(1000 samples) after 2500 epochs ({config.steps:,} steps here): a few minutes are "
        "not comparable with that.\n",
        flush=True,
    )
    return {"points": points, "parameters": params, "best": best, "budget_seconds": budget}


# -- goals ------------------------------------------------------------------------------------
def goals(out: dict[str, Any], args: argparse.Namespace, device: torch.device) -> list[str]:
    quick = common.QUICK_NOTE if args.quick else ""
    cpu = "" if device.type == "cuda" else "on the CPU, not the GPU goal's setting"
    lines = []
    if "devices" in out and "returncode" in out["devices"]:
        d = out["devices"]
        ok = None if args.quick else d["returncode"] == 0
        note = "--quick: collected, not run" if args.quick else ""
        lines.append(goal_line(f"the device tests pass on {device}", d["summary"], ok, note))
    for name, r in out.get("train", {}).items():
        ratio = r["goal_ratio"]
        lines.append(
            goal_line(
                f"{name}: vilab training ≥ {TRAIN_SPEEDUP_GOAL:g}× the plain eager loop's "
                f"images/s ({r['goal_row']})",
                f"{ratio:.2f}×",
                ratio >= TRAIN_SPEEDUP_GOAL,
                join_notes(cpu, quick),
            )
        )
    for name, r in out.get("eval", {}).items():
        lines.append(
            goal_line(
                f"{name}: vilab IS evaluation ≥ {EVAL_SPEEDUP_GOAL:g}× faster than the plain "
                "per-image loop, computing the same log-weights",
                f"{r['ratio']:.2f}×",
                r["ratio"] >= EVAL_SPEEDUP_GOAL and r["same"],
                join_notes("same log-weights" if r["same"] else "log-weights DIFFER", cpu, quick),
            )
        )
    p = out.get("precision", {})
    if "diff" in p:
        lines.append(
            goal_line(
                f"bf16 within {BF16_GOAL:g} nats of float32 (test NLL, {p['steps']} steps of "
                f"{p['model']})",
                f"{p['diff']:+.3f} nats",
                abs(p["diff"]) <= BF16_GOAL,
                quick,
            )
        )
    s2 = out.get("seed002", {})
    if "best" in s2:
        b = s2["best"]
        lines.append(
            goal_line(
                f"seed 002's configuration (reference: {SEED002_NLL} nats test after 2500 epochs)",
                f"valid NLL {b['valid_nll']:.2f} after {b['wall'] / 60:.1f} min",
                None,
                join_notes("a curve, not a goal", quick),
            )
        )
    return lines


# -- command line ------------------------------------------------------------------------------
PARTS = {
    "devices": ("devices",),
    "train": ("train",),
    "eval": ("eval",),
    "precision": ("precision",),
    "seed002": ("seed002",),
    "all": ("devices", "train", "eval", "precision", "seed002"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = common.base_parser(__doc__, tuple(PARTS), "all")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [auto]")
    p.add_argument("--minutes", type=float, help="the whole run's budget [8; quick: 1]")
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="vilab's compile=true row and seed 002 compiled [auto: on on a GPU]",
    )
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls, every row alike [off]")
    d = p.add_argument_group("part (devices)")
    d.add_argument("--devices-test", nargs="+", default=DEVICE_TESTS, help="[%(default)s]")
    d.add_argument("--devices-timeout", type=float, help="seconds [300; quick: 120]")
    t = p.add_argument_group("part (train)")
    t.add_argument("--train-warmup", type=int, help="warm-up steps per row [50; quick: 2]")
    t.add_argument("--train-steps", type=int, help="steps per timed block [200; quick: 3]")
    t.add_argument("--train-rounds", type=int, help="alternating rounds [5; quick: 2]")
    e = p.add_argument_group("part (eval)")
    evals = common.eval_options(e, (10, 1000), (1, 2), "(eval) and (precision)")
    e.add_argument(
        "--pretrain-steps", type=int, help="without (train): vilab steps first [500; quick: 3]"
    )
    q = p.add_argument_group("part (precision)")
    q.add_argument("--precision-model", choices=tuple(SEED004), default="mean_field")
    q.add_argument("--precision-steps", type=int, help="steps per run [2000; quick: 10]")
    q.add_argument("--precision-images", type=int, help="test images [1000; quick: 10]")
    q.add_argument("--precision-samples", type=int, help="importance samples [1000; quick: 10]")
    q.add_argument("--precision-window", type=int, help="steps per window [steps / 20]")
    s = p.add_argument_group("part (seed002)")
    s.add_argument(
        "--seed002-precision", choices=("float32", "bf16"), help="[GPU bf16, CPU float32]"
    )
    s.add_argument("--seed002-every", type=float, help="seconds between validations [30; quick: 0]")
    s.add_argument("--seed002-valid-images", type=int, help="[1000; quick: 10]")
    s.add_argument("--seed002-valid-samples", type=int, help="[100; quick: 5]")
    s.add_argument("--seed002-steps", type=int, help="at most this many steps [preset; quick: 4]")
    s.add_argument("--seed002-min-seconds", type=float, default=30.0, help="or skip it [30]")
    s.add_argument(
        "--seed002-set", action="append", default=[], metavar="KEY=VALUE", help="more overrides"
    )
    args = p.parse_args(argv)
    defaults = {
        "minutes": (1.0, 8.0),
        "devices_timeout": (120.0, 300.0),
        "train_warmup": (2, 50),
        "train_steps": (3, 200),
        "train_rounds": (2, 5),
        **evals,
        "pretrain_steps": (3, 500),
        "precision_steps": (10, 2000),
        "precision_images": (10, 1000),
        "precision_samples": (10, 1000),
        "seed002_every": (0.0, 30.0),
        "seed002_valid_images": (10, 1000),
        "seed002_valid_samples": (5, 100),
        "seed002_steps": (4, None),
    }
    common.fill_defaults(args, defaults)
    positive = ["threads", "train_steps", "train_rounds", "eval_samples", "eval_images"]
    positive += ["eval_rounds", "eval_batch", "eval_chunk", "precision_steps"]
    positive += ["precision_images", "precision_samples", "precision_window"]
    positive += ["seed002_valid_images", "seed002_valid_samples", "seed002_steps"]
    common.require(p, args, positive)
    common.require(p, args, ["train_warmup", "pretrain_steps", "seed002_every"], 0)
    common.require(p, args, ["minutes", "devices_timeout"], 0, strict=True)
    try:
        args.resolved_device = resolve(args.device)
    except ValueError as err:
        p.error(str(err))
    gpu = args.resolved_device.type == "cuda"
    args.compile = args.compile == "on" or (args.compile == "auto" and gpu)
    if args.seed002_precision is None:
        args.seed002_precision = "bf16" if gpu else "float32"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    t_start = clock()
    args = parse_args(argv)
    device: torch.device = args.resolved_device
    deadline = t_start + 60.0 * args.minutes
    extra = [*common.device_lines(device), f"- budget: {args.minutes:g} min for the whole run"]
    out = common.start("vilab GPU benchmark", args, extra=extra)
    out["device"] = str(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    s = Setup(args, device)
    parts = PARTS[args.part]
    if "devices" in parts:
        out["devices"] = part_devices(s)
    if "train" in parts:
        out["train"] = part_train(s)
    if "eval" in parts:
        out["eval"] = part_eval(s)
    if "precision" in parts:
        out["precision"] = part_precision(s)
    if "seed002" in parts:
        left = deadline - clock()
        note = f"{left:.0f} s left of the {args.minutes:g} min budget" + (
            f", at most {args.seed002_steps} steps" if args.seed002_steps else ""
        )
        out["seed002"] = part_seed002(s, max(left, 60.0) if args.quick else left, note)
    out["seconds"] = clock() - t_start
    print(f"Whole run: {out['seconds'] / 60:.1f} min.\n")
    common.report_goals(out, goals(out, args, device), args.json)


if __name__ == "__main__":
    main()
