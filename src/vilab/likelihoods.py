"""Decoder likelihoods p(x | z) for images: a function of the decoder's output and x.

Every likelihood maps the decoder output ``out (..., K·D)`` (parameter-major: the first D
entries are parameter 0, ``out.unflatten(-1, (K, D))`` separates them) and the data
``x (B, D)`` to log p(x | z) per image, ``(..., B)`` (e.g. ``(S, B)``). ``K`` (the decoder
head's outputs per dimension, :attr:`Likelihood.params`) depends on the likelihood.

What each one accepts as x (the data pipeline serves it, :mod:`vilab.data.vae_data`):

- ``bernoulli``: x ∈ {0, 1}; K = 1 logit; log p = Σ_d x l − softplus(l).
- ``gaussian``: continuous x; K = 2 (mean, log σ) learned per dimension, or K = 1 with a
  fixed σ. On 8-bit data x is *dequantized*, y = (k + u)/256, u ~ U[0, 1)^D, a density on
  [0, 1)^D; then −log P(k) ≤ −log p(y) + D log 256 (Theis et al. 2016, "A note on the
  evaluation of generative models", §3.1), the correction :attr:`Likelihood.offset_nats`.
- ``categorical``: x = k/255, k ∈ {0, …, 255}; K = 256 logits; log p = log softmax(l)_k.
- ``logistic``: x = k/255; K = 2 (μ, log s); the discretized logistic of PixelCNN++
  (Salimans et al. 2017, arXiv:1701.05517, eq. 2) on bins of width 1/255 around k/255,
  with the edge bins open: P(0) = σ((x⁺ − μ)/s), P(255) = 1 − σ((x⁻ − μ)/s).
- ``logistic_mixture``: K = 3M (mixture logits, μ, log s for M components), per
  dimension; PixelCNN++'s mixture without its RGB coupling (dimensions independent given z).

Bits per dimension of a discrete model: bpd = −log P(x) / (D ln 2); of a dequantized
density: (−log p(y) + D log 256) / (D ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LIKELIHOODS", "Likelihood", "bits_per_dim", "get_likelihood"]

LOG_2PI = math.log(2.0 * math.pi)
LEVELS = 256
#: Half a grey level, on the scale x = k/255.
HALF_BIN = 0.5 / (LEVELS - 1)
#: Lower bound of a logistic's log-scale (PixelCNN++ clamps at −7).
MIN_LOG_SCALE = -7.0


@dataclass(frozen=True)
class Likelihood:
    """One decoder likelihood.

    Attributes:
        name: its name in configs.
        params: decoder outputs per data dimension, K.
        log_prob: ``(out (..., K·D), x (B, D)) -> (..., B)``, log p(x | z) in nats.
        mean: ``out (..., K·D) -> (..., D)``, the mean of p(x | z) on the data's scale.
        values: what x must be: ``"binary"`` ({0, 1}), ``"grey"`` (k/255, k ∈ 0..255 —
            8-bit data) or ``"continuous"`` (any finite value; 8-bit data dequantized).
        offset_nats: per dimension, added to −log p(x) for the bpd of the discrete data
            (log 256 for a dequantized density, else 0).
    """

    name: str
    params: int
    log_prob: Callable[[Tensor, Tensor], Tensor]
    mean: Callable[[Tensor], Tensor]
    values: str
    offset_nats: float = 0.0


def bits_per_dim(nll: float, dim: int, offset_nats: float = 0.0) -> float:
    """bpd = (−log p(x) + D · offset) / (D ln 2), for an NLL in nats per image."""
    return (nll + dim * offset_nats) / (dim * math.log(2.0))


def _split(out: Tensor, k: int) -> Tensor:
    """``(..., K·D) -> (..., K, D)``, parameter-major."""
    return out.unflatten(-1, (k, out.shape[-1] // k))


def bernoulli_log_prob(out: Tensor, x: Tensor) -> Tensor:
    """log Bern(x; σ(l)) = x l − softplus(l), summed over D: ``(..., D), (B, D) -> (..., B)``."""
    return (x * out - F.softplus(out)).sum(-1)


def gaussian_log_prob(out: Tensor, x: Tensor, scale: float | None = None) -> Tensor:
    """log N(x; μ, σ²) summed over D; (μ, log σ) from ``out`` (K = 2), or μ from ``out``
    (K = 1) with the fixed σ = ``scale``."""
    if scale is None:
        mean, log_scale = _split(out, 2).unbind(-2)
    else:
        mean, log_scale = out, out.new_full((), math.log(scale))
    r = (x - mean) * torch.exp(-log_scale)
    return (-0.5 * r * r - log_scale - 0.5 * LOG_2PI).sum(-1)


def _levels(x: Tensor) -> Tensor:
    """Grey levels k = round(255 x) as int64, ``(B, D)``."""
    return torch.round(x * (LEVELS - 1)).long()


def categorical_log_prob(out: Tensor, x: Tensor) -> Tensor:
    """log softmax(l)_k over 256 levels, summed over D; ``out (..., 256·D)``."""
    logits = _split(out, LEVELS)  # (..., 256, D)
    k = _levels(x).expand(*logits.shape[:-2], -1).unsqueeze(-2)  # (..., 1, D)
    # l_k − logsumexp(l): no (..., 256, D) log-softmax kept besides the logits
    return (logits.gather(-2, k).squeeze(-2) - torch.logsumexp(logits, dim=-2)).sum(-1)


def logistic_bin_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(k) of a logistic(μ, s) discretized to bins [x − h, x + h], x = k/255, h =
    1/510, with open edge bins; per dimension (no sum).

    With a = (x + h − μ)/s and b = (x − h − μ)/s, σ(a) − σ(b) = σ(a) σ(−b) (1 − e^{b−a}),
    so log P = log σ(a) + log σ(−b) + log(−expm1(b − a)) with no cancellation; at k = 0
    only log σ(a), at k = 255 only log σ(−b) (the CDF's edges, PixelCNN++).
    """
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
    inv_s = torch.exp(-log_scale)
    a = (x + HALF_BIN - mean) * inv_s
    b = (x - HALF_BIN - mean) * inv_s
    upper, lower = F.logsigmoid(a), F.logsigmoid(-b)
    width = torch.log(-torch.expm1(-2 * HALF_BIN * inv_s))
    k = _levels(x)
    middle = upper + lower + width
    return torch.where(k <= 0, upper, torch.where(k >= LEVELS - 1, lower, middle))


