"""Gaussian families: standard normal, mean-field and full-rank, free or amortized.

mean-field:  z = μ + σ ⊙ ε,  σ = softplus(ρ),
             log q(z) = −½‖ε‖² − Σᵢ log σᵢ − (D/2) log 2π;
full-rank:   z = μ + L ε,    L lower triangular with diag softplus(ρ),
             log q(z) = −½‖ε‖² − Σᵢ log Lᵢᵢ − (D/2) log 2π,     ε ~ N(0, I).

Parameters at a context: ``loc(context)``, ``scale(context)`` (mean-field, standard
normal), ``scale_tril(context)`` and ``covariance_matrix(context)`` (full-rank) return
``(D,)`` / ``(D, D)`` for a free family (the parameters themselves where they are stored as
such) and ``(B, D)`` / ``(B, D, D)`` at a context ``(B, C)``. Their ``distribution(context)``
views: :mod:`vilab.families.distribution`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vilab.core.params import check_dims, make_params
from vilab.families.base import Family, TrainingSample
from vilab.families.distribution import (
    FullRankGaussianDistribution,
    MeanFieldGaussianDistribution,
)

LOG_2PI = math.log(2.0 * math.pi)
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)  # softplus(x) = 1 at x = log(e − 1)


def std_normal_log_prob(eps: Tensor) -> Tensor:
    """log N(ε; 0, I) summed over the last dimension."""
    return -0.5 * (eps * eps).sum(-1) - 0.5 * eps.shape[-1] * LOG_2PI


def gaussian_kl_per_dim(loc: Tensor, scale: Tensor, log_scale: Tensor | None = None) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per dimension, ½(μ² + σ² − 1) − log σ, in the shape of
    ``loc`` (``log_scale``: log σ if already computed)."""
    log_scale = torch.log(scale) if log_scale is None else log_scale
    return 0.5 * (loc * loc + scale * scale - 1.0) - log_scale


