"""Stopping on convergence: anneal, then lower the step size when progress stalls, then stop.

A fit's bound ELBO_t = mean_s[log p̃(z_s) − log q(z_s)] is a Monte Carlo estimate whose
noise does not shrink as the fit converges, so "the ELBO stopped changing" has to be judged
against that noise. The rule (in the spirit of Stan ADVI's relative tolerance on the ELBO,
Kucukelbir et al. 2017, §3.4, and of the RAABBVI termination rule of Welandawe et al. 2022,
which lowers the step size when the iterates are stationary and stops when doing so no
longer pays) reads the bound of every step once the β-annealing has ended (of every
logged step for a family whose log q is a costly estimate), summed where it is computed and
read back once per window:

1. Windows of ``window`` steps: the mean m_k of the bounds in window k and its standard
   error s_k = sd_k / √n_k (the steps' Monte Carlo noise, independent between steps).
2. Progress over the last four windows, judged once four windows exist and the last two
   ran at the current learning rate:

       Δ = ½ (m_k + m_{k−1}) − ½ (m_{k−2} + m_{k−3}),   se_Δ = ½ √(s_k² + … + s_{k−3}²);

   the fit *stalls* when Δ ≤ max(z · se_Δ, tol): the latest half is not better than the
   half before by more than its noise (z = ``z``) and a tolerance in nats — judged only
   while se_Δ ≤ ``max_se`` nats. A bound noisier than that says nothing about progress
   (gp_pois_regr from q's start: window means of −10⁸ to −10¹⁹, se_Δ ~ 10²⁶, which
   without this bound "converged" at the earliest step, 1,100, with ELBO −6·10¹⁵).
3. On a second stall in a row (one alone is a 2-s.e. event every few dozen windows even
   while the fit improves) the learning rate is multiplied by ``lr_factor`` (a smaller step lowers the
   noise floor of the iterates, so the bound usually rises at once); on a stall after
   ``reductions`` reductions the fit stops, and says why and at which step.

A steady improvement well above its noise is not taken for a stall, and a stall only
lowers the step size, so a fit stops ``(5 + 3 × reductions) × window`` steps after
annealing at the least; ``steps`` is its cap. The state (window sums, means,
reductions) is part of the checkpoint, so a resumed fit decides exactly as an
uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class _StopSettings(Protocol):
    window: int
    z: float
    tol: float
    max_se: float
    lr_factor: float
    reductions: int


@dataclass
class Window:
    """Summary of one window: first and last step, mean of its logged bounds, its s.e."""

    first: int
    last: int
    mean: float
    se: float


@dataclass
class Convergence:
    """The stopping rule's state (see the module docstring); ``observe`` feeds it.

    Attributes:
        lr_scale: the multiplier of the learning rate the rule has chosen so far.
        reductions_done: how many times it lowered the learning rate.
        reason: why the fit should stop (None while it should go on).
    """

    settings: _StopSettings
    lr_scale: float = 1.0
    reductions_done: int = 0
    reason: str | None = None
    stopped_at: int | None = None
    windows: list[Window] = field(default_factory=list)
    since_change: int = 0
    stalls: int = 0

    def observe(self, step: int, n: int, total: float, total_sq: float) -> None:
        """The window that ends at ``step``: ``n`` bounds (at β = 1), their sum and their
        sum of squares (accumulated where the bounds are: one read-back per window)."""
        if n < 2:
            return
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0) * n / (n - 1)
        first = step - self.settings.window + 1
        self.windows.append(Window(first, step, mean, math.sqrt(var / n)))
        del self.windows[:-4]  # (only the last four are read)
        self.since_change += 1
        self._decide(step)

    def _decide(self, step: int) -> None:
        if len(self.windows) < 4 or self.since_change < 2:
            return
        s = self.settings
        w = self.windows[-4:]
        delta = 0.5 * (w[3].mean + w[2].mean) - 0.5 * (w[1].mean + w[0].mean)
        se = 0.5 * math.sqrt(sum(x.se**2 for x in w))
        if delta > max(s.z * se, s.tol) or not se <= s.max_se:  # (NaN se: not judged)
            self.stalls = 0
            return
        self.stalls += 1
        if self.stalls < 2:  # two in a row: one is a 2-s.e. event every ~40 windows
            return
        self.stalls = 0
        if self.reductions_done < s.reductions:
            self.reductions_done += 1
            self.lr_scale *= s.lr_factor
            self.since_change = 0
            return
        self.stopped_at = step
        self.reason = (
            f"converged at step {step}: the mean bound of steps {w[2].first}–{w[3].last} "
            f"({0.5 * (w[3].mean + w[2].mean):.4f}) is {delta:+.4f} nats from the "
            f"{w[1].last - w[0].first + 1} steps before, within max({s.z:g} s.e. = "
            f"{s.z * se:.4f}, tol = {s.tol:g}), after {self.reductions_done} learning-rate "
            f"reduction(s) ×{s.lr_factor:g}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr_scale": self.lr_scale,
            "reductions_done": self.reductions_done,
            "reason": self.reason,
            "stopped_at": self.stopped_at,
            "windows": [asdict(w) for w in self.windows],
            "since_change": self.since_change,
            "stalls": self.stalls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr_scale = float(state["lr_scale"])
        self.reductions_done = int(state["reductions_done"])
        self.reason, self.stopped_at = state["reason"], state["stopped_at"]
        self.windows = [Window(**w) for w in state["windows"]]
        self.since_change = int(state["since_change"])
        self.stalls = int(state["stalls"])
