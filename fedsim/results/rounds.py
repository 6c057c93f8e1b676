"""Leakage per round: ``rounds.csv``, one row per (sweep point, round, attack) with the
attack's mean leakage over that round's scored records and the model's test
accuracy after that round."""

from __future__ import annotations

import csv
import io
from typing import Any

from fedsim.results.schema import Record, RunResults
from fedsim.results.sweep import mean_std

LEAKAGE = ("psnr", "ssim", "success", "label_accuracy", "label_count_accuracy")
"""The record metrics averaged per round (dB, [0, 1], and fractions in [0, 1])."""
ROUND_COLUMNS = ("trial", "round", "test_accuracy", "attack_index", "attack", "position",
                 "records", *LEAKAGE)  # fmt: skip


def _mean(values: list[Any]) -> float | None:
    stats = mean_std(values)
    return None if stats is None else stats[0]


def round_rows(results: RunResults) -> list[dict[str, Any]]:
    """The rows of ``rounds.csv``: per (trial, round, attack) the mean of each of
    :data:`LEAKAGE` over the scored records of that round (``None`` when no record has
    it), and the test accuracy after the round."""
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


def rounds_csv(rows: list[dict[str, Any]]) -> str:
    """``rounds.csv``'s text: a header, then ``rows`` (:func:`round_rows`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROUND_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row[c] is None else row[c] for c in ROUND_COLUMNS})
    return out.getvalue()
