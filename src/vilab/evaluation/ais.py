"""log p(x) of a VAE by annealed importance sampling (:func:`vilab.estimators.ais.ais`,
Neal 2001; Wu et al. 2017): a stochastic lower bound, a second opinion beside importance
sampling."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import Tensor

from vilab.distributed import SINGLE, World
from vilab.estimators.ais import LogProb, ais, schedule
from vilab.estimators.loglik import mean_with_stderr
from vilab.evaluation.batches import check_positive, evaluating, per_batch
from vilab.families.gaussian import StandardNormal, std_normal_log_prob
from vilab.likelihoods import bits_per_dim
from vilab.vae import VAE

#: The fast path's settings (``vilab eval --method ais``): 4 chains and a pilot chain per
#: image, all images at once; 700 distributions on a sigmoid schedule, one leapfrog step
#: each with the momentum refreshed partly (α = 0.8), in the start's standardized
#: coordinates; ε from 0.3, steered at rate 0.05 toward 0.8 acceptance by the pilot.
#: Chosen on seed 004's IAF model (1011 training steps) against the classic 4 × 1000
#: estimate (5 leapfrog steps): on its first 100 test images, at 500 gradients per chain,
#: without momentum (500, 1) fell 0.67 nats short and (250, 2) with α = 0.7 0.15; α = 0,
#: 0.5, 0.7, 0.8, 0.9, 0.95 at (500, 1) fell 0.67, 0.26, 0.01, 0.12, 0.27, 0.62 short;
#: at 1000 gradients without momentum (500, 2) and (1000, 1) 0.18, (250, 4) 0.35. On all
#: 1000 images, α = 0.8: 500 distributions 0.22 ± 0.03 short at 1/12 of the classic's
#: CPU time, 700 distributions 0.06 ± 0.03 short at 1/8.4 — the default, inside the
#: issue's 0.3 nats with room; by that CPU ratio ~34 s per 1000 images where the classic
#: took 284 s (both measured at one thread on a loaded 2-core machine: 126 s vs 1059 s).
FAST = {
    "chains": 4,
    "num_dists": 700,
    "num_leapfrog": 1,
    "batch": None,
    "schedule_kind": "sigmoid",
    "step_size": 0.3,
    "adapt_rate": 0.05,
    "standardize": True,
    "pilots": 1,
    "momentum": 0.8,
    "target_accept": 0.8,
}
#: Images at once on the CPU when ``batch`` is None (the issue's 1000 test images in one).
CPU_BATCH = 1000
#: The settings before the fast path (seed 002's HAIS; the issue's reference with
#: ``chains=4, num_dists=1000``): 100 images at a time, the chains moving in the raw base
#: space, each steering its own ε from 0.1 at rate 0.02 (measured biased upward, see
#: :mod:`vilab.estimators.ais`).
CLASSIC = {
    "chains": 16,
    "num_dists": 500,
    "num_leapfrog": 5,
    "batch": 100,
    "schedule_kind": "sigmoid",
    "step_size": 0.1,
    "adapt_rate": 0.02,
    "standardize": False,
    "pilots": 0,
    "momentum": 0.0,
    "target_accept": 0.65,
}


def _start(vae: VAE, x: Tensor, h: Tensor, init: str) -> tuple[Any, LogProb]:
    """The start distribution (q's base space for a flow posterior, the family itself
    where it has none, or the prior) and the log joint in its coordinates,
    log p(x, T(ε)) + log |det ∂T/∂ε|."""
    if init == "prior":
        return StandardNormal(vae.latent_dim, context_dim=h.shape[-1]).to(h), partial(
            vae.model.log_joint, x
        )
    base, push = vae.posterior.family.base_and_push()
    if push is None:
        return base, partial(vae.model.log_joint, x)

    def log_joint(e: Tensor) -> Tensor:
        z, logdet = push(e, h)
        return vae.model.log_joint(x, z) + logdet

    return base, log_joint


def _path(base: Any, h: Tensor, log_joint: LogProb, standardize: bool) -> tuple[Any, ...]:
    """``(log_init, sample_init, log_target)`` of the AIS path from ``base`` (context
    ``h``) to ``log_joint``. With ``standardize`` and a diagonal Gaussian start (a base with
    ``loc_scale``, the diagonal Gaussians' shared method) N(μ, σ²), in u = (ε − μ)/σ: the
    start N(0, I), the target log_joint(μ + σ u) + Σ log σ (a change of variables, the
    same Z)."""
    loc_scale = getattr(base, "loc_scale", None) if standardize else None
    if loc_scale is None:
        return (
            partial(base.log_prob, context=h),
            lambda c: base.rsample_and_log_prob(c, h)[0],
            log_joint,
        )
    loc, scale = loc_scale(h)
    log_det = scale.log().sum(-1)
    return (
        std_normal_log_prob,
        lambda c: torch.randn((c, *loc.shape), dtype=loc.dtype, device=loc.device),
        lambda u: log_joint(loc + scale * u) + log_det,
    )


def _checked_batch(
    init: str, n: int, batch: int | None, images: Tensor, world: World, step_size: float
) -> int:
    """The images per batch (``None``: all of this process's at once, on the CPU at most
    :data:`CPU_BATCH`); one-line errors for a bad ``init``, batch or step size."""
    if init not in ("posterior", "prior"):
        raise ValueError(f"init must be 'posterior' or 'prior', got {init!r}")
    if batch is None:  # every image at once, shared evenly among the processes
        batch = max(1, math.ceil(n / world.size))
        if images.device.type == "cpu":  # bounded memory (~0.3 GB per 1000 images)
            batch = min(batch, CPU_BATCH)
    check_positive(batch=batch)
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    return batch


@torch.no_grad()
def evaluate_ais(
    vae: VAE,
    images: Tensor,
    chains: int = FAST["chains"],
    num_dists: int = FAST["num_dists"],
    num_leapfrog: int = FAST["num_leapfrog"],
    batch: int | None = FAST["batch"],
    init: str = "posterior",
    seed: int | None = None,
    world: World = SINGLE,
    progress: bool = False,
    hint: str = "",
    schedule_kind: str = FAST["schedule_kind"],
    step_size: float = FAST["step_size"],
    adapt_rate: float = FAST["adapt_rate"],
    standardize: bool = FAST["standardize"],
    pilots: int = FAST["pilots"],
    momentum: float = FAST["momentum"],
    target_accept: float = FAST["target_accept"],
    fused: bool = True,
    per_image: list[Tensor] | None = None,
) -> dict[str, Any]:
    """log p(x) by annealed importance sampling (:func:`vilab.estimators.ais.ais`).

    The path starts at the encoder's q(z | x) — in the base space of a flow posterior,
    where the start is the Gaussian base and the target p(x, T(ε)) |det ∂T/∂ε| (seed 002)
    — or at the prior (``init="prior"``); ``standardize``: in the start's standardized
    coordinates (:func:`_path`), i.e. HMC with the encoder's σ² as its inverse mass.
    Batched over ``batch`` images (``None``: all of this process's images at once, on
    the CPU at most :data:`CPU_BATCH`) and ``chains`` chains each; ``num_dists`` distributions on a ``schedule_kind`` schedule
    (:func:`vilab.estimators.ais.schedule`), ``num_leapfrog`` leapfrog steps per
    transition with partial momentum refreshment ``momentum``, ε from ``step_size``
    steered toward ``target_accept`` at ``adapt_rate`` by ``pilots`` extra chains per image
    (``0``: each chain its own); ``fused`` as for :func:`vilab.estimators.ais.ais`. The
    defaults are :data:`FAST`; :data:`CLASSIC` holds the settings before it. With
    ``pilots ≥ 1`` (or ``adapt_rate=0``) exact AIS, a stochastic lower bound on log p(x).
    ``per_image``, a list, receives the per-image estimates. ``seed``, ``world``,
    ``progress`` and ``hint`` as for :func:`evaluate`.
    """
    n = images.shape[0]
    batch = _checked_batch(init, n, batch, images, world, step_size)
    check_positive(chains=chains, num_dists=num_dists, num_leapfrog=num_leapfrog)
    betas = schedule(num_dists, schedule_kind)
    kw = dict(step_size=step_size, adapt_rate=adapt_rate, fused=fused, pilots=pilots)
    kw |= dict(momentum=momentum, target_accept=target_accept)

    def one(x: Tensor) -> tuple[Tensor, ...]:
        h = vae.posterior.context(x)
        base, log_joint = _start(vae, x, h, init)
        path = _path(base, h, log_joint, standardize)
        est = ais(*path, chains, num_leapfrog=num_leapfrog, schedule=betas, **kw)
        return est.log_z, est.stderr, torch.full_like(est.log_z, est.accept_rate)

    label = f"AIS log p(x), {chains} chains × {num_dists} steps" if progress else None
    with evaluating(vae, frozen=True):
        lp, se, acc = per_batch(images, batch, one, seed, world, label, hint)
    if per_image is not None:
        per_image.append(lp)
    log_px, stderr = mean_with_stderr(lp, se)
    return {
        "method": "ais",
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "bpd": bits_per_dim(-log_px, int(images[0].numel()), vae.likelihood.offset_nats),
        **dict(chains=chains, num_dists=num_dists, num_leapfrog=num_leapfrog),
        **dict(schedule=schedule_kind, step_size=step_size, adapt_rate=adapt_rate),
        **dict(standardize=standardize, pilots=pilots, momentum=momentum),
        **dict(target_accept=target_accept, batch=batch, init=init),
        "accept_rate": float(acc.mean()),
        "images": int(n),
    }
