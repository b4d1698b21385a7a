"""Flows in the sampling direction (noise -> sample), free or amortized."""

from vilab.flows.base import Flow
from vilab.flows.flow import FlowFamily
from vilab.flows.iaf import IAF
from vilab.flows.made import MADE
from vilab.flows.planar import Planar
from vilab.flows.radial import Radial
from vilab.flows.sylvester import Sylvester

__all__ = ["IAF", "MADE", "Flow", "FlowFamily", "Planar", "Radial", "Sylvester"]
