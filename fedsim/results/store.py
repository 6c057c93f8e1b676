"""The results store: append-only records, written atomically after every change.

``results.json`` always parses, whatever moment a run is interrupted at; it
holds the run's status (``running`` until the run ends: a run killed with
SIGKILL stays ``running``, with everything up to its last finished round or
record; ``pid`` is the process that wrote it), the engine and ground-truth
scoring mode, one entry per trial (sweep point) with the model's test
accuracy per round and the clients that failed, and one :class:`Record` per
attack on one upload.
``metrics.csv`` is the records flattened, one row per record.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fedsim

CSV_COLUMNS = (
    "trial",
    "point",
    "round",
    "client",
    "position",
    "attack",
    "attack_index",
    "update_kind",
    "status",
    "reason",
    "psnr",
    "ssim",
    "mse",
    "label_accuracy",
    "label_count_accuracy",
    "success",
    "psnr_peak",
    "attack_seconds",
    "iterations",
)


@dataclass
class Record:
    """One scored attack on one upload (or aggregate).

    ``metrics`` holds batch means (``psnr``, ``ssim``, ``mse``, ``label_accuracy``,
    ``psnr_peak``); ``images`` holds one entry per reconstructed image (its
    scores and the relative paths of its PNGs).
    """

    trial: int
    point: dict[str, Any]
    round: int
    client: int | None
    position: str
    attack: str
    attack_index: int
    update_kind: str
    status: str
    reason: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    defence_measurements: dict[str, float] = field(default_factory=dict)
    attack_seconds: float = 0.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by strings so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class ResultsStore:
    """Thread-safe store of one run's results in ``run_dir``."""

    def __init__(
        self, run_dir: Path, scenario_name: str, engine: str, ground_truth: str, note: str
    ) -> None:
        """``engine``: ``simulation`` or ``deployment``; ``ground_truth``: the scoring
        mode (``shared-truth`` or ``on-client``), explained by ``note``."""
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {
            "fedsim_version": fedsim.__version__,
            "scenario": scenario_name,
            "started": _now(),
            "finished": None,
            "status": "running",
            "pid": os.getpid(),
            "engine": engine,
            "ground_truth": ground_truth,
            "ground_truth_note": note,
            "trials": [],
            "records": [],
        }
        self.save()

    @property
    def open(self) -> bool:
        return self.data["status"] == "running"

    def _trial(self, index: int) -> dict[str, Any]:
        return next(t for t in self.data["trials"] if t["index"] == index)

    def start_trial(self, index: int, point: dict[str, Any]) -> None:
        with self._lock:
            self.data["trials"].append(
                {
                    "index": index,
                    "point": point,
                    "status": "running",
                    "error": "",
                    "accuracy": {},
                    "client_failures": [],
                    "started": _now(),
                }
            )
            self._save()

    def set_accuracy(self, index: int, server_round: int, accuracy: float) -> None:
        with self._lock:
            if self.open:
                self._trial(index)["accuracy"][str(server_round)] = accuracy
                self._save()

    def add_client_failures(self, index: int, failures: list[dict[str, Any]]) -> None:
        """Record clients whose round failed (the round went on with the others):
        each ``{"round", "client", "kind": "error" | "timeout", "error"}``."""
        with self._lock:
            if self.open:
                self._trial(index)["client_failures"].extend(failures)
                self._save()

    def finish_trial(self, index: int, status: str, error: str = "") -> None:
        with self._lock:
            trial = self._trial(index)
            trial.update(status=status, error=error, finished=_now())
            self._save()

    def add(self, record: Record) -> None:
        """Append ``record``; ignored once the store is closed (a run stopping)."""
        with self._lock:
            if self.open:
                self.data["records"].append(asdict(record))
                self._save()

    def close(self, status: str, reason: str = "") -> None:
        """End the run with ``status``; trials still running end ``interrupted``
        with ``reason``. Later changes are ignored (a federation thread may outlive
        an interrupted run)."""
        with self._lock:
            for trial in self.data["trials"]:
                if trial["status"] == "running":
                    trial.update(status="interrupted", error=reason, finished=_now())
            self.data.update(status=status, finished=_now())
            self._save()

    @property
    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.data["records"])

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        atomic_write(self.run_dir / "results.json", json.dumps(_json_safe(self.data), indent=1))
        atomic_write(self.run_dir / "metrics.csv", self._csv())

    def _csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for rec in self.data["records"]:
            row = {
                **rec,
                **rec["metrics"],
                "point": json.dumps(rec["point"]),
                "iterations": rec["diagnostics"].get("iterations"),
            }
            writer.writerow(row)
        return out.getvalue()
