"""The suite: built-in posteriors with known answers, to check a fit in 2 to 100 dimensions.

Each target carries a :class:`~vilab.targets.reference.Reference` (posterior means and
standard deviations) and, where it is normalized, ``log_z = 0``; the exactly samplable
ones have ``sample(n, generator)``. Metrics follow the Inference Gym (Sountsov, Radul et al.
2020): errors of means and of standard deviations in units of the reference sd.

=========================  ===  ======  =====================================================
name                       D    log Z   reference
=========================  ===  ======  =====================================================
``funnel2``, ``funnel10``  2,   0       closed form (Neal 2003)
                           10
``gaussian_ill10``,        10,  0       closed form; cond(Σ) = 100
``gaussian_ill100``        100
``mixture``                2    0       closed form; four separated modes
``banana``                 2    0       closed form (:class:`vilab.targets.energies.Banana`)
``logistic_breast_cancer`` 31   None    reference chains (benchmarks/reference_chains.py)
=========================  ===  ======  =====================================================

:data:`SUITE` lists the names in this order; :data:`SUITE_TARGETS` maps each to a factory
and is merged into the built-ins by :mod:`vilab.targets.resolve`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vilab.core.extras import MissingDependencyError, require
from vilab.targets.base import Target
from vilab.targets.energies import Banana
from vilab.targets.reference import Reference, load_reference_json

__all__ = [
    "SUITE",
    "SUITE_TARGETS",
    "BreastCancerLogistic",
    "Funnel",
    "IllConditionedGaussian",
    "LOGISTIC_REFERENCE_SHA256",
    "MissingDependencyError",
    "Reference",
    "SquareMixture",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _check_dim(name: str, dim: object, low: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < low:
        raise ValueError(f"{name} needs an integer dimension ≥ {low}, got {dim!r}")
    return dim


class _Cast:
    """float64 CPU tensors, cast once per (dtype, device) on first use."""

    def __init__(self, **tensors: Tensor) -> None:
        self.tensors = tensors
        self.cache: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}

    def __call__(self, like: Tensor) -> dict[str, Tensor]:
        key = (like.dtype, like.device)
        if key not in self.cache:
            self.cache[key] = {
                k: v.to(dtype=like.dtype, device=like.device) for k, v in self.tensors.items()
            }
        return self.cache[key]


class Funnel(Target):
    """Neal's funnel in D dimensions (Neal 2003, "Slice sampling", Ann. Statist. 31(3), §8):

        z = (v, x_1, …, x_{D−1}),   v ~ N(0, 3²),   x_i | v ~ N(0, e^v),
        log p(z) = log N(v; 0, 9) + Σ_i [−½ log 2π − v/2 − ½ x_i² e^{−v}],

    normalized (log Z = 0). Its neck (v ≪ 0, where x has sd e^{v/2}) and mouth (v ≫ 0)
    differ in scale by orders of magnitude, which defeats a single global Gaussian.

    Reference, in closed form: E z = 0 (v is centred, x is symmetric given v);
    sd(v) = 3; Var(x_i) = E[Var(x_i | v)] = E[e^v] = e^{9/2} (log-normal mean), so
    sd(x_i) = e^{9/4} ≈ 9.4877.

    ``quad_box`` is None: the 2-D funnel holds mass from x-scales of e^{−10} (neck) to
    e^{10} (mouth), which no uniform grid resolves; log Z = 0 is known anyway.

    Args:
        dim: D ≥ 2 (``funnel2`` and ``funnel10`` are built in).
    """

    def __init__(self, dim: int = 2) -> None:
        self.dim = _check_dim("the funnel", dim, 2)
        self.name = f"funnel{dim}"
        self.log_z = 0.0
        self.plot_box = (-10.0, 10.0, -10.0, 10.0) if dim == 2 else None
        self.quad_box = None
        self.reference = Reference(
            mean=(0.0,) * dim,
            sd=(3.0,) + (math.exp(9.0 / 4.0),) * (dim - 1),
            source="closed form: sd(v) = 3, sd(x_i) = e^{9/4}, means 0",
        )

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``z (..., D) -> (...)``; v is ``z[..., 0]``."""
        v, x = z[..., 0], z[..., 1:]
        log_pv = -0.5 * (v / 3.0) ** 2 - math.log(3.0) - 0.5 * _LOG_2PI
        n = self.dim - 1
        log_px = -0.5 * ((x * torch.exp(-0.5 * v).unsqueeze(-1)) ** 2).sum(-1)
        return log_pv + log_px - 0.5 * n * (_LOG_2PI + v)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws, ``(n, D)`` float64: v = 3ε₀, x_i = e^{v/2} ε_i."""
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        v = 3.0 * eps[:, :1]
        return torch.cat([v, torch.exp(0.5 * v) * eps[:, 1:]], dim=-1)


def _ill_conditioned(dim: int, seed: int, condition: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(μ, Q, λ)`` in float64: μ ~ N(0, I) and Q Haar-orthogonal from a seeded CPU
    generator (QR of a Gaussian matrix with the signs of diag(R) moved into Q, Mezzadri
    2007), λ log-spaced from 1/√cond to √cond."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    half = 0.5 * math.log10(condition)
    lam = torch.logspace(-half, half, dim, dtype=torch.float64)
    return mu, q, lam


class IllConditionedGaussian(Target):
    """A correlated, ill-conditioned Gaussian N(μ, Σ) in D dimensions:

        Σ = Q diag(λ) Qᵀ,   λ_k = 10^{−1 + 2(k−1)/(D−1)}  (0.1 … 10, so cond(Σ) = 100),
        log p(z) = −½ (z − μ)ᵀ Σ⁻¹ (z − μ) − ½ Σ_k log λ_k − (D/2) log 2π,

    normalized (log Z = 0). Q is a fixed random rotation and μ a fixed N(0, I) draw, both
    from a seeded CPU generator in float64 (the same on every machine); with y = Qᵀ(z − μ)
    the quadratic form is Σ_k y_k² / λ_k. The rotation makes every coordinate mix all
    scales, so a mean-field q must underestimate variances.

    Reference, in closed form: mean μ; sd_d = sqrt(Σ_dd) = sqrt(Σ_k Q_dk² λ_k).

    Args:
        dim: D ≥ 2 (``gaussian_ill10``, ``gaussian_ill100`` are built in).
        seed: the generator's seed for μ and Q.
        condition: cond(Σ) = λ_max / λ_min (> 1).
    """

    plot_box = None
    quad_box = None

    def __init__(self, dim: int = 10, seed: int = 0, condition: float = 100.0) -> None:
        self.dim = _check_dim("the ill-conditioned Gaussian", dim, 2)
        if not (isinstance(condition, (int, float)) and math.isfinite(condition)) or (
            condition <= 1.0
        ):
            raise ValueError(f"condition must be a finite number > 1, got {condition!r}")
        self.name = f"gaussian_ill{dim}"
        self.log_z = 0.0
        mu, q, lam = _ill_conditioned(dim, seed, float(condition))
        self.mu, self.q, self.lam = mu, q, lam
        self.condition = float(condition)
        self._log_norm = float(-0.5 * lam.log().sum() - 0.5 * dim * _LOG_2PI)
        # whitening map: (z − μ) W has identity covariance, W = Q diag(λ^{-1/2})
        self._cast = _Cast(mu=mu, whiten=q / lam.sqrt(), color=q * lam.sqrt())
        self.reference = Reference(
            mean=tuple(mu.tolist()),
            sd=tuple((q * q * lam).sum(-1).sqrt().tolist()),
            source=f"closed form: mean μ, sd sqrt(diag Σ); cond(Σ) = {condition:g}",
        )

    @property
    def covariance(self) -> Tensor:
        """Σ, ``(D, D)`` float64."""
        return (self.q * self.lam) @ self.q.T

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``z (..., D) -> (...)``."""
        t = self._cast(z)
        y = (z - t["mu"]) @ t["whiten"]
        return self._log_norm - 0.5 * (y * y).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws, ``(n, D)`` float64: z = μ + Q diag(√λ) ε."""
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mu + eps @ (self.q * self.lam.sqrt()).T


class SquareMixture(Target):
    """An equal-weight mixture of four isotropic Gaussians at the corners of a square:

        p(z) = ¼ Σ_k N(z; m_k, σ² I),   m_k ∈ {(±a, ±a)},   a = 2, σ = 0.5,

    normalized (log Z = 0). The modes are 8σ apart along each axis, so a q that covers one
    mode has a KL near log 4 and a unimodal q mean-seeking over all four is far too wide.

    Reference, in closed form: E z = 0 by symmetry; Var(z_d) = σ² + E[m_kd²] = σ² + a²
    (law of total variance), so sd = sqrt(4.25) ≈ 2.0616.
    """

    dim = 2
    name = "mixture"
    log_z = 0.0

    def __init__(self, offset: float = 2.0, scale: float = 0.5) -> None:
        if not (offset > 0 and scale > 0):
            raise ValueError(f"offset and scale must be > 0, got {offset!r}, {scale!r}")
        self.offset, self.scale = float(offset), float(scale)
        a = self.offset
        self.means = torch.tensor([[a, a], [-a, a], [-a, -a], [a, -a]], dtype=torch.float64)
        self._cast = _Cast(means=self.means)
        # 8σ past every mode: the mass outside is < 1e-14; the figure shows 4σ past them
        r, rp = a + 8.0 * scale, a + 4.0 * scale
        self.quad_box, self.plot_box = (-r, r, -r, r), (-rp, rp, -rp, rp)
        sd = math.sqrt(scale**2 + a**2)
        self.reference = Reference(
            mean=(0.0, 0.0),
            sd=(sd, sd),
            source=f"closed form: mean 0, sd sqrt(σ² + a²) = {sd:.6g}",
        )

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``z (..., 2) -> (...)``."""
        m = self._cast(z)["means"]
        d2 = ((z.unsqueeze(-2) - m) ** 2).sum(-1)  # (..., 4)
        log_comp = -0.5 * d2 / self.scale**2 - _LOG_2PI - 2.0 * math.log(self.scale)
        return torch.logsumexp(log_comp, dim=-1) - math.log(4.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws, ``(n, 2)`` float64: a uniform corner plus σε."""
        k = torch.randint(0, 4, (n,), generator=generator)
        eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return self.means[k] + self.scale * eps


@functools.lru_cache(maxsize=1)
def _breast_cancer() -> tuple[Tensor, Tensor]:
    """``(X (569, 30), y (569,))`` float64, features standardized on the full data."""
    datasets = require("sklearn.datasets", "posteriors", "logistic_breast_cancer", "scikit-learn")
    data = datasets.load_breast_cancer()
    x = torch.as_tensor(data.data, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0, correction=0)
    y = torch.as_tensor(data.target, dtype=torch.float64)
    return x, y


#: SHA-256 of reference/logistic_breast_cancer.json (written by benchmarks/reference_chains.py).
LOGISTIC_REFERENCE_SHA256 = "f2ad6134d78ffc13d1db62a75a49302911657f9f0703de6b274b870a430103ae"


class BreastCancerLogistic(Target):
    """Bayesian logistic regression on the Wisconsin diagnostic breast-cancer data
    (Street, Wolberg & Mangasarian 1993; UCI repository, Dua & Graff 2019), as shipped by
    scikit-learn: N = 569 tumours, 30 features standardized to mean 0 and sd 1 (population
    sd) over the full data set, label y = 1 for benign.

        z = (b, w_1, …, w_30),  D = 31,   ℓ_n = b + x_nᵀ w,
        log p̃(z) = Σ_n [y_n log σ(ℓ_n) + (1 − y_n) log σ(−ℓ_n)] + Σ_d log N(z_d; 0, 1).

    log Z (the model evidence) is unknown: ``log_z = None``.

    Reference: long reference chains (benchmarks/reference_chains.py: HMC whitened by the
    Laplace approximation, several chains from overdispersed starts, max R̂ < 1.01 and
    min bulk and sd ESS > 2000), stored in ``reference/logistic_breast_cancer.json`` with
    the Monte Carlo errors of the means and sds, and checked against
    :data:`LOGISTIC_REFERENCE_SHA256` when the target is built; ``source`` states the chain
    settings, R̂ and ESS (stored: 8 × 25000 draws, max R̂ 1.0001, min bulk ESS 94811,
    MCSE ≤ 0.0033 sd). The posterior is skewed: its mean lies up to 0.34 sd from the MAP
    and its sds up to 6 % from the Laplace ones (importance sampling from a t on the
    Laplace approximation agrees with the chains, tests/test_suite_targets.py).
    Inference Gym's German-credit logistic regression is the model's precedent
    (Sountsov, Radul et al. 2020).

    Args:
        reference: load and check the stored reference (False: ``reference`` is None; for
            the script that computes it).

    Raises:
        MissingDependencyError: scikit-learn is not installed.
        ValueError: the reference file is missing or fails its checksum.
    """

    dim = 31
    name = "logistic_breast_cancer"
    log_z = None
    plot_box = None
    quad_box = None

    def __init__(self, reference: bool = True) -> None:
        x, y = _breast_cancer()
        self.x, self.y = x, y
        self._cast = _Cast(x=x, y=y)
        self.reference_data: dict[str, Any] | None = None
        if reference:
            self._load_reference()

    def _load_reference(self) -> None:
        data = load_reference_json(self.name, LOGISTIC_REFERENCE_SHA256)
        if len(data["mean"]) != self.dim:
            raise ValueError(
                f"reference file for {self.name!r} has {len(data['mean'])} means, expected "
                f"{self.dim}"
            )
        self.reference_data = data
        self.reference = Reference(tuple(data["mean"]), tuple(data["sd"]), data["source"])

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``z (..., 31) -> (...)``; costs ``(..., 569)`` memory for the logits."""
        t = self._cast(z)
        logits = z[..., :1] + z[..., 1:] @ t["x"].T  # (..., N)
        log_lik = (t["y"] * logits - F.softplus(logits)).sum(-1)
        log_prior = -0.5 * (z * z).sum(-1) - 0.5 * self.dim * _LOG_2PI
        return log_lik + log_prior


SUITE: tuple[str, ...] = (
    "funnel2",
    "funnel10",
    "gaussian_ill10",
    "gaussian_ill100",
    "mixture",
    "banana",
    "logistic_breast_cancer",
)

SUITE_TARGETS: dict[str, Callable[[], Target]] = {
    "funnel2": lambda: Funnel(2),
    "funnel10": lambda: Funnel(10),
    "gaussian_ill10": lambda: IllConditionedGaussian(10),
    "gaussian_ill100": lambda: IllConditionedGaussian(100),
    "mixture": SquareMixture,
    "banana": Banana,
    "logistic_breast_cancer": BreastCancerLogistic,
}
