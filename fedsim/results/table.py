"""The summary tables: one row per (sweep point, attack), and one per sweep point
(accuracy, ε, noise), from the stored results."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from fedsim.results.points import point_summary, view_epsilon
from fedsim.results.schema import RunResults, ThreatRecord

COLUMNS = {
    "point": "sweep point",
    "attack": "attack",
    "position": "position",
    "threat": "threat (SoK)",
    "ok": "ok",
    "success": "success",
    "psnr": "PSNR dB",
    "psnr_255": "PSNR₂₅₅",
    "ssim": "SSIM",
    "mse": "MSE",
    "mse_std": "± std",
    "label_accuracy": "label acc",
    "steps": "steps",
    "seconds": "s",
    "test_accuracy": "test acc",
    "epsilon": "ε",
}

POINT_COLUMNS = {
    "point": "sweep point",
    "status": "status",
    "test_accuracy": "test acc",
    "epsilon_client": "ε client",
    "epsilon_server": "ε server",
    "epsilon_sum": "ε of the sum",
    "delta": "δ",
    "client_noise_std": "noise std client",
    "client_noise_ratio": "client noise/‖u‖",
    "server_noise_std": "noise std server",
    "server_noise_ratio": "server noise/‖u‖",
}
OPTIONAL_COLUMNS = {"rel_perceptual_l1": ("ssim", "rel-perc-L1")}
"""Columns shown only when some row has a value: key → (column it follows, header)."""


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def _std(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.std(finite)) if len(finite) > 1 else None


def summarise(results: RunResults) -> list[dict[str, Any]]:
    """Rows of batch-mean metrics averaged over rounds and clients, per trial and attack.

    ``success`` is the fraction of all records (failed ones included) whose every
    image reached :data:`fedsim.metrics.SUCCESS_PSNR`; ``mse_std`` is the standard
    deviation of the records' MSE; ``steps`` and ``seconds`` are the attack's
    optimiser steps and wall time averaged over its *successful* records.
    ``test_accuracy`` is the global model's accuracy after the trial's last round;
    ``epsilon`` the ε that covers this attacker's view (:func:`view_epsilon`).
    """
    rows = []
    for trial in results.trials:
        point = point_summary(trial)
        records = [r for r in results.records if r.trial == trial.index]
        for index in sorted({r.attack_index for r in records}):
            mine = [r for r in records if r.attack_index == index]
            ok = [r for r in mine if r.status == "ok" and r.metrics]
            won = [r for r in ok if r.metrics.get("success")]
            rows.append(
                {
                    "trial": trial.index,
                    "point": short_point(trial.point),
                    "attack": mine[0].attack,
                    "attack_index": index,
                    "position": mine[0].position,
                    "threat": threat_summary(mine[0].threat_model),
                    "ok": f"{len(ok)}/{len(mine)}",
                    "success": _mean([r.metrics.get("success", 0.0) for r in mine]),
                    **{
                        m: _mean([r.metrics.get(m) for r in ok])
                        for m in (
                            "psnr",
                            "psnr_255",
                            "ssim",
                            "mse",
                            "label_accuracy",
                            "label_count_accuracy",
                        )
                    },
                    "rel_perceptual_l1": _mean([r.metrics.get("rel_perceptual_l1") for r in ok]),
                    "mse_std": _std([r.metrics["mse"] for r in ok]),
                    "steps": _mean([r.diagnostics.get("iterations") for r in won]),
                    "seconds": _mean([r.attack_seconds for r in won]),
                    "test_accuracy": point["test_accuracy"],
                    "epsilon": view_epsilon(point, mine[0].position),
                    "reasons": sorted({r.reason for r in mine if r.reason}),
                }
            )
    return rows


def threat_summary(threat_model: ThreatRecord | None) -> str:
    """``"C: labels, model, …"``: the SoK class and the flags the attack used; ``-`` if unknown."""
    if threat_model is None:
        return "-"
    return f"{threat_model.sok_class or '-'}: {', '.join(threat_model.uses)}"


def point_rows(results: RunResults) -> list[dict[str, Any]]:
    """One row per trial: its status and :func:`point_summary`."""
    return [
        {"trial": t.index, "point": short_point(t.point), "status": t.status, **point_summary(t)}
        for t in results.trials
    ]


def short_point(point: dict[str, Any]) -> str:
    """``{"defences[0].sigma": 0.1}`` → ``"sigma=0.1"``."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()) or "-"


def format_cell(value: Any, column: str) -> str:
    """``value`` of ``column`` as the summary tables print it (``-`` when missing)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        if column in ("mse", "mse_std", "delta") or "noise_std" in column:
            return f"{value:.1e}"
        if column.startswith("epsilon") or column.endswith("noise_ratio"):
            return f"{value:.3g}"
        return (
            f"{value:.1f}" if column in ("psnr", "psnr_255", "steps", "seconds") else f"{value:.3f}"
        )
    return str(value)


def columns(rows: list[dict[str, Any]]) -> dict[str, str]:
    """:data:`COLUMNS` plus each of :data:`OPTIONAL_COLUMNS` that some row has a value for."""
    shown = dict(COLUMNS)
    for key, (after, header) in OPTIONAL_COLUMNS.items():
        if any(row.get(key) is not None for row in rows):
            items = list(shown.items())
            at = [k for k, _ in items].index(after) + 1
            shown = dict([*items[:at], (key, header), *items[at:]])
    return shown


def rich_table(
    rows: list[dict[str, Any]], title: str, shown: dict[str, str] | None = None
) -> Table:
    """``rows`` as a table of ``shown`` (key → header); default: the attack summary's columns.

    The title and cells are plain text, never rich markup: they hold what users
    wrote (a scenario's name, swept values), which may contain ``[...]``.
    """
    table = Table(title=Text(title, style="table.title"))
    shown = columns(rows) if shown is None else shown
    for column, header in shown.items():
        left = column in ("point", "attack", "position", "status")
        table.add_column(header, justify="left" if left else "right", overflow="fold")
    for row in rows:
        table.add_row(*(Text(format_cell(row[c], c)) for c in shown))
    return table
