"""Build what a config describes, through registries: a flow kind, a family kind and a
target kind each map to one builder that takes its typed section
(:class:`~vilab.config.FlowConfig`, :class:`~vilab.config.FamilyConfig`,
:class:`~vilab.config.TargetConfig`). Adding an option or a kind touches its section and
its builder, nothing else.

This module sits above :mod:`vilab.families`, :mod:`vilab.flows` and :mod:`vilab.targets`
and below the trainers: the config describes, this module builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from vilab.config import (
    FAMILY_KINDS,
    FLOW_KINDS,
    FamilyConfig,
    FlowConfig,
    TargetConfig,
    default_stack,
    preconditions,
)
from vilab.config.base import validated
from vilab.core.support import Bounds, describe_support
from vilab.families.base import Family
from vilab.families.gaussian import FullRankGaussian, MeanFieldGaussian, StandardNormal
from vilab.families.semi_implicit import SemiImplicit
from vilab.flows.affine import FixedAffine
from vilab.flows.base import Flow
from vilab.flows.coupling import AffineCoupling
from vilab.flows.flow import FlowFamily, followed_by
from vilab.flows.iaf import IAF, AffineAutoregressive
from vilab.flows.naf import NeuralAutoregressive
from vilab.flows.planar import Planar
from vilab.flows.radial import Radial
from vilab.flows.spline import SplineAutoregressive, SplineCoupling
from vilab.flows.support import support_flow
from vilab.flows.sylvester import Sylvester
from vilab.targets.base import Target
from vilab.targets.resolve import BUILTIN_TARGETS, resolve_target
from vilab.targets.user import with_support

__all__ = [
    "BASES",
    "FAMILIES",
    "FAMILY_KINDS",
    "FLOWS",
    "FLOW_KINDS",
    "TARGETS",
    "build_family",
    "build_flows",
    "family_from_config",
    "stack_for",
    "target_from_config",
]

FlowBuilder = Callable[[FlowConfig, int, "int | None"], list[Flow]]


def _alternating(make: Callable[[FlowConfig, int, int | None, bool], Flow]) -> FlowBuilder:
    """``layers`` modules, every other one with the autoregressive order reversed (IAF,
    spline_autoregressive, naf) or the transformed half swapped (the couplings: the last
    ⌈D/2⌉ coordinates, then the first ⌊D/2⌋)."""
    return lambda cfg, dim, c: [make(cfg, dim, c, k % 2 == 1) for k in range(cfg.layers)]


def _sylvester(q_kind: str) -> FlowBuilder:
    """``layers`` Sylvester layers of one kind of Q in one module."""
    return lambda cfg, dim, c: [
        Sylvester(dim, cfg.layers, q_kind, cfg.num_ortho, cfg.num_householder, c)  # type: ignore[arg-type]
    ]


#: ``flow kind`` -> builder(section, D, context size C or None) -> flow modules. ``hidden``
#: are the MADE's or the coupling conditioner's widths; ``bins`` K and ``tail_bound`` B
#: shape the rational-quadratic splines, ``units`` M the naf's deep sigmoidal transform.
FLOWS: dict[str, FlowBuilder] = {
    "planar": lambda cfg, dim, c: [Planar(dim, cfg.layers, c)],
    "radial": lambda cfg, dim, c: [Radial(dim, cfg.layers, c)],
    **{f"sylvester_{q}": _sylvester(q) for q in ("orthogonal", "householder", "triangular")},
    "iaf": _alternating(lambda cfg, dim, c, odd: IAF(dim, cfg.hidden, c, reverse=odd)),
    "affine_autoregressive": _alternating(
        lambda cfg, dim, c, odd: AffineAutoregressive(dim, cfg.hidden, c, reverse=odd)
    ),
    "affine_coupling": _alternating(
        lambda cfg, dim, c, odd: AffineCoupling(dim, cfg.hidden, c, flip=odd)
    ),
    "spline_coupling": _alternating(
        lambda cfg, dim, c, odd: SplineCoupling(dim, cfg.hidden, c, odd, cfg.bins, cfg.tail_bound)
    ),
    "spline_autoregressive": _alternating(
        lambda cfg, dim, c, odd: SplineAutoregressive(
            dim, cfg.hidden, c, odd, cfg.bins, cfg.tail_bound
        )
    ),
    "naf": _alternating(
        lambda cfg, dim, c, odd: NeuralAutoregressive(dim, cfg.hidden, c, odd, cfg.units)
    ),
}

#: ``base`` of a flow family -> its builder(D, C or None).
BASES: dict[str, Callable[[int, int | None], Family]] = {
    "standard": StandardNormal,
    "mean_field": MeanFieldGaussian,
    "full_rank": FullRankGaussian,
}


def _flow_family(cfg: FamilyConfig, dim: int, c: int | None) -> Family:
    """The flows of ``cfg.stack`` (``kind: stack``; unset: vilab's default for D,
    :func:`~vilab.config.default_stack`) or of ``cfg`` itself on ``cfg.base`` (the flows
    are built first, then the base: the order of the random initialisations)."""
    specs = stack_for(cfg, dim) if cfg.kind == "stack" else [cfg]
    flows = [f for spec in specs for f in FLOWS[spec.kind](spec, dim, c)]
    return FlowFamily(BASES[cfg.base](dim, c), flows)


def stack_for(cfg: FamilyConfig, dim: int) -> list[FlowConfig]:
    """The flows a ``kind: stack`` family chains in dimension ``dim``: ``cfg.stack`` when
    given, else vilab's default for that dimension (:func:`~vilab.config.default_stack`)."""
    return default_stack(dim) if cfg.stack is None else cfg.stack


