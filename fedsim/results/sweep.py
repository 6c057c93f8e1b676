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
                   "mse_std", "label_accuracy", "label_count_accuracy", "epsilon")  # fmt: skip
POINT_COLUMNS = ("test_accuracy", "epsilon_client", "epsilon_server", "epsilon_sum", "delta",
                 "client_noise_std",
                 "client_noise_ratio", "server_noise_std", "server_noise_ratio")  # fmt: skip


REPLICATE_KEYS = ("seed",)
"""Swept keys whose values are repetitions of one experiment, not a parameter: plots
average over them (mean ± standard deviation) instead of drawing them as an axis."""


@dataclass(frozen=True)
class Axes:
    """The swept keys of a run, in the order of the scenario's points: ``x`` (of the
    numeric keys that vary, replicates aside, the one with the most values; the
    first of those), the other varying keys (``series``), and ``replicate`` (the
    :data:`REPLICATE_KEYS` key that varies, if any)."""

    keys: tuple[str, ...]
    x: str | None
    series: tuple[str, ...]
    replicate: str | None = None

    def setting(self, point: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """What identifies ``point``'s experiment: its swept values but the replicate's."""
        return tuple((k, repr(point.get(k))) for k in self.keys if k != self.replicate)


def sweep_axes(trials: list[TrialResult]) -> Axes:
    """Find the varying keys of the trials' points."""
    keys: list[str] = []
    for trial in trials:
        keys += [k for k in trial.point if k not in keys]
    values = {k: len({repr(t.point.get(k)) for t in trials}) for k in keys}
    varying = [k for k in keys if values[k] > 1]
    replicate = next((k for k in varying if k in REPLICATE_KEYS), None)
    varying = [k for k in varying if k != replicate]
    numeric = [k for k in varying if all(_is_number(t.point.get(k)) for t in trials)]
    x = max(numeric, key=lambda k: values[k]) if numeric else None
    return Axes(tuple(keys), x, tuple(k for k in varying if k != x), replicate)


def mean_std(values: list[Any]) -> tuple[float, float, int] | None:
    """Mean, population standard deviation and count of the finite numbers in
    ``values``; ``None`` when there are none."""
    finite = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
    if not finite:
        return None
    mean = sum(finite) / len(finite)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite)), len(finite)


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
