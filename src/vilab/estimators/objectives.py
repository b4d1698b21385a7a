"""Training objectives for latent-variable models: a value to log and a surrogate to
differentiate (DESIGN.md §5). Every function takes per-sample terms of shape (S, B) and
returns an :class:`Objective` whose ``value`` is the bound per image ``(B,)``.

* ELBO (Kingma & Welling 2014): E_q[log p(x|z)] − KL(q‖p), with the KL analytic when it
  is given (mean-field q, standard-normal prior) and Monte Carlo otherwise; KL warm-up
  multiplies the KL term by β ∈ [0, 1] (Sønderby et al. 2016); free bits keep each latent
  dimension's KL from being pushed below λ nats (Kingma et al. 2016) — both change only
  the surrogate, never the logged bound.
* IWAE_K (Burda et al. 2016): log (1/K) Σ_k w_k.
* Sticking the landing (Roeder et al. 2017) and DReG (Tucker et al. 2019): the same
  values, lower-variance gradients for the encoder; they need log q and log p(x, z)
  evaluated with stopped parameters, supplied by the caller as ``log_q_stop`` (the
  ``log_q_surrogate`` of :meth:`~vilab.families.base.Family.training_sample` with
  ``stl=True``) and ``log_joint_stop``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vilab.estimators.elbo import iwae


@dataclass(frozen=True)
class Objective:
    """``value``: the bound per image ``(B,)`` (what is logged); ``surrogate``: a scalar
    whose gradient is the estimator's (what is maximized)."""

    value: Tensor
    surrogate: Tensor


def elbo_objective(
    log_lik: Tensor,
    log_prior: Tensor,
    log_q: Tensor,
    kl: Tensor | None = None,
    beta: float = 1.0,
    free_bits: float = 0.0,
    kl_per_dim: Tensor | None = None,
    log_q_stop: Tensor | None = None,
) -> Objective:
    """The ELBO, optionally with KL warm-up, free bits and sticking-the-landing.

    Args:
        log_lik: log p(x | z), ``(S, B)``.
        log_prior: log p(z), ``(S, B)``.
        log_q: log q(z | x), ``(S, B)``.
        kl: analytic KL(q(z|x) ‖ p(z)) per image ``(B,)``, if available.
        beta: weight of the KL term in the surrogate (warm-up).
        free_bits: λ ≥ 0; with ``kl_per_dim`` ``(B, D)`` the surrogate uses
            Σ_d max(λ, mean_batch KL_d) (Kingma et al. 2016, eq. in §C.8).
        kl_per_dim: analytic KL per latent dimension ``(B, D)`` (needed for free bits).
        log_q_stop: log q with stopped variational parameters (STL), ``(S, B)``.
    """
    if kl is not None:
        value = log_lik.mean(0) - kl
    else:
        value = (log_lik + log_prior - log_q).mean(0)
    if log_q_stop is not None:
        kl_term = (log_q_stop - log_prior).mean(0)
    elif kl is not None:
        kl_term = kl
    else:
        kl_term = (log_q - log_prior).mean(0)
    if free_bits > 0.0:
        if kl_per_dim is None:
            raise ValueError("free bits need the analytic KL per latent dimension")
        kl_fb = torch.clamp(kl_per_dim.mean(0), min=free_bits).sum()
        surrogate = log_lik.mean() - beta * kl_fb
    else:
        surrogate = (log_lik.mean(0) - beta * kl_term).mean()
    return Objective(value.detach(), surrogate)


def iwae_objective(log_w: Tensor) -> Objective:
    """IWAE_K with K = S: value and surrogate log (1/K) Σ_k w_k, ``(S, B) -> (B,)``."""
    value = iwae(log_w)
    return Objective(value.detach(), value.mean())


def dreg_objective(
    log_w: Tensor, log_joint_stop: Tensor, log_q_stop: Tensor, log_joint_z_stop: Tensor
) -> Objective:
    """IWAE_K with the doubly-reparameterized gradient (Tucker, Lawson, Gu & Maddison 2019).

        ∇_θ: Σ_k w̃_k ∇_θ log p_θ(x, z_k)                       (decoder, z fixed)
        ∇_φ: Σ_k w̃_k² ∂/∂z [log p(x, z_k) − log q(z_k | x)] ∂z_k/∂φ   (encoder)

    with w̃_k = w_k / Σ_j w_j.

    Args:
        log_w: log p(x, z) − log q(z | x) with full gradients, ``(S, B)`` (for the value).
        log_joint_stop: log p(x, z) with the decoder's parameters stopped, z live.
        log_q_stop: log q(z | x) with the variational parameters stopped, z live.
        log_joint_z_stop: log p_θ(x, z.detach()): gradients to the decoder only.
    """
    w_tilde = torch.softmax(log_w.detach(), 0)
    encoder_part = (w_tilde.pow(2) * (log_joint_stop - log_q_stop)).sum(0)
    decoder_part = (w_tilde * log_joint_z_stop).sum(0)
    return Objective(iwae(log_w.detach()), (encoder_part + decoder_part).mean())
