"""log p(x) of a VAE by annealed importance sampling (:func:`vilab.estimators.ais.ais`,
Neal 2001; Wu et al. 2017): a stochastic lower bound, a second opinion beside importance
sampling."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from vilab.distributed import SINGLE, World
from vilab.estimators.ais import ais
from vilab.estimators.loglik import mean_with_stderr
from vilab.evaluation.batches import check_positive, evaluating, per_batch
from vilab.families.gaussian import StandardNormal
from vilab.likelihoods import bits_per_dim
from vilab.vae import VAE


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
    if init not in ("posterior", "prior"):
        raise ValueError(f"init must be 'posterior' or 'prior', got {init!r}")
    check_positive(chains=chains, num_dists=num_dists, num_leapfrog=num_leapfrog, batch=batch)
    family, model = vae.posterior.family, vae.model

    def one(x: Tensor) -> tuple[Tensor, ...]:
        h = vae.posterior.context(x)
        if init == "prior":
            base: Any = StandardNormal(vae.latent_dim, context_dim=h.shape[-1]).to(h)
            push = None
        else:  # a flow's base space; the family itself where it has none
            base, push = family.base_and_push()

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

    label = f"AIS log p(x), {chains} chains × {num_dists} steps" if progress else None
    with evaluating(vae, frozen=True):
        lp, se, acc = per_batch(images, batch, one, seed, world, label, hint)
    log_px, stderr = mean_with_stderr(lp, se)
    return {
        "method": "ais",
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "bpd": bits_per_dim(-log_px, int(images[0].numel()), vae.likelihood.offset_nats),
        "chains": chains,
        "num_dists": num_dists,
        "num_leapfrog": num_leapfrog,
        "init": init,
        "accept_rate": float(acc.mean()),
        "images": int(images.shape[0]),
    }
