"""Benchmark: seed 004's VAE on static binarized MNIST, vilab vs pythae vs a plain loop.

The model (REFERENCE.md §3, seed 004): an MLP encoder 784-256-256 whose last layer gives
(loc, softplus scale) of a mean-field Gaussian q(z | x), z ∈ R^128; an MLP decoder
128-256-256-784 of Bernoulli logits; RMSprop (centered) lr 1e-3, batch 128. What it
measures, in one process on one machine:

(a) **Training throughput** (images/s) of that model trained from the same initial
    weights (vilab's, copied) by: vilab as its users drive it,
    ``VAETrainer(config).train_step()`` with ``configs/vae_seed004_mean_field.yaml``;
    pythae 0.1.2 the way its ``BaseTrainer.train_step`` does it — its ``BaseDataset`` in a
    ``DataLoader`` with its ``collate_dataset_output``, ``model(inputs, epoch=…)``,
    ``zero_grad``, ``loss.backward()``, ``optimizer.step()``, ``loss.item()`` — without the
    ``Trainer`` object itself (its callbacks, progress bars and checkpoints); and a plain
    PyTorch loop written here, the floor: ``nn.Sequential`` encoder and decoder,
    reparameterization, BCE-with-logits + analytic KL, optimizer step, fed by a
    ``DataLoader`` over a ``TensorDataset`` (the idiomatic floor, the one the goal uses).
    For reference, pythae's model and the plain loop are also timed on batches cut by
    plain tensor indexing. Warm-up, then timed blocks with the rows alternating (order
    rotated every round); the median rate of each row.

(b) **Seconds per 1000 test images** of the importance-sampled log p(x) with K = 1000
    samples per image, all three evaluating the same weights (vilab's model after (a),
    copied into the others): ``vilab.evaluation.evaluate`` (``--eval-batch`` images ×
    ``--eval-chunk`` samples at a time), pythae's ``VAE.get_nll`` (its loop over images,
    ``--pythae-batch`` samples at a time; run under ``torch.no_grad``, which it does not
    do itself) and the plain loop's per-image evaluation (K samples of one image at a
    time, as seed 004 and pythae do it). The estimates are printed side by side and
    checked to agree within 3 combined Monte Carlo standard errors.

(c) **Test NLL** (K = 5000) of seed 004's mean-field and IAF configurations
    (``configs/vae_seed004_mean_field.yaml``, ``configs/vae_seed004_iaf.yaml``) after
    30,000 steps of batch 128, and the training wall time, via
    ``vilab.commands.train.train_vae`` into ``--runs-dir``/<config> (overwritten). Only the
    presets' ``eval.batch``/``eval.chunk`` (500 × 500) are replaced, by ``--eval-batch`` ×
    ``--eval-chunk``: the same estimate, several times faster on a CPU.

Each part prints its goals with the measured figure and PASS/MISS; a summary ends the run.

Run (the peers live in their own environment, ``make bench-env``)::

    make bench-mnist                                          # parts (a) and (b), ≤ 5 min
    .venv-bench/bin/python benchmarks/mnist.py [--part a|b|c|ab|all] [--threads 2]
    .venv-bench/bin/python benchmarks/mnist.py --part c       # 2 × (≤ 10 min + test eval)
    .venv-bench/bin/python benchmarks/mnist.py --quick        # smoke run of every path

Data: Larochelle's static binarized MNIST (``vilab.data.load_dataset("binarized_mnist",
split)``) from ``--data-dir``, else ``$VILAB_DATA_DIR``, else ``../shared/data`` beside the
repository, else vilab's cache (downloaded on first use). pythae gets the same tensors.
Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import common
import torch
import torch.nn.functional as F
from baselines import (
    HIDDEN,
    LATENT,
    PIXELS,
    PlainVAE,
    cycle,
    mlp,
    plain_log_px,
    plain_optimizer,
    shuffled_batches,
    vae_step,
)
from common import SEED004, Estimate, Row, Step, goal_line, join_notes, neg_elbo, threads
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from vilab.commands.train import train_vae
from vilab.data.vae_data import load_vae_data
from vilab.evaluation import evaluate
from vilab.train.vae import VAETrainer
from vilab.vae import VAE

try:  # pythae is optional: without it the pythae rows say why
    from pythae.data.datasets import BaseDataset, DatasetOutput, collate_dataset_output
    from pythae.models import VAE as PythaeVAE
    from pythae.models import VAEConfig as PythaeVAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    PYTHAE_ERROR: str | None = None
except Exception as err:  # any failure (missing, broken dependency) means unavailable
    PYTHAE_ERROR = f"{type(err).__name__}: {err}"

IMAGE_SHAPE = (1, 28, 28)

# The goals of the issue.
TRAIN_SPEEDUP_GOAL = 2.0  # (a) vilab images/s ≥ 2 × the plain loop's (DataLoader)
EVAL_SPEEDUP_GOAL = 4.0  # (b) vilab evaluation ≥ 4 × faster than the plain per-image loop
NLL_GOALS = {"mean_field": 97.0, "iaf": 95.0}  # (c) test NLL (nats, K = 5000) at most
TRAIN_SECONDS_GOAL = 600.0  # (c) each trained in under 10 minutes
AGREE_SIGMAS = 3.0  # (b) estimates agree within this many combined MC standard errors


def pythae_version() -> str:
    if PYTHAE_ERROR is not None:
        return f"unavailable ({PYTHAE_ERROR})"
    try:
        return metadata.version("pythae")
    except metadata.PackageNotFoundError:
        return "installed"


# -- pythae ------------------------------------------------------------------------------------
def build_pythae(latent: int = LATENT, hidden: int = HIDDEN) -> Any:
    """pythae's ``VAE`` with custom encoder/decoder of the same architecture. pythae's
    encoder returns a log-variance: ``2 log softplus(ρ)`` gives the same q as vilab's
    softplus scale; its Bernoulli decoder returns probabilities (``bce`` loss)."""

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = mlp(PIXELS, hidden, 2 * latent)

        def forward(self, x: Tensor) -> Any:
            loc, rho = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
            return ModelOutput(embedding=loc, log_covariance=2.0 * F.softplus(rho).log())

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = mlp(latent, hidden, PIXELS)

        def forward(self, z: Tensor) -> Any:
            probs = torch.sigmoid(self.net(z))
            return ModelOutput(reconstruction=probs.reshape(z.shape[0], *IMAGE_SHAPE))

    config = PythaeVAEConfig(input_dim=IMAGE_SHAPE, latent_dim=latent, reconstruction_loss="bce")
    return PythaeVAE(config, encoder=Encoder(), decoder=Decoder())


def pythae_samples(samples: int, batch: int) -> tuple[int, int]:
    """The ``batch_size`` to pass to ``get_nll`` and the samples it then really draws:
    ``n_samples // batch_size`` batches, or one batch of ``batch_size`` (not n_samples)
    when ``n_samples ≤ batch_size`` — so the batch is capped at the samples here."""
    batch = min(batch, samples)
    return batch, (samples // batch) * batch


def pythae_step(model: Any, batches: Iterator[Any], dataset_size: int, lr: float) -> Step:
    """The body of pythae's ``BaseTrainer.train_step`` loop (its ``_optimizers_step`` and
    NaN check), without the trainer's callbacks."""
    optimizer = torch.optim.RMSprop(model.parameters(), lr=lr, centered=True)

    def step() -> tuple[int, float]:
        inputs = next(batches)
        if isinstance(inputs, Tensor):  # a batch cut by indexing
            inputs = DatasetOutput(data=inputs.view(-1, *IMAGE_SHAPE))
        output = model(inputs, epoch=1, dataset_size=dataset_size, uses_ddp=False)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        loss = output.loss.item()
        if loss != loss:
            raise ArithmeticError("NaN detected in train loss")
        return inputs["data"].shape[0], loss

    return step