def _semi_implicit(cfg: FamilyConfig, dim: int, c: int | None) -> Family:
    return SemiImplicit(
        dim,
        cfg.noise_dim,
        cfg.hidden,
        c,
        log_q_samples=cfg.log_q_samples,
        train_log_q_samples=cfg.train_log_q_samples,
        log_q_stderr=cfg.log_q_stderr,
        max_log_q_samples=cfg.max_log_q_samples,
    )


#: ``family kind`` -> builder(section, D, C or None) -> family.
FAMILIES: dict[str, Callable[[FamilyConfig, int, int | None], Family]] = {
    "mean_field": lambda cfg, dim, c: MeanFieldGaussian(dim, c),
    "full_rank": lambda cfg, dim, c: FullRankGaussian(dim, c),
    "uivi": _semi_implicit,
    "stack": _flow_family,
    **{kind: _flow_family for kind in FLOWS},
}


def family_from_config(
    cfg: FamilyConfig, dim: int, context_dim: int | None = None, support: Bounds | None = None
) -> Family:
    """The family a :class:`~vilab.config.FamilyConfig` describes, free (``context_dim``
    None) or amortized from a context of that size.

    With a ``support`` (a target's, in normal form: :func:`vilab.core.support.parse_support`)
    the family is built on R^D and followed by the bijection T onto it
    (:class:`~vilab.flows.support.SupportTransform`). A family that is preconditioned
    (:func:`~vilab.config.preconditions`) ends, before T, in the identity
    :class:`~vilab.flows.affine.FixedAffine` that the fit's pilot sets
    (:mod:`vilab.train.pilot`).

    Raises:
        ValueError: a support or a preconditioner with a family whose log q is an
            estimate (``uivi``): it has no flow to extend.
    """
    family = FAMILIES[cfg.kind](cfg, dim, context_dim)
    onto = support_flow(support)
    tail: list[Flow] = [FixedAffine(dim)] if preconditions(cfg, dim, context_dim) else []
    tail += [] if onto is None else [onto]
    if not tail:
        return family
    if not family.exact_log_q:
        what = "the target's support " + describe_support(onto.bounds) if onto else "a pilot"
        raise ValueError(
            f"family.kind={cfg.kind!r} cannot be mapped onto {what}: choose a flow or "
            "Gaussian family" + ("" if onto else ", or set family.precondition=none")
        )
    return followed_by(family, tail)


def build_flows(
    kind: str, dim: int, context_dim: int | None = None, *, layers: int = 8, **options: Any
) -> list[Flow]:
    """The flow modules of one kind (:data:`FLOWS`), options as keywords of
    :class:`~vilab.config.FlowConfig` (a :class:`~vilab.config.ConfigError` names a bad one)."""
    cfg = validated(FlowConfig, kind=kind, layers=layers, **options)
    return FLOWS[kind](cfg, dim, context_dim)


