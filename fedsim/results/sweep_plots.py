"""Plots of a sweep (PNG, matplotlib), with stable file names.

- ``sweep_leakage.png``: each attack's PSNR against the swept parameter, one
  panel per attacker position, one line per attack (and per value of any other
  swept key), the success threshold dashed.
- ``sweep_accuracy.png``: the model's test accuracy after the last round.
- ``sweep_frontier.png``: the privacy–utility frontier: the best attack's PSNR
  against test accuracy, one line per position, points labelled with the
  swept value.
- ``sweep_epsilon.png``: ε against the swept parameter (when an accountant ran).

Drawn only when the points vary a numeric parameter (:func:`sweep_axes`). Points
that differ only in a replicate key (``seed``) are averaged: markers at the mean,
bars ± one standard deviation. When an attack ran at several rounds, the leakage
plot draws one line per round (``rounds.csv``'s rows) instead of their average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes as MplAxes

from fedsim.metrics import SUCCESS_PSNR
from fedsim.results.colours import TAB10
from fedsim.results.rounds import round_rows
from fedsim.results.schema import RunResults
from fedsim.results.sweep import Axes, mean_std, sweep_axes, sweep_rows

LINESTYLES = ("-", "--", ":", "-.")
Plot = dict[str, str]
"""``{"path": file name in the run directory, "title": what it shows}``."""


def _label(key: str) -> str:
    """``defences[0].noise_multiplier`` → ``noise_multiplier``."""
    return key.rsplit(".", 1)[-1]


def _series_name(row: dict[str, Any], series: Sequence[str]) -> str:
    return ", ".join(f"{_label(k)}={row[k]}" for k in series)


def _set_xscale(ax: MplAxes, xs: Sequence[float]) -> None:
    """Log scale when the positive values span a factor of 10 or more (symlog with a 0),
    ticks at the swept values."""
    positive = sorted({x for x in xs if x > 0})
    if len(positive) < 2 or min(xs) < 0 or positive[-1] / positive[0] < 10:
        return
    if min(xs) == 0:
        ax.set_xscale("symlog", linthresh=positive[0])
        ax.set_xlim(left=-0.3 * positive[0], right=positive[-1] * 1.5)
    else:
        ax.set_xscale("log")
    ticks = sorted(set(xs))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


Line = list[tuple[float, float, float, int]]
"""A line's points sorted by x: ``(x, mean y, std y, n)`` over the rows at that x."""


def _lines(
    rows: list[dict[str, Any]], x: str, y: str, group: Sequence[str]
) -> dict[tuple[Any, ...], Line]:
    """Per distinct value of the ``group`` columns, the mean ± std of ``y`` at each ``x``
    (rows that share both are replicates)."""
    cells: dict[tuple[Any, ...], dict[Any, list[Any]]] = {}
    for row in rows:
        if _finite(row.get(y)):
            line = cells.setdefault(tuple(row.get(g) for g in group), {})
            line.setdefault(row[x], []).append(row[y])
    lines: dict[tuple[Any, ...], Line] = {}
    for key, by_x in cells.items():
        stats = [(xv, mean_std(values)) for xv, values in sorted(by_x.items())]
        lines[key] = [(xv, *s) for xv, s in stats if s is not None]
    return lines


def _draw(ax: MplAxes, line: Line, **style: Any) -> None:
    """``line`` as markers at the means, with ± std bars where it has replicates."""
    xs, means, stds, counts = zip(*line, strict=True)
    ax.errorbar(xs, means, yerr=stds if max(counts) > 1 else None, marker="o", capsize=3,
                **style)  # fmt: skip


def _replicates(rows: list[dict[str, Any]], axes: Axes) -> str:
    """`` (mean ± std over n seeds)`` for a title, or nothing without replicates."""
    if axes.replicate is None:
        return ""
    count = len({repr(r.get(axes.replicate)) for r in rows})
    return f" (mean ± std over {count} {_label(axes.replicate)}s)"


