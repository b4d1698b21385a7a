"""The semi-implicit family of Unbiased Implicit Variational Inference (Titsias & Ruiz,
AISTATS 2019).

    ε ~ N(0, I_e),   z = μ_θ(ε [, h]) + σ ⊙ ξ,   ξ ~ N(0, I_D),
    q(z [| h]) = ∫ N(z; μ_θ(ε, h), diag σ²) N(ε; 0, I) dε.

log q(z) has no closed form, but its gradient with respect to z does:

    ∇_z log q(z) = E_{q(ε | z)} [ −(z − μ_θ(ε, h)) / σ² ],

and since E_q[∇_θ log q_θ(z)] = 0, the reparameterized gradient of E_q[log q(z)] is
E[∇_z log q(z) · ∂z/∂θ]. :meth:`SemiImplicit.entropy_surrogate` returns a term whose
gradient is that estimate, with ε' ~ q(ε | z) drawn by the shared HMC sampler
(:mod:`vilab.samplers.hmc`) warm-started at the ε that generated z (the paper's recipe: 5
burn-in + 5 kept transitions of 5 leapfrog steps). Non-finite HMC proposals are rejected,
so no NaN reaches the parameters; the step size is adapted across training iterations
toward the target acceptance rate.

For reporting, log q(z) is estimated by importance sampling over ε with K prior draws,
``log (1/K) Σ_k N(z; μ(ε_k), σ²)``: biased low for finite K (by Jensen), which makes a KL
built from it a *lower* estimate; :meth:`log_prob_bounds` also returns the upper estimate
that includes the generating ε (Yin & Zhou 2018's SIVI bound), so the two bracket it.
:meth:`SemiImplicit.training_sample` (the Family contract's training call) returns the
entropy surrogate as the gradient term and, as the value to log, the upper estimate with
``train_log_q_samples`` draws (fewer than evaluation's ``log_q_samples``: it is paid every
logged step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vilab.families.base import Family, TrainingSample
from vilab.families.gaussian import LOG_2PI
from vilab.nets.mlp import MLP
from vilab.samplers.hmc import hmc_step, log_prob_and_grad


class SemiImplicit(Family):
    """UIVI's q(z [| h]), free (``context_dim=None``) or amortized from features h.

    Args:
        dim: D.
        noise_dim: e, the dimension of ε.
        hidden: widths of the network μ_θ([ε, h]).
        context_dim: C (None for a free family).
        activation: of the network.
        hmc_burn_in, hmc_samples, hmc_leapfrog: the HMC recipe for ε' ~ q(ε | z).
        target_accept: acceptance rate the HMC step size is steered to.
        log_q_samples: K, prior draws of ε for the importance-sampled log q(z) of
            evaluation (:meth:`rsample_and_log_prob`, reported KLs and log-likelihoods).
        train_log_q_samples: draws of ε for the log q(z) value of :meth:`training_sample`
            (the bound logged during training).
    """

    def __init__(
        self,
        dim: int,
        noise_dim: int = 10,
        hidden: Sequence[int] = (200, 200),
        context_dim: int | None = None,
        activation: str = "relu",
        hmc_burn_in: int = 5,
        hmc_samples: int = 5,
        hmc_leapfrog: int = 5,
        target_accept: float = 0.8,
        log_q_samples: int = 1000,
        train_log_q_samples: int = 100,
    ) -> None:
        super().__init__()
        if noise_dim < 1 or dim < 1:
            raise ValueError(f"dim and noise_dim must be ≥ 1, got {dim}, {noise_dim}")
        if hmc_samples < 1 or hmc_leapfrog < 1 or hmc_burn_in < 0:
            raise ValueError("need hmc_samples ≥ 1, hmc_leapfrog ≥ 1, hmc_burn_in ≥ 0")
        if log_q_samples < 1 or train_log_q_samples < 1:
            raise ValueError(
                "log_q_samples and train_log_q_samples must be ≥ 1, got "
                f"{log_q_samples}, {train_log_q_samples}"
            )
        self.dim, self.context_dim, self.noise_dim = dim, context_dim, noise_dim
        self.net = MLP([noise_dim + (context_dim or 0), *hidden, dim], activation)
        self.rho = nn.Parameter(torch.full((dim,), math.log(math.expm1(0.5))))
        self.hmc_burn_in, self.hmc_samples, self.hmc_leapfrog = (
            hmc_burn_in,
            hmc_samples,
            hmc_leapfrog,
        )
        self.target_accept, self.log_q_samples = target_accept, log_q_samples
        self.train_log_q_samples = train_log_q_samples
        self.register_buffer("step_size", torch.tensor(0.1))
        self.register_buffer("accept_rate", torch.tensor(float("nan")))

    @property
    def sigma(self) -> Tensor:
        return F.softplus(self.rho)

    def context_projection(self, context: Tensor) -> Tensor:
        """The context's share of the first layer, W_h h + b, ``(B, H)``: computed once and
        reused by every evaluation of μ for the same h (HMC, log q estimates)."""
        first = self.net[0]
        return F.linear(context, first.weight[:, self.noise_dim :], first.bias)

    def mean(self, eps: Tensor, context: Tensor | None, projected: Tensor | None = None) -> Tensor:
        """μ_θ(ε [, h]) = net([ε, h]): ``eps (..., e)`` (and ``h (B, C)`` lined up with the
        last batch dimension) -> ``(..., D)``; ``projected`` is
        :meth:`context_projection` of h, if already computed."""
        if context is None:
            return self.net(eps)
        if projected is None:
            projected = self.context_projection(context)
        h = F.linear(eps, self.net[0].weight[:, : self.noise_dim]) + projected
        for layer in list(self.net)[1:]:
            h = layer(h)
        return h

    def rsample_with_noise(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z`` and the ε that generated it, ``(n[, B], D)`` and ``(n[, B], e)``."""
        shape = self.sample_shape(n, context)
        ref = self.rho
        eps = torch.randn(*shape[:-1], self.noise_dim, dtype=ref.dtype, device=ref.device)
        xi = torch.randn(shape, dtype=ref.dtype, device=ref.device)
        return self.mean(eps, context) + self.sigma * xi, eps

    def _conditional_log_prob(self, z: Tensor, mu: Tensor) -> Tensor:
        sigma = self.sigma
        r = (z - mu) / sigma
        return -0.5 * (r * r).sum(-1) - sigma.log().sum() - 0.5 * self.dim * LOG_2PI

    @torch.no_grad()
    def log_prob_bounds(
        self,
        z: Tensor,
        context: Tensor | None = None,
        eps0: Tensor | None = None,
        k: int | None = None,
        chunk: int = 50,
    ) -> tuple[Tensor, Tensor | None]:
        """Importance-sampled log q(z) from K prior draws of ε, ``(S[, B])``, and — when
        the generating ``eps0`` is given — the SIVI upper estimate that adds it as a
        (K+1)-th component. E[lower] ≤ log q(z) ≤ E[upper].

        One bank of K draws is shared by the S samples of each context (as in the
        official UIVI code): K + S network passes instead of K·S, and each sample's
        estimate keeps its expectation.
        """
        k = k or self.log_q_samples
        proj = None if context is None else self.context_projection(context)
        parts = []
        for m in _chunks(k, chunk):
            bank = torch.randn(m, *z.shape[1:-1], self.noise_dim, dtype=z.dtype, device=z.device)
            mu = self.mean(bank, context, proj)  # (m, [B,] D)
            parts.append(
                torch.logsumexp(self._conditional_log_prob(z.unsqueeze(0), mu.unsqueeze(1)), 0)
            )
        lse = torch.logsumexp(torch.stack(parts), 0)  # (S[, B])
        lower = lse - math.log(k)
        if eps0 is None:
            return lower, None
        own = self._conditional_log_prob(z, self.mean(eps0, context, proj))
        return lower, torch.logaddexp(lse, own) - math.log(k + 1)

    exact_log_q = False

    def rsample_and_log_q_bounds(
        self, n: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Samples with the plain importance-sampled (lower) and the SIVI (upper) estimate
        of log q(z) from ``log_q_samples`` draws of ε (:meth:`log_prob_bounds`)."""
        z, eps0 = self.rsample_with_noise(n, context)
        lower, upper = self.log_prob_bounds(z, context, eps0)
        assert upper is not None
        return z, lower, upper

    def estimate_notes(self) -> dict[str, float | str]:
        return {
            "kl_note": (
                f"semi-implicit q: log q(z) estimated by importance sampling over ε with "
                f"K={self.log_q_samples} prior draws; kl uses the upper (SIVI) estimate "
                "that adds the generating ε, kl_lower the plain one; the true KL lies "
                "between them in expectation"
            ),
            "hmc_step_size": float(self.step_size),
            "hmc_accept_rate": float(self.accept_rate),
        }

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Samples without the costly log q(z) estimate."""
        return self.rsample_with_noise(n, context)[0]

    def log_prob_estimate(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """The importance-sampled log q(z) of an arbitrary z, from ``log_q_samples`` prior
        draws of ε shared by all z (the lower estimate of :meth:`log_prob_bounds`); its
        exponential, the mixture (1/K) Σ_k N(z; μ(ε_k), diag σ²), is an unbiased estimate
        of q(z)."""
        return self.log_prob_bounds(z, context)[0]

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Samples and the upper (SIVI) estimate of log q(z) with ``log_q_samples`` draws
        of ε, without gradient: for evaluation, where it errs on the conservative side
        (a KL too high, a log p(x) too low, in expectation). Training uses
        :meth:`entropy_surrogate`."""
        z, eps0 = self.rsample_with_noise(n, context)
        _, upper = self.log_prob_bounds(z.detach(), context, eps0)
        assert upper is not None
        return z, upper

    def training_sample(
        self,
        n: int,
        context: Tensor | None = None,
        *,
        stl: bool = False,
        need_value: bool = True,
    ) -> TrainingSample:
        """Samples, the upper (SIVI) estimate of log q(z) from ``train_log_q_samples``
        draws of ε as the value (NaN when ``need_value`` is False: it costs K network
        passes), and :meth:`entropy_surrogate` as the gradient term. ``stl`` is refused:
        there is no log_prob to stop."""
        if stl:
            self.require_log_prob()
        z, eps0 = self.rsample_with_noise(n, context)
        if need_value:
            ctx = None if context is None else context.detach()
            log_q = self.log_prob_bounds(z.detach(), ctx, eps0, k=self.train_log_q_samples)[1]
        else:
            log_q = z.new_full(z.shape[:-1], math.nan)
        assert log_q is not None
        return TrainingSample(z, log_q, self.entropy_surrogate(z, eps0, context))

    def sample_noise_posterior(self, z: Tensor, eps0: Tensor, context: Tensor | None) -> Tensor:
        """ε' ~ q(ε | z [, h]) by HMC from ε₀: ``(hmc_samples, ..., e)``."""
        z, eps0 = z.detach(), eps0.detach()
        ctx = None if context is None else context.detach()
        params = [p for p in self.net.parameters()]
        requires = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            proj = None if ctx is None else self.context_projection(ctx)

            def log_post(e: Tensor) -> Tensor:
                return -0.5 * (e * e).sum(-1) + self._conditional_log_prob(
                    z, self.mean(e, ctx, proj)
                )

            with torch.no_grad():
                x = eps0
                current = log_prob_and_grad(log_post, x)
                step = self.step_size.expand(x.shape[:-1])
                kept, probs = [], []
                for i in range(self.hmc_burn_in + self.hmc_samples):
                    x, lp, g, prob, _ = hmc_step(
                        log_post, x, step, self.hmc_leapfrog, None, current, 0.2
                    )
                    current = (lp, g)
                    probs.append(prob.mean())
                    if i >= self.hmc_burn_in:
                        kept.append(x)
                rate = torch.stack(probs).mean()
                # steer the shared step size toward the target across iterations
                self.step_size.mul_(torch.exp(0.5 * (rate - self.target_accept))).clamp_(1e-4, 10.0)
                self.accept_rate.copy_(rate)
        finally:
            for p, r in zip(params, requires):
                p.requires_grad_(r)
        return torch.stack(kept)

    def entropy_surrogate(self, z: Tensor, eps0: Tensor, context: Tensor | None = None) -> Tensor:
        """A ``(...)`` term whose gradient with respect to every parameter (through the
        reparameterized z) is the UIVI estimate of ∇ log q(z): ŝ(z) · z with
        ŝ = mean over ε' of −(z − μ(ε'))/σ², held fixed. Its value is meaningless."""
        eps_post = self.sample_noise_posterior(z, eps0, context)
        with torch.no_grad():
            ctx = None if context is None else context.detach()
            mu = self.mean(eps_post, ctx)
            score = (-(z.detach() - mu) / self.sigma.detach() ** 2).mean(0)
        return (score * z).sum(-1)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]