# -- weights shared between the implementations ---------------------------------------------
def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def layers_of(model: nn.Module) -> tuple[list[nn.Linear], list[nn.Linear]]:
    """(encoder, decoder) linear layers in order; vilab's encoder side ends with the
    mean-field head of its amortized family."""
    if isinstance(model, VAE):
        return linears(model.posterior), linears(model.model.decoder)
    return linears(model.encoder), linears(model.decoder)


@torch.no_grad()
def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copies every linear layer of ``source`` into ``target`` (same architecture)."""
    for src, dst in zip(layers_of(source), layers_of(target), strict=True):
        if len(src) != len(dst):
            raise ValueError(f"{len(src)} vs {len(dst)} linear layers: not the same model")
        for a, b in zip(src, dst, strict=True):
            if a.weight.shape != b.weight.shape:
                raise ValueError(f"layer shapes {a.weight.shape} vs {b.weight.shape}")
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)


@torch.no_grad()
def same_noise_losses(
    trainer: VAETrainer, plain: PlainVAE, pythae: Any | None, x: Tensor, seed: int
) -> dict[str, float]:
    """−ELBO of the batch ``x`` for each implementation, every one drawing its noise right
    after ``torch.manual_seed(seed)``: equal (to float32 rounding) iff the models are."""
    out = {"vilab": neg_elbo(trainer, x, seed), "plain": neg_elbo(plain, x, seed)}
    if pythae is not None:
        torch.manual_seed(seed)
        out["pythae"] = float(pythae(DatasetOutput(data=x.view(-1, *IMAGE_SHAPE))).loss)
    return out


def describe_losses(losses: dict[str, float]) -> str:
    spread = max(losses.values()) - min(losses.values())
    parts = ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
    return f"{parts} (max |Δ| = {spread:.1e})"


# -- part (a): training throughput -----------------------------------------------------------
SHORT = {
    "pythae": "pythae",
    "pythae_indexed": "pythae (indexing)",
    "plain": "plain loop (DataLoader)",
    "plain_indexed": "plain loop (indexing)",
}


def plain_step(model: PlainVAE, batches: Iterator[Any], lr: float) -> Step:
    """The plain loop's step, its loss read back (``loss.item()``) as a loop that logs it."""
    step = vae_step(model, plain_optimizer(model, "rmsprop", lr), batches)

    def read() -> tuple[int, float]:
        images, loss = step()
        return images, loss.item()

    return read


