"""The colours the run's plots share."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
from matplotlib import colormaps

RGBA = tuple[float, float, float, float]

TAB10: list[RGBA] = [colormaps["tab10"](i) for i in range(10)]
"""matplotlib's ten qualitative ``tab10`` colours, as RGBA in [0, 1] (one per attack)."""
