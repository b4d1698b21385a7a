"""The load-time check of a :class:`~vilab.targets.pyro.PyroTarget`: the batched density
(one run of the model under the particle plate) against one run per draw.

At P random points z_p = u₀ + ε_p (u₀ the first trace's unconstrained values, ε_p ~
N(0, 0.25 I)) in float64, every site's log-prob and the gradient of Σ_p log p̃(z_p) must
agree to ``rtol`` (relative to 1 + |value|). A model that sums or broadcasts over the
particle dimension fails here, and the error names its sites.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from vilab.targets.pyro import PyroTarget


def _close(a: Tensor, b: Tensor, rtol: float) -> bool:
    return bool(((a - b).abs() <= rtol * (1 + b.abs())).all())


def check_vectorized(
    target: PyroTarget, seed: int = 0, points: int = 3, rtol: float = 1e-6
) -> None:
    """Raise :class:`~vilab.targets.pyro.PyroTargetError` naming the sites whose batched
    log-prob differs from the per-draw one (values or gradients)."""
    from vilab.targets.pyro import PyroTargetError

    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(points, target.dim, generator=gen, dtype=torch.float64)
    z = (target._init.double() + 0.5 * eps).requires_grad_(True)
    try:
        vec = target.site_log_probs(z)
    except PyroTargetError:
        raise
    except (RuntimeError, ValueError) as err:
        raise PyroTargetError(
            f"Pyro model {target.name!r} fails under {points} draws at once (an outer "
            f"plate at dim −{target.nesting + 1}): {err}; declare batch dims with pyro.plate"
        ) from err
    loop = target.site_log_probs_loop(z)
    bad = [name for name in loop if name not in vec or not _close(vec[name], loop[name], rtol)]
    if not bad:
        g_vec = torch.autograd.grad(sum(vec.values()).sum(), z, retain_graph=True)[0]
        g_loop = torch.autograd.grad(sum(loop.values()).sum(), z)[0]
        bad = [] if _close(g_vec, g_loop, rtol) else ["(gradient)"]
    if bad:
        raise PyroTargetError(
            f"Pyro model {target.name!r}: the log-prob of site(s) {', '.join(map(repr, bad))} "
            f"computed for {points} draws at once differs from one draw at a time: the model "
            "mixes draws (a .sum() or broadcast over a batch dim that no pyro.plate declares); "
            "declare the dim with pyro.plate, or use .to_event for event dims"
        )
