"""Flows in the sampling direction (noise -> sample), free or amortized."""

from vilab.core.support import parse_support
from vilab.flows.autoregressive import Autoregressive
from vilab.flows.base import Flow
from vilab.flows.coupling import AffineCoupling
from vilab.flows.flow import FlowFamily
from vilab.flows.iaf import IAF, AffineAutoregressive
from vilab.flows.made import MADE
from vilab.flows.naf import NeuralAutoregressive
from vilab.flows.planar import Planar
from vilab.flows.radial import Radial
from vilab.flows.spline import SplineAutoregressive, SplineCoupling
from vilab.flows.support import SupportTransform, support_flow
from vilab.flows.sylvester import Sylvester

__all__ = [
    "IAF",
    "MADE",
    "AffineAutoregressive",
    "AffineCoupling",
    "Autoregressive",
    "Flow",
    "FlowFamily",
    "NeuralAutoregressive",
    "Planar",
    "Radial",
    "SplineAutoregressive",
    "SplineCoupling",
    "SupportTransform",
    "Sylvester",
    "parse_support",
    "support_flow",
]
