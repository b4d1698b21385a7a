"""Variational families: what q is (DESIGN.md)."""

from vilab.families.base import Family
from vilab.families.distribution import (
    FamilyDistribution,
    FullRankGaussianDistribution,
    MeanFieldGaussianDistribution,
)
from vilab.families.gaussian import FullRankGaussian, MeanFieldGaussian, StandardNormal

__all__ = [
    "Family",
    "FamilyDistribution",
    "FullRankGaussian",
    "FullRankGaussianDistribution",
    "MeanFieldGaussian",
    "MeanFieldGaussianDistribution",
    "StandardNormal",
]
