"""The peers of ``benchmarks/posteriordb.py``: zuko's flows and Pyro's autoguides, fitted to
the same log-density vilab sees (a target's ``log_prob`` on the unconstrained space,
:class:`vilab.targets.base.Target`), by the reverse-KL ELBO for a time budget read by a
clock of the caller's (``time.perf_counter``, wall-clock, unless told otherwise;
``time.process_time`` for a CPU budget on a shared machine).

* zuko (probabilists/zuko 1.6): MAF and NSF, inverted as in zuko's "Train from energy"
  recipe (``Flow(flow.transform.inv, flow.base)``: sampling is the cheap direction), 3
  transforms with 64-64 hidden units, Adam at 1e-3, loss mean(log q(x) − log p̃(x)).
* Pyro (1.9): ``AutoNormal``, ``AutoMultivariateNormal`` and ``AutoIAFNormal`` on a model
  ``z ~`` a flat prior on R^D (a masked Normal), ``pyro.factor(log p̃(z))``, ``Trace_ELBO`` with vectorized
  particles, ClippedAdam at 5e-3, started at z = 0 (``init_to_value``).

Each peer is wrapped as a :class:`PeerQ` with vilab's ``rsample_and_log_prob(n)``, so that
its report card (:func:`vilab.report.report_card`) is vilab's own, on the same draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vilab.targets.base import Target

Clock = Callable[[], float]  # seconds, read twice: the budget spent is the difference

PEERS = ("zuko_maf", "zuko_nsf", "pyro_normal", "pyro_mvn", "pyro_iaf")
ZUKO_LR, PYRO_LR = 1e-3, 5e-3


class PeerQ(nn.Module):
    """A peer's q as the part of vilab's Family contract the report card uses.

    Args:
        draw: ``n`` -> ``(z (n, D), log q(z) (n,))``.
    """

    has_log_prob = True

    def __init__(self, draw: Callable[[int], tuple[Tensor, Tensor]], dim: int) -> None:
        super().__init__()
        self.draw, self.dim, self.context_dim = draw, dim, None

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.draw(n)


def _zuko(kind: str, dim: int) -> Any:
    import zuko

    cls = {"zuko_maf": zuko.flows.MAF, "zuko_nsf": zuko.flows.NSF}[kind]
    flow = cls(features=dim, transforms=3, hidden_features=(64, 64))
    return zuko.flows.Flow(flow.transform.inv, flow.base)  # zuko's "train from energy"


def fit_zuko(
    kind: str, target: Target, seconds: float, samples: int, clock: Clock = time.perf_counter
) -> tuple[PeerQ, int, float]:
    """Train zuko's inverted ``kind`` flow for ``seconds`` by ``clock``; returns (q, steps,
    seconds)."""
    flow = _zuko(kind, target.dim)
    opt = torch.optim.Adam(flow.parameters(), lr=ZUKO_LR)
    steps, t0 = 0, clock()
    while clock() - t0 < seconds:
        x, log_q = flow().rsample_and_log_prob((samples,))
        loss = (log_q - target.log_prob(x)).mean()
        opt.zero_grad()
        loss.backward()
        if all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None):
            opt.step()  # a non-finite step is skipped, as vilab does
        steps += 1
    return (
        PeerQ(lambda n: flow().rsample_and_log_prob((n,)), target.dim),
        steps,
        clock() - t0,
    )


def _pyro_guide(kind: str, model: Callable[[], None], dim: int) -> Any:
    from pyro.infer import autoguide
    from pyro.infer.autoguide.initialization import init_to_value

    cls = {
        "pyro_normal": autoguide.AutoNormal,
        "pyro_mvn": autoguide.AutoMultivariateNormal,
        "pyro_iaf": autoguide.AutoIAFNormal,
    }[kind]
    start = init_to_value(values={"z": torch.zeros(dim)})
    return cls(model, init_loc_fn=start)


def fit_pyro(
    kind: str, target: Target, seconds: float, samples: int, clock: Clock = time.perf_counter
) -> tuple[PeerQ, int, float]:
    """Train Pyro's ``kind`` autoguide for ``seconds`` by ``clock``; returns (q, steps,
    seconds)."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import ClippedAdam

    pyro.clear_param_store()

    def model() -> None:
        # a flat prior on R^D: a masked Normal scores 0 (like ImproperUniform) but can be
        # sampled, which AutoIAFNormal's set-up does
        flat = dist.Normal(torch.zeros(target.dim), 1.0).to_event(1).mask(False)
        z = pyro.sample("z", flat)
        pyro.factor("log_p", target.log_prob(z))

    guide = _pyro_guide(kind, model, target.dim)
    elbo = Trace_ELBO(num_particles=samples, vectorize_particles=True)
    svi = SVI(model, guide, ClippedAdam({"lr": PYRO_LR}), elbo)
    steps, t0 = 0, clock()
    while clock() - t0 < seconds:
        svi.step()
        steps += 1
    return PeerQ(lambda n: _pyro_draws(guide, n), target.dim), steps, clock() - t0


def _pyro_draws(guide: Any, n: int) -> tuple[Tensor, Tensor]:
    """``n`` draws of a Pyro guide ``(n, D)`` and log q ``(n,)``: one trace under a plate,
    log q the sum of its sample sites' log-densities (a Delta site carries the log-Jacobian
    of an autoguide's unpacking)."""
    import pyro
    from pyro import poutine

    with pyro.plate("draws", n, dim=-1):
        trace = poutine.trace(guide).get_trace()
    trace.compute_log_prob()  # per draw, (n,)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
    log_q = sum(s["log_prob"].expand(n) for s in sites)
    return trace.nodes["z"]["value"].reshape(n, -1), log_q


def fit_peer(
    kind: str, target: Target, seconds: float, samples: int, clock: Clock = time.perf_counter
) -> tuple[PeerQ, int, float]:
    """Train the peer ``kind`` (one of :data:`PEERS`) on ``target`` for ``seconds`` by
    ``clock``."""
    if kind.startswith("zuko_"):
        return fit_zuko(kind, target, seconds, samples, clock)
    return fit_pyro(kind, target, seconds, samples, clock)