@dataclasses.dataclass
class Models:
    """The three implementations of seed 004's mean-field VAE, sharing initial weights."""

    trainer: VAETrainer
    plain: PlainVAE
    pythae: Any | None
    train: Tensor  # (N, 784) float training images, shared by all
    test: Tensor


def build_models(s: common.Seed004) -> Models:
    trainer = s.trainer("mean_field")
    plain = PlainVAE()
    copy_weights(trainer.vae, plain)
    pythae = None
    if PYTHAE_ERROR is None:
        pythae = build_pythae()
        copy_weights(trainer.vae, pythae)
    train = s.data.train.dataset.tensor()
    return Models(trainer, plain, pythae, train, s.data.test)


def part_a(models: Models, args: argparse.Namespace) -> dict[str, Any]:
    """Times one training step of each implementation, rows alternating; prints the table."""
    config = models.trainer.config
    batch, lr = config.data.batch_size, config.optim.lr
    if config.optim.name != "rmsprop":
        raise ValueError(f"seed 004 uses RMSprop; the preset says {config.optim.name!r}")
    train = models.train
    x0 = train[:batch]
    check = same_noise_losses(models.trainer, models.plain, models.pythae, x0, args.seed)
    named = {"vilab": models.trainer.vae, "plain": models.plain, "pythae": models.pythae}
    counts = {k: common.parameter_count(m) for k, m in named.items() if m is not None}

    plain_indexed = PlainVAE()
    copy_weights(models.trainer.vae, plain_indexed)
    steps: dict[str, tuple[Row, Step]] = {
        "vilab": (Row("vilab: `VAETrainer.train_step()`"), common.vilab_step(models.trainer)),
    }
    if models.pythae is not None:
        dataset = BaseDataset(train.view(-1, *IMAGE_SHAPE), torch.zeros(len(train)))
        loader = DataLoader(
            dataset, batch_size=batch, shuffle=True, collate_fn=collate_dataset_output
        )
        steps["pythae"] = (
            Row(f"pythae {pythae_version()}: its `BaseDataset` + `DataLoader`, trainer step"),
            pythae_step(models.pythae, cycle(loader), len(dataset), lr),
        )
        pythae_indexed = build_pythae()
        copy_weights(models.trainer.vae, pythae_indexed)
        steps["pythae_indexed"] = (
            Row("pythae model, batches by tensor indexing (reference)"),
            pythae_step(pythae_indexed, shuffled_batches(train, batch), len(train), lr),
        )
    loader = DataLoader(TensorDataset(train), batch_size=batch, shuffle=True)
    steps["plain"] = (
        Row("plain loop, `DataLoader(TensorDataset)`: **the floor**"),
        plain_step(models.plain, cycle(loader), lr),
    )
    steps["plain_indexed"] = (
        Row("plain loop, batches by tensor indexing"),
        plain_step(plain_indexed, shuffled_batches(train, batch), lr),
    )

    print("## (a) Training throughput, seed 004's mean-field VAE\n")
    print(
        f"Batch {batch}, RMSprop (centered) lr {lr:g}, float32, {threads()}; every row trains "
        "its own copy of vilab's initial weights. "
        f"{args.speed_warmup} warm-up steps per row, then {args.speed_rounds} rounds of "
        f"{args.speed_steps} steps per row, rows alternating (order rotated each round); "
        f"median over rounds."
    )
    print(
        "Same model: "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items())
        + " parameters; −ELBO of one batch with the same noise: "
        + describe_losses(check)
        + "."
    )
    if models.pythae is None:
        print(f"pythae unavailable: {PYTHAE_ERROR}")
    print(flush=True)

    for _, step in steps.values():
        common.time_block(step, args.speed_warmup)
    rows = {name: row for name, (row, _) in steps.items()}
    common.race(
        rows,
        {name: step for name, (_, step) in steps.items()},
        args.speed_rounds,
        args.speed_steps,
        progress=lambda r: (
            f"  round {r + 1}/{args.speed_rounds}: "
            + ", ".join(f"{n} {row.rates[-1]:.0f}" for n, row in rows.items())
            + " images/s"
        ),
    )
    print("| implementation | images/s (median) | ms/step | min–max images/s | −ELBO, last round |")
    print("|---|---:|---:|---:|---:|")
    for row in rows.values():
        print(
            f"| {row.label} | {row.median:,.0f} | {1e3 * batch / row.median:.2f} | "
            f"{min(row.rates):,.0f}–{max(row.rates):,.0f} | {row.losses[-1]:.2f} |"
        )
    v = rows["vilab"].median
    ratios = {f"vilab/{name}": v / row.median for name, row in rows.items() if name != "vilab"}
    print()
    print(
        f"**vilab / plain loop (DataLoader) = {ratios['vilab/plain']:.2f}**; "
        + "; ".join(
            f"vilab / {SHORT[k.split('/')[1]]} = {r:.2f}"
            for k, r in ratios.items()
            if k != "vilab/plain"
        )
        + " (images/s ratios; > 1: vilab is faster)."
    )
    if models.pythae is None:
        print(f"vilab / pythae: pythae unavailable: {PYTHAE_ERROR}")
    steps_done = args.speed_warmup + args.speed_rounds * args.speed_steps
    print(f"(−ELBO in nats per image, training batches, after {steps_done} steps.)\n")
    return {
        "same_noise_losses": check,
        "parameters": counts,
        "rows": {n: dataclasses.asdict(r) | {"median": r.median} for n, r in rows.items()},
        "ratios": ratios,
        "steps_trained": steps_done,
    }


