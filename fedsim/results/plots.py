"""Plots of a run's records (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedsim.results.colours import TAB10
from fedsim.results.schema import Record, TrialResult
from fedsim.results.table import short_point

MAX_CURVES = 60


def save_loss_curves(records: list[Record], path: Path) -> bool:
    """Each attack's objective per optimiser step, log scale, one colour per attack.

    Returns ``False`` (and writes nothing) when no record has a loss curve.
    """
    curves = [r for r in records if r.diagnostics.get("loss_curve")][:MAX_CURVES]
    if not curves:
        return False
    attacks = sorted({r.attack for r in curves})
    colours = dict(zip(attacks, TAB10, strict=False))
    fig, ax = plt.subplots(figsize=(7, 4))
    labelled: set[str] = set()
    for rec in curves:
        values = [max(v, 1e-12) for v in rec.diagnostics["loss_curve"]]
        label = rec.attack if rec.attack not in labelled else None
        labelled.add(rec.attack)
        ax.plot(range(1, len(values) + 1), values, color=colours[rec.attack], alpha=0.6,
                linewidth=1, label=label)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("attack objective (gradient distance)")
    points = {short_point(r.point) for r in curves}
    ax.set_title(
        "attack loss curves" + (f" ({len(points)} sweep points)" if len(points) > 1 else "")
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


MAX_LEGEND = 12


def save_accuracy_curves(trials: list[TrialResult], path: Path) -> bool:
    """The global model's test accuracy per round (round 0: before training), one line
    per sweep point. Returns ``False`` (and writes nothing) when no accuracy was measured.
    """
    measured = [t for t in trials if t.accuracy]
    if not measured:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.cm.viridis([i / max(len(measured) - 1, 1) for i in range(len(measured))])
    for trial, colour in zip(measured, colours, strict=True):
        rounds = sorted(trial.accuracy)
        ax.plot(rounds, [trial.accuracy[r] for r in rounds],
                marker="o" if len(rounds) <= 20 else None, markersize=3, color=colour,
                label=short_point(trial.point))  # fmt: skip
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("the global model's test accuracy per round")
    if measured[0].point and len(measured) <= MAX_LEGEND:
        ax.legend(fontsize=7, ncol=2 if len(measured) > 6 else 1)
    elif len(measured) > MAX_LEGEND:
        ax.set_title(f"test accuracy per round, {len(measured)} sweep points (dark = first)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
