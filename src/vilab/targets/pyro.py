"""A Pyro model as a target: its joint log-density on the unconstrained space, batched.

Tracing the model once finds its latent sites (sample sites that are not observed). Each
site x_i with support S_i is reached from R^{k_i} by ``T_i = biject_to(S_i)`` and the
target is the density of the unconstrained u = (u_1, …, u_L) ∈ R^D, D = Σ k_i,

    log p̃(u) = Σ_sites log p(x_s | parents) + Σ_i log |det J_{T_i}(u_i)|,   x_i = T_i(u_i),

the sum over every sample site (latent and observed, with Pyro's scale and mask), as
Pyro's own ``potential_fn`` (``pyro.infer.mcmc.util.initialize_model``) writes it.

**All draws at once.** ``log_prob`` evaluates N draws in one run of the model under an
outer plate ``_vilab_particles`` of size N at ``dim = −(K+1)``, K the model's plate
nesting: each site is conditioned on its N values shaped ``(N, 1…1, *site_shape)``, and
each site's log-prob is summed over every dimension but the particle one. A model that
mixes the particle dimension (a ``.sum()`` over a batch, an undeclared plate) would give
a silently wrong density this way, so the result is checked at load time against one run
per draw on a few random points (values and gradients), and a mismatch names the sites.

**On any device.** Draws on a GPU run the model there: every tensor among its arguments
is moved to the draws' device once (:meth:`PyroTarget.on`), the latent sites are traced
again there (their bijections hold the supports' tensors), and tensors the model makes
itself default to that device (the ``torch.device`` context). Data bound inside the
model's file cannot be moved: that is a one-line error saying to pass them as arguments.

Discrete latent sites are refused by name (a target here is a density on R^D). Supports
are read from the first trace, as Pyro's ``potential_fn`` does: a support that depends on
another latent value is not followed.

Reference: Bingham et al. 2019, "Pyro: deep universal probabilistic programming", JMLR 20.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Transform, biject_to

from vilab.core.device import move_tensors
from vilab.core.extras import require
from vilab.targets.base import Target

#: The name of the outer plate that carries the draws.
PARTICLES = "_vilab_particles"


@dataclass(frozen=True)
class LatentSite:
    """One latent site: its name, constrained shape per draw (batch + event), the
    bijection from R^k onto its support, and k (its unconstrained size)."""

    name: str
    shape: torch.Size
    transform: Transform
    unconstrained_shape: torch.Size
    event_rank: int

    @property
    def size(self) -> int:
        """k, the site's coordinates in z."""
        return math.prod(self.unconstrained_shape)

    @property
    def constrained_size(self) -> int:
        """The site's entries in :meth:`PyroTarget.constrain`'s output."""
        return math.prod(self.shape)


class PyroTargetError(ValueError):
    """A Pyro model that cannot be a target (discrete latents, mixed particle dims)."""


def _pyro() -> tuple[Any, Any]:
    pyro = require("pyro", "pyro", "a Pyro model target", "pyro-ppl")
    return pyro, require("pyro.poutine", "pyro", "a Pyro model target", "pyro-ppl")


