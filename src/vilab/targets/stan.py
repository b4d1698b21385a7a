"""Stan programs as vilab targets: ``vilab fit --target stan:model.stan --data data.json``
or :func:`from_stan`.

A Stan program with data is a log-density on its unconstrained space R^D (DESIGN.md,
separation 10: "a target is a log-density on R^D and a way back"):

    log p̃(z) = log p(T(z), data) + log |det J_T(z)|,   z ∈ R^D,

T being Stan's constraining transform (log for ``<lower=0>``, logit for bounded, stick
breaking for simplexes, ...; Stan Reference Manual, "Constraint transforms"), constants
dropped (``propto``). So ``support`` is None: q lives on R^D and :meth:`StanTarget.constrain`
is the way back to the model's named quantities (Stan's ``write_array``).

The density and its gradient come from Stan's C++ (``stan_shim.cpp``, compiled once per
program by :mod:`vilab.targets.stan_build`), a batch at a time in float64 on the CPU;
:class:`_StanLogProb` is the autograd bridge. Where Stan raises a domain error (an
extreme z) the point's log density is −inf.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vilab.targets.base import Target
from vilab.targets.stan_build import StanError, build
from vilab.targets.stan_model import StanModel

__all__ = ["StanError", "StanTarget", "from_stan"]


class _StanLogProb(torch.autograd.Function):
    """``z (N, D)`` float64 CPU -> lp ``(N,)``; backward: ``grad_output[:, None] · ∇lp``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: Tensor, model: StanModel) -> Tensor:  # type: ignore[override]
        lp, grad = model.log_density_gradient(z.detach().numpy())
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.from_numpy(lp)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad_out.unsqueeze(-1) * grad, None


class StanTarget(Target):
    """A compiled Stan program bound to its data, as a :class:`~vilab.targets.base.Target`.

    ``dim`` is the number of unconstrained parameters D; ``param_names()`` are Stan's
    names of the parameters and transformed parameters (``mu``, ``theta[1]``; generated
    quantities are left out: they are draws, not functions of z); ``constrain(z)`` gives
    them ``(N, P)`` in float64.
    """

    support = None
    rejects = True

    def __init__(self, model: StanModel, name: str = "stan") -> None:
        self.model, self.name, self.dim = model, name, model.dim

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``z (..., D)`` of any float dtype and device -> ``(...)`` in z's dtype/device."""
        if z.shape[-1] != self.dim:
            raise ValueError(
                f"target {self.name!r} takes z (..., {self.dim}), got {tuple(z.shape)}"
            )
        flat = z.reshape(-1, self.dim).to(device="cpu", dtype=torch.float64)
        lp = _StanLogProb.apply(flat.contiguous(), self.model)
        return lp.reshape(z.shape[:-1]).to(device=z.device, dtype=z.dtype)

    def param_names(self) -> tuple[str, ...]:
        return self.model.names

    def constrain(self, z: Tensor) -> Tensor:
        flat = z.detach().reshape(-1, self.dim).to(device="cpu", dtype=torch.float64)
        return torch.from_numpy(self.model.constrain(flat.numpy()))

    def unconstrain(self, x: Tensor) -> Tensor:
        """Constrained parameters ``(N, n_params)`` (parameters only, in
        :meth:`param_names`' order) -> ``z (N, D)`` float64."""
        flat = torch.as_tensor(x, dtype=torch.float64).reshape(-1, self.model.n_params)
        return torch.from_numpy(self.model.unconstrain(np.asarray(flat)))


def _program(path_or_code: str | Path) -> tuple[str, str]:
    """``(program text, name)``: a path to a ``.stan`` file (name: its stem) or code."""
    text = str(path_or_code)
    if isinstance(path_or_code, Path) or (text.endswith(".stan") and "\n" not in text):
        path = Path(text)
        if not path.exists():
            raise ValueError(f"Stan program {text!r} does not exist")
        return path.read_text(), path.stem
    return text, "stan"


def from_stan(
    path_or_code: str | Path,
    data: object = None,
    seed: int = 0,
    threads: int = 2,
    quiet: bool = False,
    name: str | None = None,
) -> StanTarget:
    """A Stan program as a target: compiled once (cached), bound to ``data``.

    Args:
        path_or_code: a ``.stan`` file or the program's text.
        data: a dict (NumPy arrays allowed), a path to a JSON file, a JSON text, or None.
        seed: Stan's seed for the model's constructor (transformed data may draw).
        threads: C++ threads that share a batch.
        quiet: no compiling message on stderr.
        name: the target's name (default: the file's stem, or ``"stan"`` for a text).

    Raises:
        StanError: stanc's error with the line, or Stan's message for bad data.
    """
    code, stem = _program(path_or_code)
    lib = build(code, stem, quiet=quiet)
    return StanTarget(StanModel(lib, data, seed=seed, threads=threads), name=name or stem)
