"""The defence leaderboard's figure: ``leaderboard.png``, the privacy–utility frontier
of every defence set.

A grid of panels: rows PSNR (dB, peak 1) and SSIM of the best attack, columns the
attacker positions that ran; x the test accuracy after the last round. One colour
per set, its strengths joined in the order of the scenario and labelled with their
swept value; the undefended set (``none``) a black star. Bars: ± one standard
deviation, over the seeds (accuracy) and over the best attack's per-image scores
(leakage). See :mod:`fedsim.results.leaderboard` for what "best" means.
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedsim.metrics import SUCCESS_PSNR
from fedsim.results.colours import TAB10
from fedsim.results.leaderboard import METRICS, POSITIONS, UNDEFENDED, Entry

YLABELS = {"psnr": "best attack's PSNR, dB", "ssim": "best attack's SSIM"}


def save_leaderboard_plot(entries: list[Entry], path: Path) -> bool:
    """Draw the frontier of ``entries`` into ``path``; ``False`` (nothing written) when no
    entry has both an accuracy and an attack score."""
    positions = [p for p in POSITIONS if any(p in e.best for e in entries)]
    if not positions or not any(e.accuracy for e in entries):
        return False
    fig, panels = plt.subplots(
        len(METRICS), len(positions), figsize=(6 * len(positions), 4.2 * len(METRICS)),
        squeeze=False,
    )  # fmt: skip
    sets = list(dict.fromkeys(e.defence_set for e in entries if e.defence_set != UNDEFENDED))
    colours = dict(zip(sets, cycle(TAB10), strict=False))
    for row, metric in enumerate(METRICS):
        for col, position in enumerate(positions):
            ax = panels[row][col]
            for name in [UNDEFENDED, *sets]:
                points = [
                    (e, e.best[position][metric])
                    for e in entries
                    if e.defence_set == name and e.accuracy and metric in e.best.get(position, {})
                ]
                if not points:
                    continue
                xs = [e.accuracy.mean for e, _ in points if e.accuracy]
                ys = [b.score.mean for _, b in points]
                style = (
                    {"color": "black", "marker": "*", "markersize": 12, "linestyle": "none"}
                    if name == UNDEFENDED
                    else {"color": colours[name], "marker": "o"}
                )
                ax.errorbar(
                    xs, ys, xerr=[e.accuracy.std for e, _ in points if e.accuracy],
                    yerr=[b.score.std for _, b in points], capsize=2, label=name, **style,
                )  # fmt: skip
                for (entry, _), x, y in zip(points, xs, ys, strict=True):
                    if entry.value is not None:
                        ax.annotate(f"{entry.value:g}", (x, y), fontsize=7, xytext=(3, 3),
                                    textcoords="offset points")  # fmt: skip
            if metric == "psnr":
                ax.axhline(SUCCESS_PSNR, color="grey", linestyle=":", linewidth=1)
            ax.set_xlabel("test accuracy after the last round")
            ax.set_ylabel(YLABELS[metric])
            ax.set_title(f"attacker at the {position}", fontsize=10)
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle("defences: leakage against utility (labels: strength)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
