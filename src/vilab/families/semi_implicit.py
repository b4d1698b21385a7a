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
(its forward and a hand-written backward to ε, :func:`_mlp_input_grad`), and μ(ε') at the
kept draws comes with the chains: 1 + (5 + 5) × 5 = 51 passes per training step, nothing
read back to the host.

For reporting, log q(z) is estimated by importance sampling over ε with K prior draws,
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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vilab.families.base import Family, TrainingSample
from vilab.families.gaussian import LOG_2PI
from vilab.nets.mlp import MLP
from vilab.samplers.hmc import Potential, hmc_trace


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
        self.target_accept, self.log_q_samples = target_accept, log_q_samples
        self.train_log_q_samples = train_log_q_samples
        if log_q_stderr is not None and not log_q_stderr > 0:
            raise ValueError(f"log_q_stderr must be > 0 (or None), got {log_q_stderr}")
        if max_log_q_samples < log_q_samples:
            raise ValueError(
                f"max_log_q_samples ({max_log_q_samples}) must be ≥ log_q_samples ({log_q_samples})"
            )
        self.log_q_stderr, self.max_log_q_samples = log_q_stderr, max_log_q_samples
        self._record = _LogQRecord()
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

    def _bank_log_prob(self, z: Tensor, mu: Tensor) -> Tensor:
        """log N(z_s; μ_k, diag σ²) for every sample ``z (S, [B,] D)`` and draw
        ``mu (m, [B,] D)``: ``(m, S[, B])``. For a small D one coordinate at a time (a
        sum over a last dimension of 2 is several times slower than adding two planes)."""
        if self.dim > 8:
            return self._conditional_log_prob(z.unsqueeze(0), mu.unsqueeze(1))
        sigma = self.sigma
        total = None
        for d in range(self.dim):
            r = (z[..., d].unsqueeze(0) - mu[..., d].unsqueeze(1)) / sigma[d]
            total = r * r if total is None else total + r * r
        assert total is not None
        return -0.5 * total - sigma.log().sum() - 0.5 * self.dim * LOG_2PI

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
        estimate keeps its expectation. A fixed K (``k``, else ``log_q_samples``); see
        :meth:`log_q_estimate` for K sized to a standard error.
        """
        est = self._log_q(z, context, eps0, k or self.log_q_samples, None, chunk, False)
        return est.lower, est.upper

    @torch.no_grad()
    def log_q_estimate(
        self,
        z: Tensor,
        context: Tensor | None = None,
        eps0: Tensor | None = None,
        *,
        k: int | None = None,
        stderr: float | None = None,
        max_k: int | None = None,
        chunk: int | None = None,
    ) -> LogQEstimate:
        """:meth:`log_prob_bounds` with the Monte Carlo standard error of each lower
        estimate, and K sized to it: with ``stderr`` given, K starts at ``k`` (else
        ``log_q_samples``) and doubles until the root-mean-square of the per-sample
        standard errors is at most ``stderr`` or K reaches ``max_k`` (else
        ``max_log_q_samples``); without it K is fixed.

        The standard error of log((1/K) Σ w_k), w_k = N(z; μ(ε_k), diag σ²), is the delta
        method's √((K Σw² / (Σw)² − 1)/(K − 1)) = sd(w)/(mean(w) √K), from the same
        draws. Its root mean square over the samples bounds both the Monte Carlo error
        that the shared bank of draws adds to a mean over the samples (at most the mean
        of the per-sample errors) and the lower estimate's bias (about −s.e.²/2 per
        sample). Like any such error it is itself an estimate, blind to weights too rare
        to have been drawn. Each doubling reads the error back once (an evaluation-time
        sync, never inside a training step).

        ``chunk``: draws scored at once; by default 50 for a fixed K (the draws of
        :meth:`log_prob_bounds`) and, when sizing, as many as keep a chunk's weights
        under about 2¹⁸ numbers (a chunk that stays in cache).
        """
        k = k or self.log_q_samples
        cap = max(k, max_k or self.max_log_q_samples)
        if chunk is None:
            chunk = 50 if stderr is None else max(16, min(4096, 2**18 // max(1, z[..., 0].numel())))
        return self._log_q(
            z, context, eps0, k, None if stderr is None else (stderr, cap), chunk, True
        )

    def _log_q(
        self,
        z: Tensor,
        context: Tensor | None,
        eps0: Tensor | None,
        k: int,
        sizing: tuple[float, int] | None,
        chunk: int,
        with_stderr: bool,
    ) -> LogQEstimate:
        proj = None if context is None else self.context_projection(context)
        parts, squares = [], []  # per chunk: log Σ w and log Σ w² over its draws
        drawn, want = 0, k
        while True:
            for m in _chunks(want - drawn, chunk):
                bank = torch.randn(
                    m, *z.shape[1:-1], self.noise_dim, dtype=z.dtype, device=z.device
                )
                mu = self.mean(bank, context, proj)  # (m, [B,] D)
                log_w = self._bank_log_prob(z, mu)  # (m, S[, B])
                parts.append(torch.logsumexp(log_w, 0))
                if with_stderr:
                    squares.append(torch.logsumexp(2.0 * log_w, 0))
            drawn = want
            lse = torch.logsumexp(torch.stack(parts), 0)  # (S[, B])
            se = None
            if with_stderr:
                lse2 = torch.logsumexp(torch.stack(squares), 0)
                se = _delta_stderr(lse, lse2, drawn)
            if sizing is None or drawn >= sizing[1]:
                break
            assert se is not None
            if float(_rms(se)) <= sizing[0]:  # one read-back per doubling
                break
            want = min(2 * drawn, sizing[1])
        lower = lse - math.log(drawn)
        upper = None
        if eps0 is not None:
            own = self._conditional_log_prob(z, self.mean(eps0, context, proj))
            upper = torch.logaddexp(lse, own) - math.log(drawn + 1)
        return LogQEstimate(
            lower, upper, lower.new_full(lower.shape, math.nan) if se is None else se, drawn
        )

    def _evaluate_log_q(
        self, z: Tensor, context: Tensor | None, eps0: Tensor | None
    ) -> LogQEstimate:
        """The estimate of evaluation (samples of q): K sized to ``log_q_stderr`` (fixed
        at ``log_q_samples`` without one), recorded for :meth:`log_q_summary`."""
        est = self.log_q_estimate(z.detach(), context, eps0, stderr=self.log_q_stderr)
        self._record.add(est)
        return est

    def log_q_summary(self) -> dict[str, float | int | None]:
        """What the log q(z) estimates of evaluation (:meth:`rsample_and_log_q_bounds`,
        :meth:`rsample_and_log_prob`) since the last :meth:`reset_log_q_summary` came to:
        ``log_q_stderr``, the root mean square of their per-sample standard errors;
        ``log_q_draws`` (and ``log_q_draws_min``), the largest (smallest) K used;
        ``log_q_stderr_target``; ``log_q_estimates``, the samples scored."""
        return self._record.summary(self.log_q_stderr)

    def reset_log_q_summary(self) -> None:
        self._record = _LogQRecord()

    exact_log_q = False

    def rsample_and_log_q_bounds(
        self, n: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Samples with the plain importance-sampled (lower) and the SIVI (upper) estimate
        of log q(z) from ``log_q_samples`` draws of ε, or as many as ``log_q_stderr``
        needs (:meth:`log_q_estimate`)."""
        z, eps0 = self.rsample_with_noise(n, context)
        est = self._evaluate_log_q(z, context, eps0)
        assert est.upper is not None
        return z, est.lower, est.upper

    def estimate_notes(self) -> dict[str, float | str]:
        summary = self.log_q_summary()
        if summary["log_q_estimates"]:
            k_min, k_max = summary["log_q_draws_min"], summary["log_q_draws"]
            draws = f"K={k_max}" if k_min == k_max else f"K={k_min} to {k_max}"
            target = summary["log_q_stderr_target"]
            sized = f" (sized to s.e. ≤ {target:g})" if target is not None else ""
            se = f"; the per-sample s.e. of log q is {summary['log_q_stderr']:.3g} (rms)"
        else:
            draws, sized, se = f"K={self.log_q_samples}", "", ""
        notes: dict[str, float | str] = {
            "kl_note": (
                f"semi-implicit q: log q(z) estimated by importance sampling over ε with "
                f"{draws} prior draws{sized}{se}; kl uses the upper (SIVI) estimate "
                "that adds the generating ε, kl_lower the plain one; the true KL lies "
                "between them in expectation"
            ),
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

    def log_prob_estimate(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """The importance-sampled log q(z) of an arbitrary z, from ``log_q_samples`` prior
        draws of ε shared by all z (the lower estimate of :meth:`log_prob_bounds`); its
        exponential, the mixture (1/K) Σ_k N(z; μ(ε_k), diag σ²), is an unbiased estimate
        of q(z)."""
        return self.log_prob_bounds(z, context)[0]

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Samples and the upper (SIVI) estimate of log q(z) with ``log_q_samples`` draws
        of ε (or as many as ``log_q_stderr`` needs), without gradient: for evaluation,
        where it errs on the conservative side (a KL too high, a log p(x) too low, in
        expectation). Training uses :meth:`entropy_surrogate`."""
        z, eps0 = self.rsample_with_noise(n, context)
        upper = self._evaluate_log_q(z, context, eps0).upper
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

    def noise_potential(self, z: Tensor, context: Tensor | None = None) -> Potential:
        """log q(ε | z [, h]) up to a constant, ``−½|ε|² + log N(z; μ(ε [, h]), diag σ²)``,
        as an HMC potential ``ε -> (log π, ∇_ε log π, μ(ε))`` with everything but ε held
        fixed (no graph to the parameters). One network pass each: the forward and a
        hand-written backward to ε through the MLP's layers (:func:`_mlp_input_grad`),
        or autograd for a network of other layers."""
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
        layers = _mlp_layers(self.net, self.noise_dim)
        if layers is None:
            auto = self._autograd_potential(z, ctx, proj, inv_var, const)
            return auto, lambda eps: auto(eps)[1]

        def potential(eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            with torch.no_grad():
                mu, grad_mu = _mlp_input_grad(layers, eps, proj)
                d = z - mu
                r = d * inv_var  # ∂ log N / ∂μ
                lp = -0.5 * (eps * eps).sum(-1) + (-0.5 * (d * r).sum(-1) + const)
                return lp, grad_mu(r) - eps, mu

        def gradient(eps: Tensor) -> Tensor:
            with torch.no_grad():
                mu, grad_mu = _mlp_input_grad(layers, eps, proj)
                return grad_mu((z - mu) * inv_var) - eps

        return potential, gradient

    def _autograd_potential(
        self,
        z: Tensor,
        ctx: Tensor | None,
        proj: Tensor | None,
        inv_var: Tensor,
        const: Tensor,
    ) -> Potential:
        """:meth:`noise_potential` by autograd through :meth:`mean` (a network of layers
        :func:`_mlp_layers` does not know)."""

        def potential(eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            with torch.enable_grad():
                e = eps.detach().requires_grad_(True)
                with _frozen(self.net):
                    mu = self.mean(e, ctx, proj)
                d = z - mu
                lp = -0.5 * (e * e).sum(-1) + (-0.5 * (d * d * inv_var).sum(-1) + const)
                (grad,) = torch.autograd.grad(lp.sum(), e)
            return lp.detach(), grad.detach(), mu.detach()

        return potential

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


#: Activation module -> its backward ``(g, a, y) -> g ⊙ act'(a)`` from the pre-activation
#: ``a`` and the output ``y``: the aten kernels autograd itself calls (the same numbers, and
#: several times faster on the CPU than a ``torch.where`` over a boolean mask).
_aten = torch.ops.aten
_ACT_GRADS: dict[type[nn.Module], Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda g, a, y: _aten.threshold_backward(g, y, 0),
    nn.Tanh: lambda g, a, y: _aten.tanh_backward(g, y),
    nn.ELU: lambda g, a, y: _aten.elu_backward(g, 1.0, 1, 1, False, a),
    nn.Softplus: lambda g, a, y: _aten.softplus_backward(g, a, 1.0, 20.0),
    nn.GELU: lambda g, a, y: _aten.gelu_backward(g, a, approximate="none"),
}

Layer = tuple[Tensor, Tensor, Callable[[Tensor], Tensor] | None, Callable[..., Tensor] | None]


def _mlp_layers(net: nn.Module, noise_dim: int) -> list[Layer] | None:
    """``(W, b, activation, its gradient)`` per linear layer of an MLP of ``nn.Linear``
    and known activations (the first W cut to its ε columns), detached; None for any
    other network."""
    mods = list(net) if isinstance(net, nn.Sequential) else []
    out: list[Layer] = []
    for m in mods:
        if isinstance(m, nn.Linear):
            out.append((m.weight.detach(), m.bias.detach(), None, None))
        elif out and out[-1][2] is None and _plain_activation(m):
            w, b, _, _ = out[-1]
            out[-1] = (w, b, m, _ACT_GRADS[type(m)])
        else:
            return None
    if not out or out[-1][2] is not None:
        return None  # not an MLP that ends in a linear layer
    w0, b0, act, grad = out[0]
    out[0] = (w0[:, :noise_dim], b0, act, grad)
    return out


def _plain_activation(m: nn.Module) -> bool:
    """An activation :data:`_ACT_GRADS` differentiates, with its default settings."""
    if type(m) not in _ACT_GRADS:
        return False
    if isinstance(m, nn.Softplus):
        return m.beta == 1.0 and m.threshold == 20.0
    if isinstance(m, nn.ELU):
        return m.alpha == 1.0
    if isinstance(m, nn.GELU):
        return m.approximate == "none"
    return True


def _mlp_input_grad(
    layers: list[Layer], x: Tensor, projected: Tensor | None = None
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The MLP's output at ``x`` and the vector-Jacobian product ``g -> gᵀ ∂out/∂x``
    (the backward pass to the input, by hand: the products of autograd without its
    bookkeeping), the same operations as :meth:`SemiImplicit.mean`: ``projected`` is the
    context's share of the first layer, bias included, lined up with x's batch."""
    w0, b0 = layers[0][0], layers[0][1]
    h = F.linear(x, w0, b0) if projected is None else F.linear(x, w0) + projected
    saved = []
    for i, (w, b, act, _) in enumerate(layers):
        if i:
            h = F.linear(h, w, b)
        if act is not None:
            y = act(h)
            saved.append((h, y))
            h = y
    out = h

    def vjp(g: Tensor) -> Tensor:
        for i in range(len(layers) - 1, 0, -1):
            g = g @ layers[i][0]
            a, y = saved[i - 1]
            g = layers[i - 1][3](g, a, y)  # type: ignore[misc]
        return _input_product(g, layers[0][0])

    return out, vjp


def _input_product(g: Tensor, w: Tensor) -> Tensor:
    """``g @ w`` for the first layer's ``w (H, e)``, e small: computed as ``(wᵀ gᵀ)ᵀ``,
    which BLAS does several times faster for a thin output (the result is a transposed
    view)."""
    if g.dim() < 2:
        return g @ w
    flat = g.reshape(-1, g.shape[-1])
    return (w.t() @ flat.t()).t().reshape(*g.shape[:-1], w.shape[-1])


class _frozen:
    """Within the block, the module's parameters do not require gradients."""

    def __init__(self, module: nn.Module) -> None:
        self.params = list(module.parameters())

    def __enter__(self) -> None:
        self.requires = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p, r in zip(self.params, self.requires):
            p.requires_grad_(r)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


@dataclass(frozen=True)
class LogQEstimate:
    """:meth:`SemiImplicit.log_q_estimate`: the ``lower`` (plain importance-sampled) and
    ``upper`` (SIVI, None without the generating ε) estimates of log q(z) ``(S[, B])``,
    the ``stderr`` of each lower estimate (NaN where not computed), and the number K of
    prior draws of ε used (``draws``)."""

    lower: Tensor
    upper: Tensor | None
    stderr: Tensor
    draws: int


def _delta_stderr(log_sum: Tensor, log_sum_sq: Tensor, k: int) -> Tensor:
    """The delta-method standard error of log((1/K) Σ w) from log Σ w and log Σ w²."""
    if k < 2:
        return torch.full_like(log_sum, math.inf)
    ratio = torch.exp(math.log(k) + log_sum_sq - 2.0 * log_sum)  # K Σw² / (Σw)² ≥ 1
    return ((ratio - 1.0).clamp(min=0.0) / (k - 1)).sqrt()


def _rms(se: Tensor) -> Tensor:
    """Root mean square of the finite standard errors (NaN where none is)."""
    sq = se * se
    return torch.nanmean(torch.where(torch.isfinite(sq), sq, torch.full_like(sq, math.nan))).sqrt()


class _LogQRecord:
    """Running totals of the evaluation estimates of log q(z) (on their device until
    :meth:`summary` reads them)."""

    def __init__(self) -> None:
        self.sq_sum: Tensor | None = None
        self.count = 0
        self.draws: list[int] = []

    def add(self, est: LogQEstimate) -> None:
        sq = est.stderr.detach()
        total = (sq * sq).sum()
        self.sq_sum = total if self.sq_sum is None else self.sq_sum + total
        self.count += sq.numel()  # (the number of samples scored)
        self.draws = [min([est.draws, *self.draws]), max([est.draws, *self.draws])]

    def summary(self, target: float | None) -> dict[str, float | int | None]:
        rms = None if self.sq_sum is None else math.sqrt(float(self.sq_sum) / self.count)
        return {
            "log_q_stderr": rms,
            "log_q_draws": self.draws[1] if self.draws else None,
            "log_q_draws_min": self.draws[0] if self.draws else None,
            "log_q_stderr_target": target,
            "log_q_estimates": self.count,
        }
