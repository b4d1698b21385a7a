"""Latent-variable models as log-joints: log p(x, z) = log p(z) + log p(x | z).

Shapes: ``x`` is ``(B, *event)``, ``z`` is ``(S, B, D)``; ``log_joint`` returns ``(S, B)``.
The objectives in :mod:`vilab.estimators` only ever see ``log p(x, z) − log q(z | x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vilab.core.device import autocast

LOG_2PI = math.log(2.0 * math.pi)


class LatentVariableModel(nn.Module):
    """Base class: a standard-normal prior and a likelihood given by subclasses."""

    latent_dim: int

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) = −½‖z‖² − (D/2) log 2π, ``(S, B, D) -> (S, B)``."""
        return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) = log p(z) + log p(x | z), ``(S, B)``."""
        return self.log_prior(z) + self.log_likelihood(x, z)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """``log_joint`` (so that ``torch.func.functional_call`` can evaluate it)."""
        return self.log_joint(x, z)


class DecoderModel(LatentVariableModel):
    """A deep latent Gaussian model: z ~ N(0, I), x | z from a decoder network.

    Args:
        decoder: network ``(..., D) -> (..., out)``; ``out = prod(event)`` logits for a
            Bernoulli likelihood, ``2 · prod(event)`` (mean, log-scale) for a Gaussian one.
        latent_dim: D.
        likelihood: ``"bernoulli"`` (binary data, decoder gives logits) or ``"gaussian"``
            (continuous data; learned per-pixel variance, seed 003), or the name of
            ``log_prob``.
        log_prob: any other likelihood, ``(out (S, B, K·D), x (B, D)) -> (S, B)`` (e.g.
            from ``vilab.likelihoods``, handed in by the caller: targets know no data).
    """

    def __init__(
        self,
        decoder: nn.Module,
        latent_dim: int,
        likelihood: str = "bernoulli",
        log_prob: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if log_prob is None and likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.decoder, self.latent_dim, self.likelihood = decoder, latent_dim, likelihood
        self._log_prob = log_prob
        #: ``"bf16"``: in training mode the decoder runs under bfloat16 autocast and its
        #: outputs come back in float32, where the log-likelihood is summed; in
        #: evaluation mode everything is float32.
        self.precision = "float32"

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        if self.precision == "float32" or not self.training:
            out = self.decoder(z)
        else:
            with autocast(z.device, self.precision):
                out = self.decoder(z)
            out = out.float()
        x = x.flatten(1)
        if self._log_prob is not None:
            return self._log_prob(out, x)
        if self.likelihood == "bernoulli":
            # log Bern(x; σ(l)) = x l − softplus(l), summed over pixels
            return (x * out - F.softplus(out)).sum(-1)
        mean, log_scale = out.chunk(2, dim=-1)
        return (-0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * LOG_2PI).sum(
            -1
        )


class LinearGaussianModel(LatentVariableModel):
    """Probabilistic PCA, z ~ N(0, I_d), x | z ~ N(W z + b, σ² I): the test bed whose
    log p(x) and posterior are closed form (REFERENCE.md §4).

        p(x) = N(x; b, W Wᵀ + σ² I),
        p(z | x) = N(Σ Wᵀ (x − b) / σ², Σ),   Σ = (I + WᵀW / σ²)⁻¹.
    """

    def __init__(self, weight: Tensor, bias: Tensor, sigma: float, learnable: bool = False) -> None:
        super().__init__()
        if learnable:
            self.weight, self.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.sigma = float(sigma)
        self.latent_dim = weight.shape[1]

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        mean = z @ self.weight.T + self.bias
        r = (x - mean) / self.sigma
        return -0.5 * (r * r).sum(-1) - x.shape[-1] * (math.log(self.sigma) + 0.5 * LOG_2PI)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x), ``(B, x_dim) -> (B,)``."""
        w = self.weight
        cov = w @ w.T + self.sigma**2 * torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        return torch.distributions.MultivariateNormal(self.bias, cov).log_prob(x)

    def posterior(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(A, c, Σ)`` with posterior mean ``x @ Aᵀ + c`` and covariance Σ: A ``(D, x_dim)``,
        c ``(D,)``, Σ ``(D, D)``. As a family q(z | x) = p(z | x):
        :meth:`vilab.families.gaussian.FullRankGaussian.from_linear_gaussian`."""
        d = self.latent_dim
        w = self.weight
        prec = torch.eye(d, dtype=w.dtype, device=w.device) + w.T @ w / self.sigma**2
        cov = torch.linalg.inv(prec)
        a = cov @ self.weight.T / self.sigma**2
        return a, -a @ self.bias, cov