def build_family(
    kind: str, dim: int, context_dim: int | None = None, *, layers: int = 8, **options: Any
) -> Family:
    """A family by kind (:data:`FAMILIES`), options as keywords of
    :class:`~vilab.config.FamilyConfig` (``base``, ``hidden``, ``stack`` as a list of
    dicts, ``bins``, ``noise_dim``, …)."""
    cfg = validated(FamilyConfig, kind=kind, layers=layers, **options)
    return family_from_config(cfg, dim, context_dim)


def _builtin(cfg: TargetConfig) -> Target:
    return with_support(resolve_target(cfg.name, cfg.dim), cfg.support)


def _python(cfg: TargetConfig, fn: Callable[..., Tensor] | str | None = None) -> Target:
    """A user's log-density: ``module:function`` / ``file.py:function`` or the callable
    ``fn``, described by the section's keys."""
    spec = cfg.name if fn is None else fn
    return resolve_target(
        spec, cfg.dim, cfg.box, cfg.log_z, cfg.context_dim, cfg.context_range, cfg.support
    )


def _pyro(cfg: TargetConfig) -> Target:
    """A Pyro model ``pyro:file.py:model`` / ``pyro:module:model`` (pyro-ppl, an extra)."""
    from vilab.targets.pyro import pyro_target

    if cfg.support not in (None, "real"):
        raise ValueError(
            f"target {cfg.name!r} lives on R^D (Pyro's supports are unconstrained by the "
            f"target itself): drop target.support={cfg.support!r}"
        )
    target = pyro_target(cfg.name)
    if cfg.dim is not None and cfg.dim != target.dim:
        raise ValueError(f"target {cfg.name!r} has dim {target.dim}, got dim={cfg.dim}")
    return target


def _posteriordb(cfg: TargetConfig) -> Target:
    """``posteriordb:NAME`` from ``cfg.posteriordb`` or ``$POSTERIOR_DB_PATH``."""
    from vilab.targets.posteriordb import posteriordb_target

    return posteriordb_target(cfg.name, cfg.posteriordb)


def _stan(cfg: TargetConfig) -> Target:
    """A Stan program ``stan:path/model.stan`` with ``target.data`` (a JSON file or a
    dict), on its unconstrained space (:mod:`vilab.targets.stan`; extra ``vilab[stan]``)."""
    from vilab.targets.stan import from_stan  # lazily: needs httpstan and a compiler

    return from_stan(cfg.name.partition(":")[2], cfg.data)


#: ``target kind`` -> builder(section) -> target: the built-in and suite targets by name,
#: a Python log-density ``module:function`` / ``file.py:function``, a Pyro model
#: ``pyro:file.py:model``, a Stan program ``stan:model.stan`` and a posteriordb posterior
#: ``posteriordb:NAME``.
TARGETS: dict[str, Callable[[TargetConfig], Target]] = {
    "builtin": _builtin,
    "python": _python,
    "pyro": _pyro,
    "stan": _stan,
    "posteriordb": _posteriordb,
}


def target_kind(name: str) -> str:
    """The kind of the target named ``name``: ``builtin``, a registered ``prefix:`` (the
    text before the first colon), else ``python``.

    Raises:
        ValueError: a name that is none of them.
    """
    if name in BUILTIN_TARGETS:
        return "builtin"
    prefix = name.partition(":")[0]
    if ":" in name and prefix in TARGETS and prefix not in ("builtin", "python"):
        return prefix
    if ":" in name:
        return "python"
    raise ValueError(
        f"unknown target {name!r}: use one of {', '.join(BUILTIN_TARGETS)}, or a "
        "log-density 'module:function' / 'path/file.py:function'"
    )


def target_from_config(
    cfg: TargetConfig, given: Target | Callable[..., Tensor] | None = None
) -> Target:
    """The target a :class:`~vilab.config.TargetConfig` describes — or ``given`` (a
    Target, or a callable described by the section's keys) — with its ``support`` stated
    (:func:`vilab.targets.user.with_support`); a user's function is probed inside the
    support at load time."""
    if isinstance(given, Target):
        return with_support(given, cfg.support)
    if given is not None:
        return _python(cfg, given)
    return TARGETS[target_kind(cfg.name)](cfg)
