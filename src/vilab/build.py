"""Build what a config describes: a family from a short spec (one function, every family,
free or amortized), a family or a target from their config sections.

This module sits above :mod:`vilab.families`, :mod:`vilab.flows` and :mod:`vilab.targets`
and below the trainers: the config describes, this module builds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from vilab.config import FAMILY_KINDS, FLOW_KINDS, FamilyConfig, TargetConfig
from vilab.families.base import Family
from vilab.families.gaussian import FullRankGaussian, MeanFieldGaussian, StandardNormal
from vilab.families.semi_implicit import SemiImplicit
from vilab.flows.base import Flow
from vilab.flows.coupling import AffineCoupling
from vilab.flows.flow import FlowFamily
from vilab.flows.iaf import IAF
from vilab.flows.naf import NeuralAutoregressive
from vilab.flows.planar import Planar
from vilab.flows.radial import Radial
from vilab.flows.spline import SplineAutoregressive, SplineCoupling
from vilab.flows.support import describe_support, support_flow
from vilab.flows.sylvester import Sylvester
from vilab.targets.base import Target, with_support
from vilab.targets.resolve import resolve_target

__all__ = [
    "FAMILY_KINDS",
    "FLOW_KINDS",
    "build_family",
    "build_flows",
    "family_from_config",
    "target_from_config",
]

BaseKind = Literal["standard", "mean_field", "full_rank"]


def build_base(kind: BaseKind, dim: int, context_dim: int | None) -> Family:
    if kind == "standard":
        return StandardNormal(dim, context_dim)
    if kind == "mean_field":
        return MeanFieldGaussian(dim, context_dim)
    if kind == "full_rank":
        return FullRankGaussian(dim, context_dim)
    raise ValueError(f"base must be 'standard', 'mean_field' or 'full_rank', got {kind!r}")


def build_flows(
    kind: str,
    dim: int,
    context_dim: int | None = None,
    layers: int = 8,
    hidden: Sequence[int] = (64, 64),
    num_ortho: int | None = None,
    num_householder: int = 2,
    bins: int = 8,
    tail_bound: float = 5.0,
    units: int = 8,
) -> list[Flow]:
    """The flow modules of one kind: ``layers`` planar/radial/Sylvester layers in one
    module, or ``layers`` modules of the other kinds, alternating between layers: the
    autoregressive order reversed (IAF, ``spline_autoregressive``, ``naf``) or the
    transformed half swapped (``affine_coupling``, ``spline_coupling``: the last ⌈D/2⌉
    coordinates, then the first ⌊D/2⌋; they need D ≥ 2). ``hidden`` are the MADE's or the
    coupling conditioner's widths; ``bins`` K and ``tail_bound`` B shape the
    rational-quadratic splines, ``units`` M the naf's deep sigmoidal transform."""
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    if kind == "planar":
        return [Planar(dim, layers, context_dim)]
    if kind == "radial":
        return [Radial(dim, layers, context_dim)]
    if kind == "iaf":
        return [IAF(dim, hidden, context_dim, reverse=k % 2 == 1) for k in range(layers)]
    if kind == "affine_coupling":
        return [AffineCoupling(dim, hidden, context_dim, flip=k % 2 == 1) for k in range(layers)]
    if kind == "spline_coupling":
        return [
            SplineCoupling(dim, hidden, context_dim, k % 2 == 1, bins, tail_bound)
            for k in range(layers)
        ]
    if kind == "spline_autoregressive":
        return [
            SplineAutoregressive(dim, hidden, context_dim, k % 2 == 1, bins, tail_bound)
            for k in range(layers)
        ]
    if kind == "naf":
        return [
            NeuralAutoregressive(dim, hidden, context_dim, k % 2 == 1, units) for k in range(layers)
        ]
    if kind in FLOW_KINDS:
        q_kind = kind.removeprefix("sylvester_")
        return [Sylvester(dim, layers, q_kind, num_ortho, num_householder, context_dim)]  # type: ignore[arg-type]
    raise ValueError(f"unknown flow {kind!r}; choose one of {', '.join(FLOW_KINDS)}")


