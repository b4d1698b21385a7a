"""Build a family from a short spec: one function, every family, free or amortized."""

from __future__ import annotations

from typing import Literal

from vilab.families.base import Family
from vilab.families.gaussian import FullRankGaussian, MeanFieldGaussian, StandardNormal
from vilab.flows.flow import FlowFamily
from vilab.flows.iaf import IAF
from vilab.flows.planar import Planar
from vilab.flows.radial import Radial
from vilab.flows.sylvester import Sylvester

FAMILY_KINDS = (
    "mean_field",
    "full_rank",
    "planar",
    "radial",
    "iaf",
    "sylvester_orthogonal",
    "sylvester_householder",
    "sylvester_triangular",
)
BaseKind = Literal["standard", "mean_field", "full_rank"]


def build_base(kind: BaseKind, dim: int, context_dim: int | None) -> Family:
    if kind == "standard":
        return StandardNormal(dim, context_dim)
    if kind == "mean_field":
        return MeanFieldGaussian(dim, context_dim)
    if kind == "full_rank":
        return FullRankGaussian(dim, context_dim)
    raise ValueError(f"base must be 'standard', 'mean_field' or 'full_rank', got {kind!r}")


def build_family(
    kind: str,
    dim: int,
    context_dim: int | None = None,
    layers: int = 8,
    base: BaseKind = "mean_field",
    hidden: tuple[int, ...] | list[int] = (64, 64),
    num_ortho: int | None = None,
    num_householder: int = 2,
) -> Family:
    """A variational family by name.

    Args:
        kind: one of ``FAMILY_KINDS``.
        dim: D.
        context_dim: None for a free family; C for q(z | c) amortized from a context.
        layers: flow depth K (planar/radial/Sylvester layers, IAF steps).
        base: base distribution of a flow.
        hidden: MADE hidden widths (IAF).
        num_ortho: M for orthogonal Sylvester flows (default D).
        num_householder: reflections per Householder Sylvester layer.
    """
    if kind == "mean_field":
        return MeanFieldGaussian(dim, context_dim)
    if kind == "full_rank":
        return FullRankGaussian(dim, context_dim)
    if kind not in FAMILY_KINDS:
        raise ValueError(f"unknown family {kind!r}; choose one of {', '.join(FAMILY_KINDS)}")
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    flows: list = []
    if kind == "planar":
        flows = [Planar(dim, layers, context_dim)]
    elif kind == "radial":
        flows = [Radial(dim, layers, context_dim)]
    elif kind == "iaf":
        flows = [IAF(dim, hidden, context_dim, reverse=k % 2 == 1) for k in range(layers)]
    else:
        q_kind = kind.removeprefix("sylvester_")
        flows = [Sylvester(dim, layers, q_kind, num_ortho, num_householder, context_dim)]  # type: ignore[arg-type]
    return FlowFamily(build_base(base, dim, context_dim), flows)
