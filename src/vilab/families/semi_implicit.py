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
toward the target acceptance rate, on the device. Every chain moves at once
(:func:`~vilab.samplers.hmc.hmc_trace`), each leapfrog step costs one pass of the network
(its forward and a hand-written backward to ε, :func:`~vilab.nets.input_grad.mlp_input_grad`;
the potential in :mod:`vilab.families.noise_posterior`), and μ(ε') at the kept draws comes
with the chains: 1 + (5 + 5) × 5 = 51 passes per training step, nothing read back to the
host.

For reporting, log q(z) is estimated by importance sampling over ε with K prior draws
(the base class :class:`~vilab.families.noise_mixture.NoiseMixture`),
``log (1/K) Σ_k N(z; μ(ε_k), σ²)``: biased low for finite K (by Jensen), which makes a KL
built from it a *lower* estimate; :meth:`log_prob_bounds` also returns the upper estimate
that includes the generating ε (Yin & Zhou 2018's SIVI bound), so the two bracket it.
:meth:`SemiImplicit.training_sample` (the Family contract's training call) returns the
entropy surrogate as the gradient term and, as the value to log, the upper estimate with
``train_log_q_samples`` draws (fewer than evaluation's ``log_q_samples``: it is paid every
logged step). Evaluation can size K to a standard error instead (``log_q_stderr``,
:meth:`SemiImplicit.log_q_estimate`), and says the error it reached
(:meth:`SemiImplicit.estimate_notes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vilab.families.base import TrainingSample
from vilab.families.gaussian import LOG_2PI
from vilab.families.log_q import LogQEstimate, log_q_note
from vilab.families.noise_mixture import NoiseMixture
from vilab.families.noise_posterior import autograd_noise_potential, mlp_noise_target
from vilab.nets.input_grad import mlp_layers
from vilab.nets.mlp import MLP
from vilab.samplers.hmc import Potential, hmc_trace

__all__ = ["LogQEstimate", "SemiImplicit"]

#: The name the network's layer table had here (tests import it from this module).
_mlp_layers = mlp_layers


class SemiImplicit(NoiseMixture):
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
            evaluation (:meth:`rsample_and_log_prob`, reported KLs and log-likelihoods);
            with ``log_q_stderr``, the K it starts from.
        train_log_q_samples: draws of ε for the log q(z) value of :meth:`training_sample`
            (the bound logged during training).
        log_q_stderr: if given, evaluation sizes K to it: doubles K until the
            root-mean-square standard error of the per-sample log q(z) estimates is at
            most this, in nats (:meth:`log_q_estimate`); None keeps K fixed.
        max_log_q_samples: the largest K the sizing may reach.
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
        log_q_stderr: float | None = None,
        max_log_q_samples: int = 128_000,
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
        self.target_accept = target_accept
        self.train_log_q_samples = train_log_q_samples
        self._init_log_q(log_q_samples, log_q_stderr, max_log_q_samples)
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

    def estimate_notes(self) -> dict[str, float | str]:
        summary = self.log_q_summary()
        notes: dict[str, float | str] = {
            "kl_note": log_q_note(summary, self.log_q_samples),
            "hmc_step_size": float(self.step_size),
            "hmc_accept_rate": float(self.accept_rate),
        }
        if summary["log_q_estimates"]:
            notes["log_q_draws"] = float(summary["log_q_draws"])  # type: ignore[arg-type]
            notes["log_q_stderr"] = float(summary["log_q_stderr"])  # type: ignore[arg-type]
        return notes

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Samples without the costly log q(z) estimate."""
        return self.rsample_with_noise(n, context)[0]

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

    def noise_potential(self, z: Tensor, context: Tensor | None = None) -> Potential:
        """log q(ε | z [, h]) up to a constant, ``−½|ε|² + log N(z; μ(ε [, h]), diag σ²)``,
        as an HMC potential ``ε -> (log π, ∇_ε log π, μ(ε))`` with everything but ε held
        fixed (no graph to the parameters). One network pass each: the forward and a
        hand-written backward to ε through the MLP's layers
        (:func:`~vilab.nets.input_grad.mlp_input_grad`), or autograd for a network of
        other layers."""
        return self._noise_target(z, context)[0]

    def _noise_target(
        self, z: Tensor, context: Tensor | None
    ) -> tuple[Potential, Callable[[Tensor], Tensor]]:
        """:meth:`noise_potential` and the gradient alone (what the leapfrog steps inside a
        trajectory need: no log-density to sum)."""
        z = z.detach()
        ctx = None if context is None else context.detach()
        with torch.no_grad():
            inv_var = self.sigma.detach().pow(-2)
            const = -self.sigma.detach().log().sum() - 0.5 * self.dim * LOG_2PI
            proj = None if ctx is None else self.context_projection(ctx)
        layers = mlp_layers(self.net, self.noise_dim)
        if layers is None:
            auto = self._autograd_potential(z, ctx, proj, inv_var, const)
            return auto, lambda eps: auto(eps)[1]
        return mlp_noise_target(layers, z, proj, inv_var, const)

    def _autograd_potential(
        self, z: Tensor, ctx: Tensor | None, proj: Tensor | None, inv_var: Tensor, const: Tensor
    ) -> Potential:
        """:meth:`noise_potential` by autograd through :meth:`mean` (a network of layers
        :func:`~vilab.nets.input_grad.mlp_layers` does not know)."""
        mean = lambda e: self.mean(e, ctx, proj)  # noqa: E731
        return autograd_noise_potential(mean, self.net, z, inv_var, const)

    def sample_noise_posterior(
        self, z: Tensor, eps0: Tensor, context: Tensor | None, *, return_mean: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """ε' ~ q(ε | z [, h]) by HMC from ε₀: ``(hmc_samples, ..., e)`` (and, with
        ``return_mean``, μ(ε') ``(hmc_samples, ..., D)``, a by-product of the chains).

        All chains move at once (:func:`~vilab.samplers.hmc.hmc_trace`); the shared step
        size is steered toward ``target_accept`` across calls by the mean acceptance
        probability of this call's transitions — on the device, nothing read back."""
        potential, gradient = self._noise_target(z, context)
        with torch.no_grad():
            trace = hmc_trace(
                potential,
                eps0.detach(),
                self.step_size,
                self.hmc_leapfrog,
                self.hmc_burn_in,
                self.hmc_samples,
                jitter=0.2,
                gradient=gradient,
            )
            rate = trace.accept_prob.flatten(1).mean(1).mean()  # mean of per-transition means
            # steer the shared step size toward the target across iterations
            self.step_size.mul_(torch.exp(0.5 * (rate - self.target_accept))).clamp_(1e-4, 10.0)
            self.accept_rate.copy_(rate)
        return (trace.samples, trace.extras) if return_mean else trace.samples

    def entropy_surrogate(self, z: Tensor, eps0: Tensor, context: Tensor | None = None) -> Tensor:
        """A ``(...)`` term whose gradient with respect to every parameter (through the
        reparameterized z) is the UIVI estimate of ∇ log q(z): ŝ(z) · z with
        ŝ = mean over ε' of −(z − μ(ε'))/σ², held fixed. Its value is meaningless.
        μ(ε') comes with the HMC draws (no network pass of its own)."""
        _, mu = self.sample_noise_posterior(z, eps0, context, return_mean=True)
        with torch.no_grad():
            score = (-(z.detach() - mu) / self.sigma.detach() ** 2).mean(0)
        return (score * z).sum(-1)
