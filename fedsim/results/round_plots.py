"""Leakage as the model trains: per round, each attack's mean PSNR beside the test accuracy.

- ``rounds.csv``: one row per (sweep point, round, attack) with the attack's mean
  PSNR, SSIM and success rate over that round's records, and the model's test
  accuracy after that round.
- ``leakage_rounds.png`` (``leakage_rounds_t<i>.png`` per sweep point when there are
  several): PSNR against the round, one line per attack, the test accuracy on a
  second axis. Drawn when some attack ran at two rounds or more.
"""

from __future__ import annotations

import csv
import io
import math
from itertools import cycle
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedsim.metrics import SUCCESS_PSNR
from fedsim.results.colours import TAB10
from fedsim.results.schema import Record, RunResults, TrialResult
from fedsim.results.store import atomic_write
from fedsim.results.table import short_point

ROUND_COLUMNS = ("trial", "round", "test_accuracy", "attack_index", "attack", "position",
                 "records", "psnr", "ssim", "success")  # fmt: skip


LEAKAGE = ("psnr", "ssim", "success")


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def round_rows(results: RunResults) -> list[dict[str, Any]]:
    """The rows of ``rounds.csv``: per (trial, round, attack) the mean leakage over the
    scored records of that round, and the test accuracy after the round."""
    groups: dict[tuple[int, int, int], list[Record]] = {}
    for record in results.records:
        if record.status == "ok" and record.metrics:
            key = (record.trial, record.round, record.attack_index)
            groups.setdefault(key, []).append(record)
    accuracy = {t.index: t.accuracy for t in results.trials}
    rows = []
    for (trial, server_round, index), records in sorted(groups.items()):
        rows.append({
            "trial": trial,
            "round": server_round,
            "test_accuracy": accuracy.get(trial, {}).get(server_round),
            "attack_index": index,
            "attack": records[0].attack,
            "position": records[0].position,
            "records": len(records),
            **{m: _mean([r.metrics.get(m) for r in records]) for m in LEAKAGE},
        })  # fmt: skip
    return rows


def rounds_csv(results: RunResults) -> str:
    """``rounds.csv``'s text: a header, then :func:`round_rows`."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROUND_COLUMNS)
    writer.writeheader()
    for row in round_rows(results):
        writer.writerow({c: "" if row[c] is None else row[c] for c in ROUND_COLUMNS})
    return out.getvalue()


def _plot_trial(trial: TrialResult, rows: list[dict[str, Any]], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    attacks = sorted({(r["attack_index"], r["attack"], r["position"]) for r in rows})
    for (index, attack, position), colour in zip(attacks, cycle(TAB10), strict=False):
        mine = [r for r in rows if r["attack_index"] == index and r["psnr"] is not None]
        ax.plot([r["round"] for r in mine], [r["psnr"] for r in mine], marker="o",
                color=colour, label=f"{attack} ({position})")  # fmt: skip
    ax.axhline(SUCCESS_PSNR, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("federated round (attack on the model the clients started from)")
    ax.set_ylabel("PSNR of the reconstruction, dB (peak 1)")
    accuracy = sorted(trial.accuracy.items())
    if accuracy:
        twin = ax.twinx()
        twin.plot(*zip(*accuracy, strict=True), color="black", linestyle="--", linewidth=1,
                  label="test accuracy")  # fmt: skip
        twin.set_ylabel("test accuracy after the round")
        twin.set_ylim(0, 1)
        twin.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_round_plots(results: RunResults, run_dir: Path) -> list[dict[str, str]]:
    """Write ``rounds.csv`` and the leakage-vs-round PNGs; returns the plots written."""
    rows = round_rows(results)
    atomic_write(run_dir / "rounds.csv", rounds_csv(results))
    trials = results.trials
    plots = []
    for trial in trials:
        mine = [r for r in rows if r["trial"] == trial.index]
        per_attack: dict[int, set[int]] = {}
        for row in mine:
            per_attack.setdefault(row["attack_index"], set()).add(row["round"])
        if max((len(r) for r in per_attack.values()), default=0) < 2:
            continue
        name = "leakage_rounds.png" if len(trials) == 1 else f"leakage_rounds_t{trial.index}.png"
        point = f" ({short_point(trial.point)})" if trial.point else ""
        title = f"leakage vs round{point}"
        _plot_trial(trial, mine, title, run_dir / name)
        plots.append({"path": name, "title": title})
    return plots