# -- part (b): importance-sampled log p(x) ---------------------------------------------------
def part_b(models: Models, args: argparse.Namespace) -> dict[str, Any]:
    """Times and compares the three log p(x) estimators on the same weights."""
    vae, plain, pythae = models.trainer.vae, models.plain, models.pythae
    copy_weights(vae, plain)
    if pythae is not None:
        copy_weights(vae, pythae)
    check = same_noise_losses(models.trainer, plain, pythae, models.test[:128], args.seed)
    k, n, rounds = args.eval_samples, args.eval_images, args.eval_rounds
    if n * rounds > len(models.test):
        raise ValueError(f"--eval-images × --eval-rounds = {n * rounds} > {len(models.test)}")
    chunk, batch = min(args.eval_chunk, k), min(args.eval_batch, n)
    p_batch, p_samples = pythae_samples(k, args.pythae_batch)

    estimates = {
        "vilab": Estimate(f"vilab `evaluate` (batch {batch} images, chunk {chunk} samples)"),
        "plain": Estimate("plain loop, one image at a time"),
    }
    if pythae is not None:
        estimates["pythae"] = Estimate(
            f"pythae `get_nll` (batch_size {p_batch}, under `no_grad`)"
            + (f"; draws {p_samples} samples" if p_samples != k else "")
        )

    # each runs after torch.manual_seed(seed), the seed of the round
    def run_vilab(images: Tensor, seed: int) -> tuple[float, float | None]:
        r = evaluate(vae, images, k, chunk, batch)
        return r["log_px"], r["log_px_stderr"]

    def run_plain(images: Tensor, seed: int) -> tuple[float, float | None]:
        values, errors = plain_log_px(plain, images, k)
        return float(values.mean()), common.combined_stderr(errors.tolist())

    def run_pythae(images: Tensor, seed: int) -> tuple[float, float | None]:
        pythae.eval()
        with torch.no_grad():
            value = pythae.get_nll(images.view(-1, *IMAGE_SHAPE), n_samples=k, batch_size=p_batch)
        pythae.train()
        return float(value), None  # get_nll returns the mean log p̂(x) (not an NLL), no error

    runners = {"vilab": run_vilab, "plain": run_plain, "pythae": run_pythae}
    names = list(estimates)

    print("## (b) Importance-sampled log p(x): seconds per 1000 test images\n")
    print(
        f"K = {k} samples per image, float32, {threads()}, on vilab's "
        f"weights after {models.trainer.step} training steps, copied into the others "
        f"(−ELBO of one test batch with the same noise: {describe_losses(check)}). "
        f"{rounds} rounds, each on the next {n} test images ({n * rounds} in all), "
        f"implementations alternating; time: median over rounds."
    )
    if pythae is None:
        print(f"pythae unavailable: {PYTHAE_ERROR}")
    print(flush=True)
    common.race_estimates(
        estimates,
        runners,
        rounds,
        lambda r: models.test[r * n : (r + 1) * n],
        args.seed,
        progress=lambda r: (
            f"  round {r + 1}/{rounds}: "
            + ", ".join(
                f"{m} {estimates[m].means[-1]:.3f} ({estimates[m].seconds_per_1000[-1]:.2f} s/1000)"
                for m in names
            )
        ),
    )

    # pythae gives no error: its draws have the variance of vilab's (same q, same K).
    def stderr_of(name: str) -> float:
        se = estimates[name].stderr
        return se if se is not None else float(estimates["vilab"].stderr or 0.0)

    print("| implementation | log p(x), mean | MC std. error | s / 1000 images | min–max |")
    print("|---|---:|---:|---:|---:|")
    for name, est in estimates.items():
        se = f"{est.stderr:.3f}" if est.stderr is not None else f"(≈ {stderr_of(name):.3f})"
        print(
            f"| {est.label} | {est.mean:.3f} | {se} | {est.median_seconds:.2f} | "
            f"{min(est.seconds_per_1000):.2f}–{max(est.seconds_per_1000):.2f} |"
        )
    print()
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    agreement: dict[str, dict[str, float | bool]] = {}
    for a, b in pairs:
        diff = estimates[a].mean - estimates[b].mean
        bound = AGREE_SIGMAS * math.hypot(stderr_of(a), stderr_of(b))
        agreement[f"{a}-{b}"] = {"diff": diff, "bound": bound, "agree": abs(diff) <= bound}
    agree = all(bool(v["agree"]) for v in agreement.values())
    print(
        "Estimates: "
        + "; ".join(
            f"{key.replace('-', ' − ')} = {v['diff']:+.3f} "
            f"({'within' if v['agree'] else 'OUTSIDE'} {AGREE_SIGMAS:g}σ = {v['bound']:.3f})"
            for key, v in agreement.items()
        )
        + f". **{'All agree' if agree else 'They DISAGREE'}** within their Monte Carlo error."
    )
    if pythae is not None:
        print(
            "(pythae's `get_nll` returns the mean log p̂(x) despite its name, and no error: "
            "its σ is taken as vilab's, same q and K.)"
        )
        if abs(estimates["plain"].mean - estimates["pythae"].mean) < 1e-3:
            print(
                "(The plain loop and pythae draw the same noise in the same order from the "
                "same seed, so their estimates coincide: they compute the same thing.)"
            )
    v = estimates["vilab"].median_seconds
    ratios = {f"{name}/vilab": est.median_seconds / v for name, est in estimates.items()}
    ratios.pop("vilab/vilab")
    print(
        f"\n**plain loop / vilab = {ratios['plain/vilab']:.2f}**"
        + "".join(f"; {k} = {r:.2f}" for k, r in ratios.items() if k != "plain/vilab")
        + " (time ratios: > 1: vilab is faster)."
    )
    if pythae is None:
        print(f"pythae / vilab: pythae unavailable: {PYTHAE_ERROR}")
    print()
    return {
        "samples": k,
        "images": n * rounds,
        "vilab_batch": batch,
        "vilab_chunk": chunk,
        "pythae_batch": p_batch,
        "same_noise_losses": check,
        "estimates": {
            name: dataclasses.asdict(e)
            | {"mean": e.mean, "stderr": e.stderr, "median_seconds_per_1000": e.median_seconds}
            for name, e in estimates.items()
        },
        "agreement": agreement,
        "agree": agree,
        "ratios": ratios,
    }