class DiagonalGaussian(Family):
    """What the diagonal Gaussians share: from ``loc_scale(context) -> (μ, σ)``, each
    ``([B,] D)``, their parameters one at a time and their torch distribution."""

    def loc_scale(self, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def loc(self, context: Tensor | None = None) -> Tensor:
        """μ, ``(D,)`` free (the parameter itself where it is one) or ``(B, D)`` at a context."""
        return self.loc_scale(context)[0]

    def scale(self, context: Tensor | None = None) -> Tensor:
        """σ, ``(D,)`` free or ``(B, D)`` at a context."""
        return self.loc_scale(context)[1]

    def distribution(
        self, context: Tensor | None = None, *, validate_args: bool | None = None
    ) -> MeanFieldGaussianDistribution:
        """q as ``Independent(Normal(loc, scale), 1)`` (:mod:`vilab.families.distribution`)."""
        return MeanFieldGaussianDistribution(self, context, validate_args=validate_args)


class StandardNormal(DiagonalGaussian):
    """N(0, I) with no parameters; accepts (and ignores) a context for the batch size."""

    def __init__(self, dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        check_dims(dim)
        self.dim, self.context_dim = dim, context_dim
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shape = self.sample_shape(n, context)
        eps = torch.randn(shape, dtype=self._ref.dtype, device=self._ref.device)
        return eps, std_normal_log_prob(eps)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return std_normal_log_prob(z)

    def loc_scale(self, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """μ = 0 and σ = 1, ``([B,] D)``."""
        shape = self.sample_shape(1, context)[1:]
        zeros = torch.zeros(shape, dtype=self._ref.dtype, device=self._ref.device)
        return zeros, torch.ones_like(zeros)


class MeanFieldGaussian(DiagonalGaussian):
    """Diagonal Gaussian q(z [| c]) = N(μ, diag σ²).

    Args:
        dim: D.
        context_dim: None for free (μ, ρ); else an amortized head from a context (B, C).
        init_loc_scale: standard deviation of the initial μ (free) or head bias.
        init_scale: initial σ.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int | None = None,
        init_loc_scale: float = 0.0,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_dims(dim)
        self.dim, self.context_dim = dim, context_dim
        rho0 = math.log(math.expm1(init_scale)) if init_scale != 1.0 else _SOFTPLUS_INV_1
        self.params = make_params(
            {"loc": init_loc_scale * torch.randn(dim), "rho": torch.full((dim,), rho0)},
            context_dim,
        )

    def loc_scale(self, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """μ and σ = softplus(ρ), each ``(D,)`` free or ``(B, D)`` at a context ``(B, C)``."""
        p = self.params(context)
        return p["loc"], F.softplus(p["rho"])

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shape = self.sample_shape(n, context)
        return self.rsample_given(*self.loc_scale(context), shape)

    @staticmethod
    def rsample_given(
        loc: Tensor, scale: Tensor, shape: tuple[int, ...], log_scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples of N(loc, diag scale²) of ``shape`` and their log-density
        (``log_scale``: log σ if already computed)."""
        log_scale = scale.log() if log_scale is None else log_scale
        eps = torch.randn(shape, dtype=loc.dtype, device=loc.device)
        return loc + scale * eps, std_normal_log_prob(eps) - log_scale.sum(-1)

    def training_sample(
        self,
        n: int,
        context: Tensor | None = None,
        *,
        stl: bool = False,
        need_value: bool = True,
    ) -> TrainingSample:
        """:meth:`Family.training_sample` from one evaluation of (μ, σ): the sample, its
        log-density, the STL surrogate log N(z; sg(μ), sg(σ)²) (sg = stop-gradient) and
        ``kl_per_dim`` = KL(N(μ, σ²) ‖ N(0, 1)) per dimension, ``(B, D)`` or ``(D,)``."""
        shape = self.sample_shape(n, context)
        loc, scale = self.loc_scale(context)
        log_scale = scale.log()
        z, log_q = self.rsample_given(loc, scale, shape, log_scale)
        surrogate = log_q
        if stl:  # μ and σ stopped, so the parameters and the context are: only z is live
            eps_z = (z - loc.detach()) / scale.detach()
            surrogate = std_normal_log_prob(eps_z) - log_scale.detach().sum(-1)
        return TrainingSample(z, log_q, surrogate, gaussian_kl_per_dim(loc, scale, log_scale))

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        loc, scale = self.loc_scale(context)
        return std_normal_log_prob((z - loc) / scale) - scale.log().sum(-1)


class FullRankGaussian(Family):
    """Gaussian q(z [| c]) = N(μ, L Lᵀ) with a lower-triangular Cholesky factor L.

    Args:
        dim: D.
        context_dim: None for free parameters; else an amortized head from (B, C).
        init_scale: initial diagonal of L.
    """

    def __init__(self, dim: int, context_dim: int | None = None, init_scale: float = 1.0) -> None:
        super().__init__()
        check_dims(dim)
        self.dim, self.context_dim = dim, context_dim
        rho0 = math.log(math.expm1(init_scale))
        tril = torch.zeros(dim, dim)
        tril.diagonal().fill_(rho0)
        self.params = make_params({"loc": torch.zeros(dim), "tril": tril}, context_dim)
        self.register_buffer("strict_lower", torch.ones(dim, dim).tril(-1), persistent=False)

    @classmethod
    def from_linear_gaussian(cls, weight: Tensor, bias: Tensor, cov: Tensor) -> FullRankGaussian:
        """The amortized q(z | x) = N(A x + c, Σ), exactly: a linear-Gaussian posterior.

        For z ~ N(0, I), x | z ~ N(W z + b, σ² I) (probabilistic PCA, Tipping & Bishop 1999)
        the posterior is N(A x + c, Σ) with Σ = (I + WᵀW / σ²)⁻¹, A = Σ Wᵀ / σ², c = −A b:
        :meth:`vilab.targets.latent.LinearGaussianModel.posterior` returns ``(A, c, Σ)``. The
        head's weight is A (zero on the rows of L), its bias c and the raw L = chol(Σ) with
        softplus⁻¹ on the diagonal; device and dtype are those of ``weight``.

        Args:
            weight: A, ``(D, C)`` (C = the context's size, x's dimension).
            bias: c, ``(D,)``.
            cov: Σ, ``(D, D)``, positive definite.
        """
        d, x_dim = weight.shape
        q = cls(d, context_dim=x_dim).to(weight.device, weight.dtype)
        tril = torch.linalg.cholesky(cov)
        raw = tril.clone()
        raw.diagonal().copy_(torch.log(torch.expm1(tril.diagonal())))
        head = q.params.head
        with torch.no_grad():
            head.weight.zero_()
            head.weight[:d].copy_(weight)
            head.bias.copy_(torch.cat([bias, raw.reshape(-1)]))
        return q

    def loc_tril(self, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``μ (…, D)`` and ``L (…, D, D)`` with a positive diagonal."""
        p = self.params(context)
        raw = p["tril"]
        diag = F.softplus(raw.diagonal(dim1=-2, dim2=-1))
        return p["loc"], raw * self.strict_lower + torch.diag_embed(diag)

    def loc(self, context: Tensor | None = None) -> Tensor:
        """μ, ``(D,)`` free (the parameter itself) or ``(B, D)`` at a context."""
        return self.params(context)["loc"]

    def scale_tril(self, context: Tensor | None = None) -> Tensor:
        """L, lower triangular with diagonal softplus(ρ), ``(D, D)`` or ``(B, D, D)``."""
        return self.loc_tril(context)[1]

    def covariance_matrix(self, context: Tensor | None = None) -> Tensor:
        """Σ = L Lᵀ, ``(D, D)`` or ``(B, D, D)``."""
        tril = self.scale_tril(context)
        return tril @ tril.mT

    def distribution(
        self, context: Tensor | None = None, *, validate_args: bool | None = None
    ) -> FullRankGaussianDistribution:
        """q as ``MultivariateNormal(loc, scale_tril=L)`` (:mod:`vilab.families.distribution`)."""
        return FullRankGaussianDistribution(self, context, validate_args=validate_args)

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shape = self.sample_shape(n, context)
        loc, tril = self.loc_tril(context)
        eps = torch.randn(shape, dtype=loc.dtype, device=loc.device)
        z = loc + (tril @ eps.unsqueeze(-1)).squeeze(-1)
        log_diag = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return z, std_normal_log_prob(eps) - log_diag

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        loc, tril = self.loc_tril(context)
        diff = (z - loc).unsqueeze(-1)
        eps = torch.linalg.solve_triangular(
            tril.expand(*diff.shape[:-2], -1, -1), diff, upper=False
        )
        log_diag = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return std_normal_log_prob(eps.squeeze(-1)) - log_diag