def build_family(
    kind: str,
    dim: int,
    context_dim: int | None = None,
    layers: int = 8,
    base: BaseKind = "mean_field",
    hidden: Sequence[int] = (64, 64),
    num_ortho: int | None = None,
    num_householder: int = 2,
    stack: Sequence[Mapping[str, Any]] = (),
    noise_dim: int = 10,
    log_q_samples: int = 1000,
    train_log_q_samples: int = 100,
    bins: int = 8,
    tail_bound: float = 5.0,
    units: int = 8,
) -> Family:
    """A variational family by name.

    Args:
        kind: one of ``FAMILY_KINDS``; ``"stack"`` chains the flows listed in ``stack``.
        dim: D.
        context_dim: None for a free family; C for q(z | c) amortized from a context.
        layers: flow depth K (planar/radial/Sylvester layers, IAF steps).
        base: base distribution of a flow.
        hidden: MADE hidden widths (IAF).
        num_ortho: M for orthogonal Sylvester flows (default D).
        num_householder: reflections per Householder Sylvester layer.
        bins, tail_bound, units: the spline flows' K bins on [−B, B] and the naf's M
            units (:func:`build_flows`).
        noise_dim: dimension of ε for the semi-implicit ``uivi`` family (whose network
            μ(ε [, h]) has the ``hidden`` widths), and ``log_q_samples`` its K draws of ε
            for estimating log q(z) (``train_log_q_samples`` for the logged training bound).
        stack: for ``kind="stack"``: dicts of :func:`build_flows` arguments (``kind``,
            ``layers``, ``hidden``, ...), applied in order, e.g.
            ``[{"kind": "sylvester_orthogonal", "layers": 16}, {"kind": "iaf", "layers": 4}]``.
    """
    if kind == "mean_field":
        return MeanFieldGaussian(dim, context_dim)
    if kind == "full_rank":
        return FullRankGaussian(dim, context_dim)
    if kind == "uivi":
        return SemiImplicit(
            dim,
            noise_dim,
            hidden,
            context_dim,
            log_q_samples=log_q_samples,
            train_log_q_samples=train_log_q_samples,
        )
    if kind == "stack":
        if not stack:
            raise ValueError("family 'stack' needs a non-empty list of flows in 'stack'")
        flows = [f for spec in stack for f in build_flows(dim=dim, context_dim=context_dim, **spec)]
    elif kind in FLOW_KINDS:
        flows = build_flows(
            kind,
            dim,
            context_dim,
            layers,
            hidden,
            num_ortho,
            num_householder,
            bins,
            tail_bound,
            units,
        )
    else:
        raise ValueError(f"unknown family {kind!r}; choose one of {', '.join(FAMILY_KINDS)}")
    return FlowFamily(build_base(base, dim, context_dim), flows)


def family_from_config(
    cfg: FamilyConfig, dim: int, context_dim: int | None = None, support: object = None
) -> Family:
    """The family a :class:`~vilab.config.FamilyConfig` describes, free or amortized.

    With a ``support`` (a target's: ``"positive"``, one ``(lo, hi)`` per coordinate, …;
    :func:`vilab.flows.support.parse_support`) the family is built on R^D and followed by
    the bijection T onto it (:class:`~vilab.flows.support.SupportTransform`): a flow
    family gets T as its last flow, a Gaussian becomes the base of a flow family with T.

    Raises:
        ValueError: a support with the semi-implicit family (``uivi``), whose log q has no
            flow to extend.
    """
    family = build_family(
        cfg.kind,
        dim,
        context_dim,
        layers=cfg.layers,
        base=cfg.base,  # type: ignore[arg-type]
        hidden=cfg.hidden,
        num_ortho=cfg.num_ortho,
        num_householder=cfg.num_householder,
        stack=[spec.model_dump() for spec in cfg.stack],
        noise_dim=cfg.noise_dim,
        log_q_samples=cfg.log_q_samples,
        train_log_q_samples=cfg.train_log_q_samples,
        bins=cfg.bins,
        tail_bound=cfg.tail_bound,
        units=cfg.units,
    )
    onto = support_flow(support, dim)
    if onto is None:
        return family
    if isinstance(family, SemiImplicit):
        raise ValueError(
            f"family.kind={cfg.kind!r} cannot be mapped onto the target's support "
            f"{describe_support(onto.bounds)}: choose a flow or Gaussian family"
        )
    if isinstance(family, FlowFamily):
        return FlowFamily(family.base, [*family.flows, onto])
    return FlowFamily(family, [onto])


def target_from_config(cfg: TargetConfig) -> Target:
    """The target a :class:`~vilab.config.TargetConfig` describes, with its ``support``
    stated (:func:`vilab.targets.base.with_support`); a user's function is probed inside
    the support at load time."""
    target = resolve_target(
        cfg.name, cfg.dim, cfg.box, cfg.log_z, cfg.context_dim, cfg.context_range, cfg.support
    )
    return with_support(target, cfg.support)