# -- part (c): test NLL of seed 004's configurations -----------------------------------------
def part_c(setup: common.Seed004) -> dict[str, Any]:
    """Trains seed 004's mean-field and IAF presets with ``train_vae``; prints the table."""
    args, results = setup.args, {}
    s = args.test_samples
    extra = [f"eval.samples={s}", f"eval.chunk={min(args.eval_chunk, s)}"]
    extra.append(f"eval.batch={args.eval_batch}")
    if args.steps is not None:
        extra.append(f"steps={args.steps}")
    if args.quick:
        extra += ["eval.valid_images=100", f"eval.valid_samples={s}"]
        extra += [f"eval_every={args.steps}", f"checkpoint_every={args.steps}"]
    print("## (c) Test NLL of seed 004's presets, static binarized MNIST\n", flush=True)
    for name in SEED004:
        config = setup.config(name, extra)
        data = load_vae_data(config.data, config.seed)
        if args.quick:
            data = dataclasses.replace(data, valid=data.valid[:100], test=data.test[:100])
        run_dir = args.runs_dir / name
        print(
            f"  training {name} ({config.steps} steps, batch {config.data.batch_size}) "
            f"into {run_dir} …",
            file=sys.stderr,
            flush=True,
        )
        train = partial(train_vae, config, run_dir, progress=sys.stderr.isatty(), data=data)
        (metrics,), metrics["wall_seconds"] = common.time_block(train)
        results[name] = metrics
    print(
        f"Each preset as `vilab train --config configs/vae_seed004_<name>.yaml` runs it "
        f"({threads()}, seed {args.seed}); test log p(x) by importance "
        f"sampling with K = {args.test_samples} on the model of best validation log p(x), "
        f"`evaluate` run {args.eval_batch} images × {min(args.eval_chunk, s)} samples at a "
        f"time (the presets' eval.batch 500 × eval.chunk 500 gives the same estimate, "
        f"several times slower on a CPU). Training time excludes the validation and test "
        f"evaluations.\n"
    )
    print(
        "| preset | steps | training time | images/s | test NLL (K) | MC std. error | "
        "test −ELBO | test images | eval time | whole run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in results.items():
        t = m.get("test")
        cells = (
            [f"{t['nll']:.2f} ({t['samples']})", f"{t['log_px_stderr']:.3f}", f"{-t['elbo']:.2f}"]
            + [f"{t['images']:,}", f"{t['seconds'] / 60:.1f} min"]
            if t
            else ["– (no test evaluation)"] * 5
        )
        print(
            f"| {name} | {m['steps']:,} | {m['seconds'] / 60:.2f} min | "
            f"{m['images_per_second']:,.0f} | " + " | ".join(cells) + f" | "
            f"{m['wall_seconds'] / 60:.1f} min |"
        )
    print()
    return results


# -- goals -------------------------------------------------------------------------------------
def goals(out: dict[str, Any], args: argparse.Namespace) -> list[str]:
    quick = common.QUICK_NOTE if args.quick else ""
    lines = []
    if "a" in out:
        r = out["a"]["ratios"]["vilab/plain"]
        lines.append(
            goal_line(
                f"(a) vilab training throughput ≥ {TRAIN_SPEEDUP_GOAL:g}× the plain loop's",
                f"{r:.2f}×",
                r >= TRAIN_SPEEDUP_GOAL,
                quick,
            )
        )
    if "b" in out:
        r, agree = out["b"]["ratios"]["plain/vilab"], out["b"]["agree"]
        note = "estimates agree" if agree else "estimates DISAGREE"
        lines.append(
            goal_line(
                f"(b) vilab log p(x) ≥ {EVAL_SPEEDUP_GOAL:g}× faster than the plain loop's, "
                "at identical estimates",
                f"{r:.2f}×",
                r >= EVAL_SPEEDUP_GOAL and agree,
                join_notes(note, quick),
            )
        )
    if "c" in out:
        for name, m in out["c"].items():
            t = m.get("test")
            full = m["steps"] >= 30_000 and t is not None and t["samples"] >= 5000
            nll = t["nll"] if t else math.inf
            ok = nll <= NLL_GOALS[name] and m["seconds"] < TRAIN_SECONDS_GOAL
            note = "" if full else "shortened run (fewer steps or samples): not the goal's setting"
            lines.append(
                goal_line(
                    f"(c) {name}: test NLL ≤ {NLL_GOALS[name]:g} nats, trained in under "
                    f"{TRAIN_SECONDS_GOAL / 60:g} min",
                    f"{nll:.2f} nats in {m['seconds'] / 60:.2f} min",
                    ok,
                    join_notes(note, quick),
                )
            )
    return lines


# -- command line ----------------------------------------------------------------------------
PARTS = {"a": "a", "b": "b", "c": "c", "ab": "ab", "all": "abc"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = common.base_parser(__doc__, tuple(PARTS), "ab")
    a = p.add_argument_group("part (a): training throughput")
    a.add_argument("--speed-warmup", type=int, help="warm-up steps per row [50; quick: 2]")
    a.add_argument("--speed-steps", type=int, help="steps per timed block [300; quick: 5]")
    a.add_argument("--speed-rounds", type=int, help="alternating rounds [5; quick: 2]")
    b = p.add_argument_group("part (b): log p(x)")
    evals = common.eval_options(b, (50, 200), (2, 5), "(b) and (c)", 10, 100, "vilab ")
    b.add_argument("--pythae-batch", type=int, default=100, help="get_nll batch_size [100]")
    b.add_argument(
        "--pretrain-steps",
        type=int,
        help="--part b without a: vilab training steps before evaluating [1550; quick: 12]",
    )
    c = p.add_argument_group("part (c): test NLL")
    c.add_argument("--steps", type=int, help="training steps per preset [30000; quick: 5]")
    c.add_argument("--test-samples", type=int, help="importance samples K [5000; quick: 10]")
    c.add_argument("--runs-dir", type=Path, default=Path("runs/bench_mnist"), help="[%(default)s]")
    args = p.parse_args(argv)

    defaults = {
        "speed_warmup": (2, 50),
        "speed_steps": (5, 300),
        "speed_rounds": (2, 5),
        **evals,
        "pretrain_steps": (12, 1550),
        "steps": (5, None),
        "test_samples": (10, 5000),
    }
    common.fill_defaults(args, defaults)
    positive = ["threads", "speed_steps", "speed_rounds", "eval_samples", "eval_images"]
    positive += ["eval_rounds", "eval_batch", "eval_chunk", "pythae_batch", "test_samples"]
    common.require(p, args, [*positive, "steps"])  # --steps may stay None: the preset's
    common.require(p, args, ["speed_warmup", "pretrain_steps"], 0)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    parts = PARTS[args.part]
    setup = common.Seed004(args)
    out = common.start("vilab MNIST benchmark", args, f"pythae {pythae_version()}")
    out["pythae_error"] = PYTHAE_ERROR
    torch.manual_seed(args.seed)
    if "a" in parts or "b" in parts:
        n_train, n_test = len(setup.data.train.dataset), len(setup.data.test)
        print(
            f"Data: static binarized MNIST from {setup.data_dir or 'the vilab cache'}: "
            f"{n_train:,} training / {n_test:,} test images.\n",
            flush=True,
        )
        models = build_models(setup)
        if "a" in parts:
            out["a"] = part_a(models, args)
        elif args.pretrain_steps:
            print(f"Training vilab for {args.pretrain_steps} steps first …\n", flush=True)
            for _ in range(args.pretrain_steps):
                models.trainer.train_step()
        if "b" in parts:
            out["b"] = part_b(models, args)
    if "c" in parts:
        out["c"] = part_c(setup)
    common.report_goals(out, goals(out, args), args.json)


if __name__ == "__main__":
    main()
