"""Honest evaluation of a trained VAE: importance-sampled and annealed-IS log p(x), batched
over images and samples, sharded over processes with results identical to one process;
and ``vilab eval``, which evaluates a run directory and records the result in it.

    log p̂(x) = log (1/K) Σ_k p(x, z_k) / q(z_k | x),   z_k ~ q(· | x)

(:func:`vilab.estimators.loglik.importance_log_likelihood`, Burda et al. 2016) and AIS
(:func:`vilab.estimators.ais.ais`, Neal 2001; Wu et al. 2017).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vilab.core.checkpoint import brief, load_checkpoint
from vilab.core.device import fork_rng, resolve_device
from vilab.core.io import atomic_write_text
from vilab.core.progress import Progress
from vilab.core.seeding import Stream, derive_seed
from vilab.data.vae_data import load_vae_data
from vilab.distributed import SINGLE, World
from vilab.estimators.importance import KHAT_GOOD, KHAT_OK, pareto_khat
from vilab.estimators.loglik import importance_log_likelihood, mean_with_stderr
from vilab.vae import VAE, build_vae


def check_positive(**values: int) -> None:
    """Every rank checks its arguments before any work (one rank failing alone would
    leave the others waiting in a collective)."""
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}; accepted: a positive integer")


def per_batch(
    images: Tensor,
    batch: int,
    fn: Callable[[Tensor], tuple[Tensor, ...]],
    seed: int | None,
    world: World,
    progress: str | None = None,
    hint: str = "",
) -> list[Tensor]:
    """``fn`` on each batch of ``images``, results concatenated over all images in order.

    With ``seed``, batch b draws its random numbers from ``derive_seed(seed, 3, b)`` (the
    global RNG is left as it was), so the result does not depend on which process did
    which batch: rank r of W does batches r, r + W, …, and the per-image results are
    gathered on every rank — the same numbers as one process, exactly. The per-image
    results come back as CPU tensors, whatever the device of ``images``.

    With ``progress`` (a label, e.g. ``"log p(x), K=5000"``) rank 0 shows a bar of its
    images with an ETA and, after its first batch, the cost of the whole and ``hint``
    (:class:`vilab.core.progress.Progress`); it draws no random numbers.
    """
    if world.distributed and seed is None:
        raise ValueError("a sharded evaluation needs a seed (the result must not depend on W)")
    starts = range(0, images.shape[0], batch)
    todo = range(world.rank, len(starts), world.size)
    share = sum(min(batch, images.shape[0] - starts[b]) for b in todo)
    where = f" on {world.size} processes" if world.distributed else ""
    detail = f"{images.shape[0]} images in batches of {batch}{where}"
    what = progress if world.is_main else None
    mine: dict[int, tuple[Tensor, ...]] = {}
    with Progress(what, share, "img", len(todo), detail, hint) as bar:
        for b in todo:
            x = images[starts[b] : starts[b] + batch]
            if seed is None:
                out = fn(x)
            else:
                with fork_rng(x.device):
                    torch.manual_seed(derive_seed(seed, Stream.EVAL_BATCH, b))
                    out = fn(x)
            mine[b] = tuple(t.cpu() for t in out)  # gathered across ranks and devices
            bar.advance(x.shape[0])
    merged: dict[int, tuple[Tensor, ...]] = {}
    for part in world.gather(mine):
        merged.update(part)
    columns = zip(*(merged[b] for b in range(len(starts))))
    return [torch.cat(c) for c in columns]


#: Samples per chunk and images per batch of an evaluation on the CPU when not given.
CPU_CHUNK, CPU_BATCH = 100, 20
#: Images per batch on a GPU when not given (the chunk then fills the free memory).
GPU_BATCH = 500


@torch.no_grad()
def eval_sizes(
    vae: VAE, images: Tensor, samples: int, chunk: int | None, batch: int | None
) -> tuple[int, int]:
    """``(chunk, batch)`` of an evaluation: the given ones, else on the CPU 100 samples ×
    20 images, and on a GPU 500 images with the chunk sized from free memory — a probe
    of 8 samples measures the peak memory per sample of the batch, and the chunk takes
    half of what :func:`torch.cuda.mem_get_info` reports free (at most ``samples``)."""
    device = images.device
    if device.type != "cuda":
        return min(chunk or CPU_CHUNK, samples), batch or CPU_BATCH
    batch = batch or min(GPU_BATCH, max(1, images.shape[0]))
    if chunk:
        return min(chunk, samples), batch
    probe = 8
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with fork_rng(device):
        vae.log_weights(images[:batch], probe)
    per_sample = max(torch.cuda.max_memory_allocated(device) - base, 1) / probe
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(samples, int(0.5 * free / per_sample))), batch


@torch.no_grad()
def evaluate(
    vae: VAE,
    images: Tensor,
    samples: int,
    chunk: int | None,
    batch: int | None,
    iwae_k: int | None = None,
    seed: int | None = None,
    world: World = SINGLE,
    progress: bool = False,
    hint: str = "",
    khat: bool = False,
) -> dict[str, Any]:
    """Importance-sampled log p(x) over ``images`` with K = ``samples`` per image.

    Batched over images (``batch`` at a time) and samples (``chunk`` at a time) with a
    streaming log-sum-exp; returns the mean log p(x), its Monte Carlo standard error, the
    NLL, and from the same samples the ELBO and IWAE_k (k = ``iwae_k``). With ``seed``
    the estimate is reproducible and independent of how it is sharded; with a
    multi-process ``world`` the batches are shared out and the result gathered exactly
    (:func:`per_batch`). ``progress``: a bar on stderr and, after the first batch, the
    cost of the whole with ``hint`` (how to make it cheaper); the numbers do not change.
    ``khat``: also the Pareto k̂ of each image's K weights (Yao et al. 2018; needs
    K ≥ 100 and keeps the batch's K × B weights), summarized by :func:`khat_summary`
    under ``"khat"``. ``images`` are on the model's device; ``chunk`` and ``batch`` None:
    sized for the device (:func:`eval_sizes`).
    """
    given = {"chunk": chunk, "batch": batch}
    check_positive(samples=samples, **{k: v for k, v in given.items() if v is not None})
    if khat and samples < KHAT_MIN_SAMPLES:
        raise ValueError(
            f"per-image Pareto k̂ needs at least {KHAT_MIN_SAMPLES} importance samples, "
            f"got {samples}"
        )
    was_training = vae.training
    vae.eval()
    chunk, batch = eval_sizes(vae, images, samples, chunk, batch)
    k = None if iwae_k is None else min(iwae_k, chunk, samples)

    def one(x: Tensor) -> tuple[Tensor, ...]:
        h = vae.posterior.context(x)
        kept: list[Tensor] = []

        def log_weights(n: int) -> Tensor:
            lw = vae.log_weights(x, n, h=h)
            if khat:
                kept.append(lw.double())
            return lw

        est = importance_log_likelihood(log_weights, samples, chunk, k)
        assert est.elbo is not None
        iwae = est.iwae if est.iwae is not None else torch.full_like(est.elbo, math.nan)
        k_hat = pareto_khat(torch.cat(kept).T) if khat else torch.full_like(est.elbo, math.nan)
        return est.log_px, est.stderr, est.elbo, iwae, k_hat

    try:
        label = f"log p(x), K={samples}" if progress else None
        lp, se, el, iw, kh = per_batch(images, batch, one, seed, world, label, hint)
    finally:
        vae.train(was_training)
    log_px, stderr = mean_with_stderr(lp, se)
    out = {
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "elbo": float(el.mean()),
        "samples": samples,
        "images": int(images.shape[0]),
    }
    if k is not None:
        out[f"iwae_{k}"] = float(iw.mean())
    if khat:
        out["khat"] = khat_summary(kh)
    return out


#: The fewest importance samples per image for which a per-image k̂ is computed.
KHAT_MIN_SAMPLES = 100


def khat_summary(khat: Tensor) -> dict[str, float]:
    """The distribution of per-image Pareto k̂ ``(N,)``: quantiles, the fractions above
    0.5 and 0.7 (images whose importance-sampled log p(x) converges slowly, or cannot be
    trusted: q(z | x) misses mass of p(z | x); Yao et al. 2018, Vehtari et al. 2024).
    k̂ = −inf (equal weights: nothing to fit) ranks lowest and counts as below 0.5."""
    k = khat.double()
    # "lower": each quantile is one of the k̂ (no interpolation, so −inf stays −inf)
    levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    q = torch.quantile(k, levels, interpolation="lower")
    return {
        "q10": float(q[0]),
        "median": float(q[1]),
        "q90": float(q[2]),
        "max": float(k.max()),
        "frac_above_0.5": float((k >= KHAT_GOOD).double().mean()),
        "frac_above_0.7": float((k >= KHAT_OK).double().mean()),
        "images": int(k.numel()),
    }


@torch.no_grad()
def evaluate_ais(
    vae: VAE,
    images: Tensor,
    chains: int = 16,
    num_dists: int = 500,
    num_leapfrog: int = 5,
    batch: int = 100,
    init: str = "posterior",
    seed: int | None = None,
    world: World = SINGLE,
    progress: bool = False,
    hint: str = "",
) -> dict[str, Any]:
    """log p(x) by annealed importance sampling (:func:`vilab.estimators.ais.ais`).

    The path starts at the encoder's q(z | x) — in the base space of a flow posterior,
    where the start density is the Gaussian base and the target is
    p(x, T(ε)) |det ∂T/∂ε| (seed 002) — or at the prior (``init="prior"``). Batched over
    ``batch`` images and ``chains`` chains each. A stochastic lower bound on log p(x).
    ``seed``, ``world``, ``progress`` and ``hint`` as for :func:`evaluate`.
    """
    from vilab.estimators.ais import ais
    from vilab.families.gaussian import StandardNormal
    from vilab.flows.flow import FlowFamily

    if init not in ("posterior", "prior"):
        raise ValueError(f"init must be 'posterior' or 'prior', got {init!r}")
    check_positive(chains=chains, num_dists=num_dists, num_leapfrog=num_leapfrog, batch=batch)
    was_training = vae.training
    vae.eval()
    requires = [p.requires_grad for p in vae.parameters()]
    for p in vae.parameters():
        p.requires_grad_(False)
    family, model = vae.posterior.family, vae.model

    def one(x: Tensor) -> tuple[Tensor, ...]:
        h = vae.posterior.context(x)
        if init == "prior":
            base: Any = StandardNormal(vae.latent_dim, context_dim=h.shape[-1]).to(h)
            push = None
        elif isinstance(family, FlowFamily):
            base, push = family.base, family.push
        else:
            base, push = family, None

        def log_target(e: Tensor) -> Tensor:
            if push is None:
                return model.log_joint(x, e)
            z, logdet = push(e, h)
            return model.log_joint(x, z) + logdet

        est = ais(
            partial(base.log_prob, context=h),
            lambda c: base.rsample_and_log_prob(c, h)[0],
            log_target,
            chains,
            num_dists,
            num_leapfrog,
        )
        return est.log_z, est.stderr, torch.full_like(est.log_z, est.accept_rate)

    try:
        label = f"AIS log p(x), {chains} chains × {num_dists} steps" if progress else None
        lp, se, acc = per_batch(images, batch, one, seed, world, label, hint)
    finally:
        for p, r in zip(vae.parameters(), requires):
            p.requires_grad_(r)
        vae.train(was_training)
    log_px, stderr = mean_with_stderr(lp, se)
    return {
        "method": "ais",
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "chains": chains,
        "num_dists": num_dists,
        "num_leapfrog": num_leapfrog,
        "init": init,
        "accept_rate": float(acc.mean()),
        "images": int(images.shape[0]),
    }


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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with a clear error if it is not one."""
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); delete or repair it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} holds a {type(value).__name__}, not a JSON object")
    return value


