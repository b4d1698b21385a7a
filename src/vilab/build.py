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
from vilab.flows.flow import FlowFamily
from vilab.flows.iaf import IAF
from vilab.flows.planar import Planar
from vilab.flows.radial import Radial
from vilab.flows.sylvester import Sylvester
from vilab.targets.base import Target
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
) -> list[Flow]:
    """The flow modules of one kind: ``layers`` planar/radial/Sylvester layers in one
    module, or ``layers`` IAF steps with the order reversed between steps."""
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    if kind == "planar":
        return [Planar(dim, layers, context_dim)]
    if kind == "radial":
        return [Radial(dim, layers, context_dim)]
    if kind == "iaf":
        return [IAF(dim, hidden, context_dim, reverse=k % 2 == 1) for k in range(layers)]
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
        flows = build_flows(kind, dim, context_dim, layers, hidden, num_ortho, num_householder)
    else:
        raise ValueError(f"unknown family {kind!r}; choose one of {', '.join(FAMILY_KINDS)}")
    return FlowFamily(build_base(base, dim, context_dim), flows)


def family_from_config(cfg: FamilyConfig, dim: int, context_dim: int | None = None) -> Family:
    """The family a :class:`~vilab.config.FamilyConfig` describes, free or amortized."""
    return build_family(
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
    )


def target_from_config(cfg: TargetConfig) -> Target:
    """The target a :class:`~vilab.config.TargetConfig` describes."""
    return resolve_target(cfg.name, cfg.dim, cfg.box, cfg.log_z, cfg.context_dim, cfg.context_range)
