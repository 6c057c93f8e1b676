"""Plots of a run's records (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedsim.results.table import short_point

MAX_CURVES = 60


def save_loss_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """Each attack's objective per optimiser step, log scale, one colour per attack.

    Returns ``False`` (and writes nothing) when no record has a loss curve.
    """
    curves = [r for r in records if r["diagnostics"].get("loss_curve")][:MAX_CURVES]
    if not curves:
        return False
    attacks = sorted({r["attack"] for r in curves})
    colours = dict(zip(attacks, plt.cm.tab10.colors, strict=False))
    fig, ax = plt.subplots(figsize=(7, 4))
    labelled: set[str] = set()
    for rec in curves:
        values = [max(v, 1e-12) for v in rec["diagnostics"]["loss_curve"]]
        label = rec["attack"] if rec["attack"] not in labelled else None
        labelled.add(rec["attack"])
        ax.plot(range(1, len(values) + 1), values, color=colours[rec["attack"]], alpha=0.6,
                linewidth=1, label=label)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("attack objective (gradient distance)")
    points = {short_point(r["point"]) for r in curves}
    ax.set_title(
        "attack loss curves" + (f" ({len(points)} sweep points)" if len(points) > 1 else "")
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
