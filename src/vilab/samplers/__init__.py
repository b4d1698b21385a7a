"""Samplers shared by the semi-implicit family and annealed importance sampling."""

from vilab.samplers.hmc import DualAveraging, HMCResult, hmc, hmc_step

__all__ = ["DualAveraging", "HMCResult", "hmc", "hmc_step"]
