"""Leakage as the model trains: per round, each attack's PSNR, SSIM and label accuracy
beside the model's test accuracy.

``leakage_rounds.png`` (``leakage_rounds_t<i>.png`` per experiment when the sweep
has several, ``i`` its first trial): one panel per measure (PSNR; SSIM and the
labels when recorded: per matched image solid, as a multiset of counts dotted)
against the round, one line per attack, the test accuracy
after each round dashed on a second axis. Trials that differ only in a replicate key
(``seed``, :data:`fedsim.results.sweep.REPLICATE_KEYS`) are one experiment: each
point is their mean, bars and band ± one standard deviation, ``n`` in the title.
Drawn when some attack ran at two rounds or more. ``rounds.csv`` holds the numbers
per trial (:mod:`fedsim.results.rounds`).
"""

from __future__ import annotations

import itertools
from itertools import cycle
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes as MplAxes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedsim.metrics import SUCCESS_PSNR
from fedsim.results.colours import TAB10
from fedsim.results.rounds import round_rows, rounds_csv
from fedsim.results.schema import RunResults, TrialResult
from fedsim.results.store import atomic_write
from fedsim.results.sweep import mean_std, sweep_axes
from fedsim.results.table import short_point

PANELS = (
    (("psnr",), "PSNR of the reconstruction, dB (peak 1)"),
    (("ssim",), "SSIM of the reconstruction"),
    (("label_accuracy", "label_count_accuracy"), "labels recovered: per image —, counts ···"),
)
"""The panels drawn against the round: their ``rounds.csv`` columns (drawn solid, then
dotted), axis label."""
STYLES = ("-", ":")


def _accuracy_axis(ax: MplAxes, trials: list[TrialResult]) -> None:
    """The trials' mean test accuracy per round (± std band) on a second y axis."""
    rounds = sorted({r for t in trials for r in t.accuracy if r > 0})
    points = [(r, mean_std([t.accuracy.get(r) for t in trials])) for r in rounds]
    drawn = [(r, stats) for r, stats in points if stats is not None]
    if not drawn:
        return
    twin = ax.twinx()
    xs = [r for r, _ in drawn]
    means = [s[0] for _, s in drawn]
    twin.plot(xs, means, color="black", linestyle="--", linewidth=1, label="test accuracy")
    if any(s[2] > 1 for _, s in drawn):
        low = [s[0] - s[1] for _, s in drawn]
        high = [s[0] + s[1] for _, s in drawn]
        twin.fill_between(xs, low, high, color="black", alpha=0.1, linewidth=0)
    twin.set_ylabel("test accuracy after the round")
    twin.set_ylim(0, 1)
    ax.set_zorder(twin.get_zorder() + 1)  # the attacks' lines above the accuracy
    ax.patch.set_visible(False)


def _plot(trials: list[TrialResult], rows: list[dict[str, Any]], title: str, path: Path) -> None:
    panels = [
        (measures, label) for measures, label in PANELS
        if any(r[m] is not None for r in rows for m in measures)
    ]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), squeeze=False)
    attacks = sorted({(r["attack_index"], r["attack"], r["position"]) for r in rows})
    colours = dict(zip(attacks, cycle(TAB10), strict=False))
    for ax, (measures, label) in zip(axes[0], panels, strict=True):
        styled = zip(measures, STYLES, strict=False)
        for attack, (measure, style) in itertools.product(attacks, list(styled)):
            mine = [r for r in rows if (r["attack_index"], r["attack"], r["position"]) == attack]
            by_round: dict[int, list[Any]] = {}
            for row in mine:
                by_round.setdefault(row["round"], []).append(row[measure])
            stats = [(n, mean_std(values)) for n, values in sorted(by_round.items())]
            drawn = [(n, s) for n, s in stats if s is not None]
            if not drawn:
                continue
            name = f"{attack[1]} ({attack[2]})" if style == STYLES[0] else None
            ax.errorbar([n for n, _ in drawn], [s[0] for _, s in drawn],
                        yerr=[s[1] for _, s in drawn], marker="o", capsize=3, linestyle=style,
                        color=colours[attack], label=name)  # fmt: skip
        if measures == ("psnr",):
            ax.axhline(SUCCESS_PSNR, color="grey", linestyle=":", linewidth=1)
        else:
            ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("federated round (attack on the model the clients started from)")
        ax.set_ylabel(label)
        _accuracy_axis(ax, trials)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1))
    labels.append("test accuracy (right axis)")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle(title)
    rows_of_legend = -(-len(labels) // 5)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_round_plots(results: RunResults, run_dir: Path) -> list[dict[str, str]]:
    """Write ``rounds.csv`` and the leakage-vs-round PNGs; returns the plots written."""
    rows = round_rows(results)
    atomic_write(run_dir / "rounds.csv", rounds_csv(rows))
    axes = sweep_axes(results.trials)
    experiments: dict[tuple[tuple[str, str], ...], list[TrialResult]] = {}
    for trial in results.trials:
        experiments.setdefault(axes.setting(trial.point), []).append(trial)
    plots = []
    for trials in experiments.values():
        indices = {t.index for t in trials}
        mine = [r for r in rows if r["trial"] in indices]
        per_attack: dict[int, set[int]] = {}
        for row in mine:
            per_attack.setdefault(row["attack_index"], set()).add(row["round"])
        if max((len(r) for r in per_attack.values()), default=0) < 2:
            continue
        first = trials[0]
        name = (
            "leakage_rounds.png" if len(experiments) == 1
            else f"leakage_rounds_t{first.index}.png"
        )  # fmt: skip
        setting = {k: v for k, v in first.point.items() if k != axes.replicate}
        point = f" ({short_point(setting)})" if setting else ""
        repeats = f"{axes.replicate or 'run'}s"  # identical points repeat a run too
        seeds = f", mean ± std over {len(trials)} {repeats}" if len(trials) > 1 else ""
        title = f"leakage vs round{point}{seeds}"
        _plot(trials, mine, title, run_dir / name)
        plots.append({"path": name, "title": title})
    return plots
