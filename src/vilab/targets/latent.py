"""Latent-variable models as log-joints: log p(x, z) = log p(z) + log p(x | z).

Shapes: ``x`` is ``(B, *event)``, ``z`` is ``(S, B, D)``; ``log_joint`` returns ``(S, B)``.
The objectives in :mod:`vilab.estimators` only ever see ``log p(x, z) − log q(z | x)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vilab.core.device import autocast
from vilab.likelihoods import Likelihood, get_likelihood

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
        decoder: network ``(..., D) -> (..., K·prod(event))``, K the likelihood's outputs
            per dimension (1 Bernoulli logit; mean and log-scale of a Gaussian, seed 003; …).
        latent_dim: D.
        likelihood: p(x | z) (:mod:`vilab.likelihoods`), or its name with its defaults.
    """

    def __init__(
        self, decoder: nn.Module, latent_dim: int, likelihood: str | Likelihood = "bernoulli"
    ) -> None:
        super().__init__()
        self.decoder, self.latent_dim = decoder, latent_dim
        self.likelihood = get_likelihood(likelihood) if isinstance(likelihood, str) else likelihood
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
        return self.likelihood.log_prob(out, x.flatten(1))


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
