"""A family that is a Gaussian mixture over a noise (Yin & Zhou 2018; Titsias & Ruiz 2019),

    q(z [| h]) = E_{ε ~ N(0, I_e)} N(z; μ(ε [, h]), diag σ²),

scored by importance sampling over ε (:mod:`vilab.families.log_q`): from K prior draws
the lower estimate log (1/K) Σ_k N(z; μ(ε_k), σ²) (E[lower] ≤ log q(z), by Jensen) and,
with the ε₀ that generated z, the upper (SIVI) estimate log (1/(K+1)) (Σ_k w_k + w₀)
(E[upper] ≥ log q(z)); K fixed or doubled until the per-sample standard error is small
enough (``log_q_stderr``). Shapes: z ``(S[, B], D)`` -> estimates ``(S[, B])``.

:class:`NoiseMixture` is this evaluation side; the semi-implicit family
(:class:`~vilab.families.semi_implicit.SemiImplicit`) adds the network μ and UIVI's
gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vilab.families.base import Family
from vilab.families.log_q import (
    LogQEstimate,
    LogQRecord,
    bank_log_prob,
    gaussian_log_prob,
    importance_sums,
)


class NoiseMixture(Family):
    """The evaluation side of a family q(z [| h]) = E_{ε ~ N(0, I)} N(z; μ(ε [, h]),
    diag σ²): log q(z) by importance sampling over ε, fixed or sized to a standard error,
    and the record of what evaluation's estimates came to.

    A subclass provides ``mean(eps, context, projected)``, ``context_projection(context)``,
    ``rsample_with_noise(n, context)``, ``sigma`` ``(D,)`` and ``noise_dim``, and calls
    :meth:`_init_log_q` in its ``__init__``.
    """

    exact_log_q = False

    def _init_log_q(
        self, log_q_samples: int, log_q_stderr: float | None, max_log_q_samples: int
    ) -> None:
        """K of evaluation (``log_q_samples``), its target s.e. in nats (None: K fixed) and
        cap; the record starts empty."""
        if log_q_stderr is not None and not log_q_stderr > 0:
            raise ValueError(f"log_q_stderr must be > 0 (or None), got {log_q_stderr}")
        if max_log_q_samples < log_q_samples:
            raise ValueError(
                f"max_log_q_samples ({max_log_q_samples}) must be ≥ log_q_samples ({log_q_samples})"
            )
        self.log_q_samples = log_q_samples
        self.log_q_stderr, self.max_log_q_samples = log_q_stderr, max_log_q_samples
        self._record = LogQRecord()

    def _conditional_log_prob(self, z: Tensor, mu: Tensor) -> Tensor:
        """log N(z; μ, diag σ²), ``(...)`` (z and μ broadcast, ``(..., D)``)."""
        return gaussian_log_prob(z, mu, self.sigma)

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

        def log_weights(m: int) -> Tensor:
            bank = torch.randn(m, *z.shape[1:-1], self.noise_dim, dtype=z.dtype, device=z.device)
            return bank_log_prob(z, self.mean(bank, context, proj), self.sigma)  # (m, S[, B])

        lse, se, drawn = importance_sums(log_weights, k, sizing, chunk, with_stderr)
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
        """Start :meth:`log_q_summary` afresh (before the estimate it should cover;
        :func:`vilab.evaluation.fit.kl_bracket` does)."""
        self._record = LogQRecord()

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
        expectation). Training uses the subclass's gradient (UIVI:
        :meth:`~vilab.families.semi_implicit.SemiImplicit.entropy_surrogate`)."""
        z, eps0 = self.rsample_with_noise(n, context)
        upper = self._evaluate_log_q(z, context, eps0).upper
        assert upper is not None
        return z, upper
