"""Importance-sampled log p(x) of a VAE with its standard error, ELBO and IWAE_k from the
same samples, and the per-image Pareto k̂ of the weights:

    log p̂(x) = log (1/K) Σ_k p(x, z_k) / q(z_k | x),   z_k ~ q(· | x)

(:func:`vilab.estimators.loglik.importance_log_likelihood`, Burda et al. 2016).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vilab.distributed import SINGLE, World
from vilab.estimators.importance import KHAT_GOOD, KHAT_OK, pareto_khat
from vilab.estimators.loglik import importance_log_likelihood, mean_with_stderr
from vilab.evaluation.batches import check_positive, eval_sizes, evaluating, per_batch
from vilab.likelihoods import bits_per_dim
from vilab.vae import VAE

#: How to make the final test evaluation of ``vilab train`` cheaper (its cost line).
FINAL_EVAL_HINT = (
    "cheaper: --set eval.samples=N, or --set final_eval=false and `vilab eval RUN_DIR` later"
)


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
def _check_sizes(samples: int, chunk: int | None, batch: int | None, khat: bool) -> None:
    """One-line errors for a non-positive size, or k̂ asked of too few samples."""
    given = {"chunk": chunk, "batch": batch}
    check_positive(samples=samples, **{k: v for k, v in given.items() if v is not None})
    if khat and samples < KHAT_MIN_SAMPLES:
        raise ValueError(
            f"per-image Pareto k̂ needs at least {KHAT_MIN_SAMPLES} importance samples, "
            f"got {samples}"
        )


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
    per_image: bool = False,
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
    under ``"khat"``. ``per_image``: also each image's estimate, ``"log_px_per_image"``
    (to compare two models pairwise on the same images). Besides nats per image, bits per dimension, bpd = (−log p(x) +
    D·c) / (D ln 2) for the NLL and the −ELBO, with c = log 256 for a density on dequantized
    8-bit data (Theis et al. 2016) and 0 for a discrete likelihood. ``images`` are on the model's device; ``chunk`` and ``batch`` None:
    sized for the device (:func:`eval_sizes`).
    """
    _check_sizes(samples, chunk, batch, khat)
    with evaluating(vae):  # sized in eval mode, as it runs
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

    label = f"log p(x), K={samples}" if progress else None
    with evaluating(vae):
        lp, se, el, iw, kh = per_batch(images, batch, one, seed, world, label, hint)
    log_px, stderr = mean_with_stderr(lp, se)
    dim, offset = int(images[0].numel()), vae.likelihood.offset_nats
    out = {
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "bpd": bits_per_dim(-log_px, dim, offset),
        "bpd_elbo": bits_per_dim(-float(el.mean()), dim, offset),
        "elbo": float(el.mean()),
        "samples": samples,
        "images": int(images.shape[0]),
    }
    if k is not None:
        out[f"iwae_{k}"] = float(iw.mean())
    out |= {"khat": khat_summary(kh)} if khat else {}
    out |= {"log_px_per_image": lp.double().cpu().tolist()} if per_image else {}
    return out