def logistic_log_prob(out: Tensor, x: Tensor) -> Tensor:
    """Discretized logistic, ``out (..., 2·D)`` = (μ, log s), summed over D."""
    mean, log_scale = _split(out, 2).unbind(-2)
    return logistic_bin_log_prob(x, mean, log_scale).sum(-1)


def mixture_log_prob(out: Tensor, x: Tensor, components: int) -> Tensor:
    """Mixture of M discretized logistics per dimension, ``out (..., 3M·D)`` = (mixture
    logits, μ, log s), each ``(M, D)``: log Σ_m π_m P_m(k), summed over D."""
    p = _split(out, 3 * components).unflatten(-2, (3, components))  # (..., 3, M, D)
    logits, mean, log_scale = p.unbind(-3)
    log_pk = logistic_bin_log_prob(x.unsqueeze(-2), mean, log_scale)  # (..., M, D)
    return torch.logsumexp(torch.log_softmax(logits, -2) + log_pk, dim=-2).sum(-1)


def _mixture_mean(out: Tensor, components: int) -> Tensor:
    p = _split(out, 3 * components).unflatten(-2, (3, components))
    logits, mean = p[..., 0, :, :], p[..., 1, :, :]
    return (torch.softmax(logits, -2) * mean).sum(-2).clamp(0, 1)


def _categorical_mean(out: Tensor) -> Tensor:
    probs = torch.softmax(_split(out, LEVELS), dim=-2)
    grid = torch.arange(LEVELS, dtype=out.dtype, device=out.device) / (LEVELS - 1)
    return (probs * grid[:, None]).sum(-2)


LIKELIHOODS = ("bernoulli", "gaussian", "categorical", "logistic", "logistic_mixture")


def get_likelihood(
    name: str, *, components: int = 10, scale: float | None = None, dequantized: bool = False
) -> Likelihood:
    """The likelihood ``name`` (one of :data:`LIKELIHOODS`).

    Args:
        components: M of ``logistic_mixture``.
        scale: a fixed σ for ``gaussian`` (K = 1); None learns log σ per dimension (K = 2).
        dequantized: ``gaussian`` on dequantized 8-bit data (bpd offset log 256 nats).

    Raises:
        ValueError: an unknown name or a non-positive ``components``/``scale``.
    """
    if name == "bernoulli":
        return Likelihood(name, 1, bernoulli_log_prob, torch.sigmoid, "binary")
    if name == "gaussian":
        if scale is not None and scale <= 0:
            raise ValueError(f"gaussian scale={scale}; accepted: a positive σ, or None (learned)")
        k = 2 if scale is None else 1
        offset = math.log(LEVELS) if dequantized else 0.0

        def log_prob(out: Tensor, x: Tensor) -> Tensor:
            return gaussian_log_prob(out, x, scale)

        return Likelihood(
            name, k, log_prob, lambda o: _split(o, k)[..., 0, :], "continuous", offset
        )
    if name == "categorical":
        return Likelihood(name, LEVELS, categorical_log_prob, _categorical_mean, "grey")
    if name == "logistic":
        mean = lambda o: _split(o, 2)[..., 0, :].clamp(0, 1)  # noqa: E731
        return Likelihood(name, 2, logistic_log_prob, mean, "grey")
    if name == "logistic_mixture":
        if components < 1:
            raise ValueError(f"components={components}; accepted: a positive integer")

        def mix(out: Tensor, x: Tensor) -> Tensor:
            return mixture_log_prob(out, x, components)

        return Likelihood(name, 3 * components, mix, lambda o: _mixture_mean(o, components), "grey")
    raise ValueError(f"unknown likelihood {name!r}; accepted: {list(LIKELIHOODS)}")
