"""Figures (matplotlib, non-interactive Agg backend)."""

import matplotlib

matplotlib.use("Agg")