def _leakage_rows(results: RunResults, axes: Axes) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The rows the leakage plot draws and its series keys: :func:`sweep_rows`, or, when
    an attack ran at several rounds of a trial, ``rounds.csv``'s rows with the swept
    values, ``round`` one more series key."""
    rows = round_rows(results)
    rounds: dict[tuple[int, int], set[int]] = {}
    for row in rows:
        rounds.setdefault((row["trial"], row["attack_index"]), set()).add(row["round"])
    if max((len(r) for r in rounds.values()), default=0) < 2:
        return sweep_rows(results), axes.series
    points = {t.index: t.point for t in results.trials}
    for row in rows:
        row.update({k: points[row["trial"]].get(k) for k in axes.keys})
    return rows, (*axes.series, "round")


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _leakage(
    rows: list[dict[str, Any]], axes: Axes, series_keys: Sequence[str], path: Path
) -> None:
    x = axes.x or ""
    positions = [p for p in ("server", "participant") if any(r["position"] == p for r in rows)]
    fig, panels = plt.subplots(1, len(positions), figsize=(5.5 * len(positions), 4), squeeze=False)
    attacks = sorted({r["attack"] for r in rows if r["attack"]})
    colours = dict(zip(attacks, cycle(TAB10), strict=False))
    styles = dict(zip(sorted({_series_name(r, series_keys) for r in rows}), cycle(LINESTYLES),
                      strict=False))  # fmt: skip
    for ax, position in zip(panels[0], positions, strict=True):
        mine = [r for r in rows if r["position"] == position]
        lines = _lines(mine, x, "psnr", ["attack_index", "attack", *series_keys])
        for (_index, attack, *rest), line in lines.items():
            series = ", ".join(f"{_label(k)}={v}" for k, v in zip(series_keys, rest, strict=True))
            _draw(ax, line, color=colours[attack], linestyle=styles[series],
                  label=f"{attack} {series}".strip())  # fmt: skip
        ax.axhline(SUCCESS_PSNR, color="grey", linestyle=":", linewidth=1)
        _set_xscale(ax, [r[x] for r in rows])
        ax.set_xlabel(_label(x))
        ax.set_ylabel("PSNR of the reconstruction, dB (peak 1)")
        ax.set_title(f"attacker at the {position}{_replicates(rows, axes)}", fontsize=10)
        ax.legend(fontsize=7)
    _save(fig, path)


def _accuracy(rows: list[dict[str, Any]], axes: Axes, path: Path) -> None:
    x = axes.x or ""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    per_point = {r["trial"]: r for r in rows}.values()
    for rest, line in _lines(list(per_point), x, "test_accuracy", axes.series).items():
        label = ", ".join(f"{_label(k)}={v}" for k, v in zip(axes.series, rest, strict=True))
        _draw(ax, line, label=label or None)
    _set_xscale(ax, [r[x] for r in rows])
    ax.set_xlabel(_label(x))
    ax.set_ylabel("test accuracy after the last round")
    ax.set_ylim(0, 1)
    ax.set_title(f"accuracy vs {_label(x)}{_replicates(rows, axes)}", fontsize=10)
    if axes.series:
        ax.legend(fontsize=7)
    _save(fig, path)


def _best_per_point(rows: list[dict[str, Any]], position: str) -> list[dict[str, Any]]:
    best: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["position"] != position or not _finite(row.get("psnr")):
            continue
        if row["trial"] not in best or row["psnr"] > best[row["trial"]]["psnr"]:
            best[row["trial"]] = row
    return list(best.values())


def _frontier(rows: list[dict[str, Any]], axes: Axes, path: Path) -> None:
    x = axes.x or ""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    labelled: list[tuple[float, float]] = []
    for position, marker in (("server", "o"), ("participant", "s")):
        best = [r for r in _best_per_point(rows, position) if _finite(r.get("test_accuracy"))]
        psnr = _lines(best, x, "psnr", axes.series)
        accuracy = _lines(best, x, "test_accuracy", axes.series)
        for key, line in psnr.items():
            series = _series_name(dict(zip(axes.series, key, strict=True)), axes.series)
            points = [(a[1], p[1], p[0]) for p, a in zip(line, accuracy[key], strict=True)]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker,
                    label=f"{position} {series}".strip())  # fmt: skip
            for utility, leakage, value in points:
                where = (utility, leakage / 100)
                if any(abs(where[0] - a) < 0.03 and abs(where[1] - b) < 0.04 for a, b in labelled):
                    continue  # keep crowded corners readable: one label per spot
                labelled.append(where)
                ax.annotate(f"{value:g}", (utility, leakage), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.axhline(SUCCESS_PSNR, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("test accuracy after the last round (utility)")
    ax.set_ylabel("best attack's PSNR, dB (leakage)")
    ax.set_title(f"privacy–utility frontier (labels: {_label(x)}){_replicates(rows, axes)}",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=7)
    _save(fig, path)


def _epsilon(rows: list[dict[str, Any]], axes: Axes, path: Path) -> bool:
    x = axes.x or ""
    per_point = list({r["trial"]: r for r in rows}.values())
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn = False
    for column, side in (("epsilon_client", "client-side"), ("epsilon_server", "server-side")):
        usable = [r for r in per_point if _finite(r.get(column)) and r[column] > 0]
        for rest, line in _lines(usable, x, column, axes.series).items():
            label = ", ".join(f"{_label(k)}={v}" for k, v in zip(axes.series, rest, strict=True))
            _draw(ax, line, label=f"{side} {label}".strip())
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    _set_xscale(ax, [r[x] for r in per_point])
    ax.set_yscale("log")
    ax.set_xlabel(_label(x))
    deltas = sorted({r["delta"] for r in per_point if r.get("delta") is not None})
    at = f" at δ={', '.join(f'{d:g}' for d in deltas)}" if deltas else ""
    ax.set_ylabel(f"ε{at} after the last round")
    ax.set_title("privacy spent")
    ax.legend(fontsize=7)
    _save(fig, path)
    return True


def save_sweep_plots(results: RunResults, run_dir: Path) -> list[Plot]:
    """Write the sweep's PNGs into ``run_dir``; returns what was written."""
    axes = sweep_axes(results.trials)
    rows = sweep_rows(results)
    if axes.x is None:
        return []
    name = _label(axes.x)
    plots = []
    if any(_finite(r.get("psnr")) for r in rows):
        leakage_rows, series = _leakage_rows(results, axes)
        _leakage(leakage_rows, axes, series, run_dir / "sweep_leakage.png")
        plots.append({"path": "sweep_leakage.png", "title": f"attack leakage vs {name}"})
    if any(_finite(r.get("test_accuracy")) for r in rows):
        _accuracy(rows, axes, run_dir / "sweep_accuracy.png")
        plots.append({"path": "sweep_accuracy.png", "title": f"test accuracy vs {name}"})
        if any(_finite(r.get("psnr")) for r in rows):
            _frontier(rows, axes, run_dir / "sweep_frontier.png")
            plots.append({"path": "sweep_frontier.png", "title": "privacy–utility frontier"})
    if _epsilon(rows, axes, run_dir / "sweep_epsilon.png"):
        plots.append({"path": "sweep_epsilon.png", "title": f"ε vs {name}"})
    return plots
