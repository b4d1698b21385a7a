"""Estimators: functions of log-weights ``log_w = log p(x, z) − log q(z | x)``, shape (S, B)."""

from vilab.estimators.elbo import elbo, iwae

__all__ = ["elbo", "iwae"]