#: How to make the final test evaluation of ``vilab train`` cheaper (its cost line).
FINAL_EVAL_HINT = (
    "cheaper: --set eval.samples=N, or --set final_eval=false and `vilab eval RUN_DIR` later"
)


def check_train_run(run_dir: Path) -> None:
    """Raises ``ValueError`` saying in one line what ``run_dir`` is unless it is a run of
    ``vilab train``: missing, without config.yaml, a ``vilab fit`` run (fit-only keys such
    as ``target``; its exact KL is in its metrics.json), or a config of neither kind."""
    from vilab.config import FitConfig, TrainConfig, read_yaml

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


def evaluate_run(
    run_dir: str | Path,
    samples: int | None = None,
    chunk: int | None = None,
    batch: int | None = None,
    split: str = "test",
    data_dir: str | None = None,
    method: str = "is",
    chains: int = 16,
    num_dists: int = 500,
    num_leapfrog: int = 5,
    images: int | None = None,
    init: str = "posterior",
    world: World = SINGLE,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """``vilab eval``: log p(x) of a trained run's best (else last) model, by importance
    sampling (``method="is"``) or annealed importance sampling (``"ais"``); the result
    is merged into the run's ``metrics.json`` under ``eval_<split>`` / ``ais_<split>``.
    Seeded by the run's seed; in a multi-process ``world`` the images are shared out and
    the estimate is the same as in one process. ``progress``: a bar on stderr and the
    estimated cost after the first batch (:func:`per_batch`). ``device``: where to
    evaluate (default: the run's ``device`` setting); a run trained on a GPU evaluates on
    a CPU and back.

    Raises:
        ValueError: ``run_dir`` is not a ``vilab train`` run (:func:`check_train_run`).
    """
    from vilab.config import load_train_config

    run_dir = Path(run_dir)
    check_train_run(run_dir)
    overrides = [f"data.data_dir={data_dir}"] if data_dir else []
    config = load_train_config(run_dir / "config.yaml", overrides)
    e = config.eval
    samples, chunk, batch = samples or e.samples, chunk or e.chunk, batch or e.batch
    local = world.local_rank if world.distributed else None
    where = resolve_device(device or config.device, local)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    vae = build_vae(config)
    weights = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "checkpoint.pt"
    load_model(vae, weights)
    vae.to(where)
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    if method not in ("is", "ais"):
        raise ValueError(f"method must be 'is' or 'ais', got {method!r}")
    data = load_vae_data(config.data, config.seed)
    x = data.test if split == "test" else data.valid
    x = (x[:images] if images else x).to(where)
    seed = derive_seed(config.seed, Stream.TEST)
    t0 = time.perf_counter()
    if method == "is":
        hint = "cheaper: --samples N or --images N"
        args = (samples, chunk, batch, 50, seed, world, progress)
        result = evaluate(vae, x, *args, hint, khat=samples >= KHAT_MIN_SAMPLES)
    else:
        hint = "cheaper: --num-dists N, --chains N or --images N"
        ais = (chains, num_dists, num_leapfrog, min(batch or 100, 100), init, seed, world, progress)
        result = evaluate_ais(vae, x, *ais, hint)
    result["seconds"] = time.perf_counter() - t0
    result["device"] = str(where)
    result["weights"] = weights.name
    result["world_size"] = world.size
    if world.is_main:
        path = run_dir / "metrics.json"
        metrics = read_json(path) if path.exists() else {}
        metrics[f"{'eval' if method == 'is' else 'ais'}_{split}"] = result
        atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return result
