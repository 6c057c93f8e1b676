"""The sweep table: one row per (sweep point, attack), in ``sweep.csv``.

Each row holds the point's swept values (one column per swept key, e.g.
``defences[0].noise_multiplier``), the attack's leakage averaged over its
records at that point (PSNR, SSIM, MSE, label accuracy, success rate), the
model's test accuracy after the last round, ε (the one covering the attack's
view, and the client- and server-side ones) and the noise the defences added.
A point without attack records still gets one row (attack empty).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

from fedsim.results.schema import RunResults, TrialResult
from fedsim.results.table import point_rows, summarise

LEAKAGE_COLUMNS = ("attack", "attack_index", "position", "ok", "success", "psnr", "ssim", "mse",
                   "mse_std", "label_accuracy", "epsilon")  # fmt: skip
POINT_COLUMNS = ("test_accuracy", "epsilon_client", "epsilon_server", "delta", "client_noise_std",
                 "client_noise_ratio", "server_noise_std", "server_noise_ratio")  # fmt: skip


@dataclass(frozen=True)
class Axes:
    """The swept keys of a run: ``x`` (the first numeric key that varies) and the
    other keys that vary (``series``), in the order of the scenario's points."""

    keys: tuple[str, ...]
    x: str | None
    series: tuple[str, ...]


def sweep_axes(trials: list[TrialResult]) -> Axes:
    """Find the varying keys of the trials' points."""
    keys: list[str] = []
    for trial in trials:
        keys += [k for k in trial.point if k not in keys]
    varying = [k for k in keys if len({repr(t.point.get(k)) for t in trials}) > 1]
    numeric = [k for k in varying if all(_is_number(t.point.get(k)) for t in trials)]
    x = numeric[0] if numeric else None
    return Axes(tuple(keys), x, tuple(k for k in varying if k != x))


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def sweep_rows(results: RunResults) -> list[dict[str, Any]]:
    """The rows of ``sweep.csv`` (see the module docstring)."""
    leakage = summarise(results)
    axes = sweep_axes(results.trials)
    rows = []
    for trial, point in zip(results.trials, point_rows(results), strict=True):
        values = {k: trial.point.get(k) for k in axes.keys}
        common = {"trial": trial.index, **values, "status": trial.status,
                  **{c: point[c] for c in POINT_COLUMNS}}  # fmt: skip
        mine = [r for r in leakage if r["trial"] == trial.index]
        for row in mine or [{}]:
            rows.append({**common, **{c: row.get(c) for c in LEAKAGE_COLUMNS}})
    return rows


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return "" if value is None else value


def sweep_csv(results: RunResults) -> str:
    """``sweep.csv``'s text: a header, then :func:`sweep_rows`."""
    rows = sweep_rows(results)
    axes = sweep_axes(results.trials)
    columns = ["trial", *axes.keys, "status", *LEAKAGE_COLUMNS, *POINT_COLUMNS]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    return out.getvalue()