def _latent_sites(trace: Any) -> tuple[list[LatentSite], int]:
    """The latent sites of one trace and K, the model's plate nesting (the deepest plate
    dim or distribution batch rank of any sample site)."""
    sites, nesting = [], 0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        fn = site["fn"]
        frames = [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
        nesting = max([nesting, len(fn.batch_shape), *frames])
        if site["is_observed"]:
            continue
        if getattr(fn, "has_enumerate_support", False) or fn.support.is_discrete:
            raise PyroTargetError(
                f"latent site {name!r} is discrete ({type(fn).__name__}, support "
                f"{fn.support}): a target is a density on R^D; marginalize it out "
                "(enumerate it in the model) or observe it"
            )
        t = biject_to(fn.support)
        shape = site["value"].shape
        ushape = torch.Size(t.inverse_shape(shape))
        sites.append(LatentSite(name, shape, t, ushape, len(fn.event_shape)))
    if not sites:
        raise PyroTargetError("the Pyro model has no latent (non-observed) sample site")
    return sites, nesting


def _site_names(site: LatentSite) -> list[str]:
    """Stan-style names of a site's constrained entries, row-major: ``sigma``;
    ``theta[1]`` … ``theta[8]``; ``L[1,1]``, ``L[1,2]`` …"""
    if len(site.shape) == 0:
        return [site.name]
    idx = torch.cartesian_prod(*(torch.arange(1, n + 1) for n in site.shape))
    idx = idx.reshape(-1, len(site.shape)).tolist()
    return [f"{site.name}[{','.join(map(str, row))}]" for row in idx]


class PyroTarget(Target):
    """The joint log-density of a Pyro model on R^D (see the module's docstring).

    Args:
        model: a Pyro model; called as ``model(*args, **kwargs)``.
        args, kwargs: its arguments (the data).
        name: the target's name.
        check: compare the batched density with one run per draw at load time.
        seed: the seed of the first trace and of the check's points (the global RNG is
            left as it was).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        check: bool = True,
        seed: int = 0,
    ) -> None:
        self.model, self.args, self.kwargs = model, tuple(args), dict(kwargs or {})
        self.name = name or getattr(model, "__name__", "pyro_model")
        self.seed = seed
        trace = self._trace(self.args, self.kwargs, None)
        self.sites, self.nesting = _latent_sites(trace)
        self.dim = sum(s.size for s in self.sites)
        self._init = torch.cat(
            [s.transform.inv(trace.nodes[s.name]["value"]).reshape(-1) for s in self.sites]
        ).detach()
        #: the arguments and latent sites per device other than the first trace's
        self._moved: dict[torch.device, tuple[tuple[Any, ...], dict[str, Any], list[LatentSite]]]
        self._moved = {self._init.device: (self.args, self.kwargs, self.sites)}
        if check:
            check_vectorized(self, seed)

    def _trace(self, args: tuple[Any, ...], kwargs: dict[str, Any], device: Any) -> Any:
        """One prior run of the model (seeded, the global RNG left as it was), under
        ``torch.device(device)`` where one is given; subsample sites pruned."""
        _, poutine = _pyro()
        cuda = [device] if device is not None and device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), _default_device(device):
            torch.manual_seed(self.seed)
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        return poutine.util.prune_subsample_sites(trace)

    def on(self, device: torch.device) -> tuple[tuple[Any, ...], dict[str, Any], list[LatentSite]]:
        """The model's arguments (every tensor in them moved to ``device``) and its latent
        sites traced there (their bijections hold the supports' tensors on ``device``):
        made once per device, so N draws on a GPU run the model on the GPU."""
        if device not in self._moved:
            args, kwargs = move_tensors(self.args, device), move_tensors(self.kwargs, device)
            sites, _ = _latent_sites(self._trace(args, kwargs, device))
            self._moved[device] = (args, kwargs, sites)
        return self._moved[device]

    def _call(self) -> Any:
        return self.model(*self.args, **self.kwargs)

    def param_names(self) -> tuple[str, ...]:
        return tuple(n for s in self.sites for n in _site_names(s))

    def split(self, z: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """``z (N, D)`` -> site name -> ``(x (N, *shape), log|det J| (N,))``."""
        out, start, n = {}, 0, z.shape[0]
        for s in self.on(z.device)[2]:
            u = z[:, start : start + s.size].reshape(n, *s.unconstrained_shape)
            x = s.transform(u)
            ladj = s.transform.log_abs_det_jacobian(u, x).reshape(n, -1).sum(-1)
            out[s.name] = (x, ladj)
            start += s.size
        return out

    def constrain(self, z: Tensor) -> Tensor:
        z = z.reshape(-1, self.dim)
        xs = self.split(z)
        return torch.cat([xs[s.name][0].reshape(z.shape[0], -1) for s in self.sites], -1)

    def site_log_probs(self, z: Tensor) -> dict[str, Tensor]:
        """Every sample site's log-prob ``(N,)`` at ``z (N, D)``, in one run of the model
        under the particle plate, and ``"_jacobian"``: Σ_i log |det J_{T_i}|."""
        pyro, poutine = _pyro()
        n, k = z.shape[0], self.nesting
        args, kwargs, sites = self.on(z.device)
        xs = self.split(z)
        data = {}
        for s in sites:  # (N, 1…1, *batch, *event) with K dims between N and event
            ones = (1,) * max(k - (len(s.shape) - s.event_rank), 0)
            data[s.name] = xs[s.name][0].reshape(n, *ones, *s.shape)

        def particles() -> Any:
            with pyro.plate(PARTICLES, n, dim=-(k + 1)):
                return self.model(*args, **kwargs)

        with _default_device(z.device), _names_device(self.name, z.device):
            trace = poutine.trace(poutine.condition(particles, data=data)).get_trace()
            trace = poutine.util.prune_subsample_sites(trace)
            trace.compute_log_prob()
        out = {}
        for name, site in trace.nodes.items():
            if _scored(site) and name != PARTICLES:
                out[name] = _per_particle(site["log_prob"], n, k, name)
        out["_jacobian"] = sum(xs[s.name][1] for s in sites)
        return out

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``z (..., D)`` -> ``log p̃(z) (...)``, all draws in one run of the model."""
        batch = z.shape[:-1]
        flat = z.reshape(-1, self.dim)
        if flat.shape[0] == 0:
            return z.new_zeros(batch)
        # in z's dtype even where the model's data are wider (float64 data, float32 z)
        return sum(self.site_log_probs(flat).values()).reshape(batch).to(z.dtype)

    def site_log_probs_loop(self, z: Tensor) -> dict[str, Tensor]:
        """The same as :meth:`site_log_probs`, one run of the model per draw (the check)."""
        _, poutine = _pyro()
        rows: dict[str, list[Tensor]] = {}
        for i in range(z.shape[0]):
            xs = self.split(z[i : i + 1])
            data = {s.name: xs[s.name][0][0] for s in self.sites}
            trace = poutine.trace(poutine.condition(self._call, data=data)).get_trace()
            trace = poutine.util.prune_subsample_sites(trace)
            trace.compute_log_prob()
            for name, site in trace.nodes.items():
                if _scored(site):
                    rows.setdefault(name, []).append(site["log_prob"].sum())
            rows.setdefault("_jacobian", []).append(sum(xs[s.name][1][0] for s in self.sites))
        return {name: torch.stack(v) for name, v in rows.items()}


def _default_device(device: torch.device | None) -> Any:
    """Tensors the model makes itself (``torch.zeros(n)``) on ``device``: the
    ``torch.device`` context (PyTorch's default-device mechanism); none for the CPU."""
    return contextlib.nullcontext() if device is None or device.type == "cpu" else device


@contextlib.contextmanager
def _names_device(name: str, device: torch.device) -> Iterator[None]:
    """A model that holds its own tensors on another device (data bound in its file)
    fails with torch's device mismatch: say which model and what to do instead."""
    try:
        yield
    except RuntimeError as err:
        if "device" not in str(err) or device.type == "cpu":
            raise
        raise PyroTargetError(
            f"Pyro model {name!r} on {device}: {err}. Its data must reach it as arguments "
            "(vilab.targets.from_pyro(model, *data) moves every tensor argument to the "
            "draws' device), or be created on the device the draws are on"
        ) from err


def _scored(site: dict[str, Any]) -> bool:
    """A sample site that counts in log p̃ (not a ``pyro.deterministic`` record)."""
    return site["type"] == "sample" and not site["infer"].get("_deterministic")


def _per_particle(log_prob: Tensor, n: int, nesting: int, site: str) -> Tensor:
    """A site's log-prob ``(N, 1…, *batch)`` (K+1 dims) summed to ``(N,)``; any other
    shape means the site's batch dims do not line up with the model's plates."""
    if log_prob.dim() != nesting + 1 or log_prob.shape[0] not in (1, n):
        raise PyroTargetError(
            f"site {site!r}: log-prob of shape {tuple(log_prob.shape)} under {n} draws, "
            f"expected ({n}, …) with {nesting + 1} dims: declare its batch dims with "
            "pyro.plate (or .to_event) instead of summing or broadcasting over them"
        )
    return log_prob.reshape(log_prob.shape[0], -1).sum(-1).expand(n)


def _close(a: Tensor, b: Tensor, rtol: float) -> bool:
    return bool(((a - b).abs() <= rtol * (1 + b.abs())).all())


def check_vectorized(
    target: PyroTarget, seed: int = 0, points: int = 3, rtol: float = 1e-6
) -> None:
    """The load-time check: at P points z_p = u₀ + ε_p (u₀ the first trace's
    unconstrained values, ε_p ~ N(0, 0.25 I)) in float64, every site's batched log-prob
    and the gradient of Σ_p log p̃(z_p) must equal one run per draw to ``rtol`` (relative
    to 1 + |value|). Raise :class:`PyroTargetError` naming the sites whose batched
    log-prob differs from the per-draw one (values or gradients)."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(points, target.dim, generator=gen, dtype=torch.float64)
    z = (target._init.double() + 0.5 * eps.to(target._init.device)).requires_grad_(True)
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


def from_pyro(model: Callable[..., Any], *args: Any, **kwargs: Any) -> PyroTarget:
    """``model(*args, **kwargs)`` as a :class:`PyroTarget` on R^D (checked at load)."""
    return PyroTarget(model, args, kwargs)


def pyro_target(spec: str) -> PyroTarget:
    """``pyro:model.py:model`` or ``pyro:package.module:model`` -> the model (called with
    no arguments: its data are bound in the file) as a :class:`PyroTarget`."""
    from vilab.targets.resolve import load_callable

    where = spec.removeprefix("pyro:")
    if ":" not in where:
        raise ValueError(
            f"target {spec!r}: a Pyro model is named 'pyro:file.py:function' or "
            "'pyro:module:function'"
        )
    return PyroTarget(load_callable(where), name=where.rpartition(":")[2])
