"""The results store: append-only records, written atomically after every change.

``results.json`` always parses, whatever moment a run is interrupted at; it
holds the run's status (``running`` until the run ends: a run killed with
SIGKILL stays ``running``, with everything up to its last finished round or
record; ``pid`` is the process that wrote it), the engine, the ground-truth
scoring mode, where the defences drew their noise from (``client_noise``:
``seeded`` or ``os-entropy``, for the clients' and the server's defences alike), one
entry per trial (sweep point) with the model's test accuracy, the defences'
measurements per round, the clients that failed and the names of what the
clients' replies carried (``client_sent``), and one :class:`Record` per
attack on one upload. ``metrics.csv`` is the records flattened, one row per
record. A run stopped half-way is reopened with :meth:`ResultsStore.resume`,
which keeps the trials that completed.
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
from fedsim.privacy.noise import ENGINE_NOISE
from fedsim.results.environment import describe_environment

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
    "rel_perceptual_l1",
    "mse",
    "label_accuracy",
    "label_count_accuracy",
    "success",
    "psnr_peak",
    "psnr_255",
    "attack_seconds",
    "iterations",
    "sok_class",
    "knows",
)


@dataclass
class Record:
    """One scored attack on one upload (or aggregate).

    ``metrics`` holds batch means (``psnr``, ``ssim``, ``mse``, ``label_accuracy``,
    ``psnr_peak``, and ``rel_perceptual_l1`` when ``[metrics.perceptual]`` is set:
    ``None`` if unavailable, the trial says why); ``images`` holds one entry per
    reconstructed image (its scores and the relative paths of its PNGs).
    ``threat_model`` is :func:`fedsim.threat.threat_model_record` of the attacker.
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
    threat_model: dict[str, Any] = field(default_factory=dict)


WORST_CASE_KEYS = ("epsilon", "delta")
"""Measurement names summarised over a round's clients by their maximum, not their mean."""


def client_summary(clients: dict[int, dict[str, float]]) -> dict[str, float]:
    """Per measurement key, the mean over clients (the max for :data:`WORST_CASE_KEYS`)."""
    keys = sorted({k for measured in clients.values() for k in measured})
    summary = {}
    for key in keys:
        values = [m[key] for m in clients.values() if key in m]
        worst = key.rsplit(".", 1)[-1] in WORST_CASE_KEYS
        summary[key] = max(values) if worst else sum(values) / len(values)
    return summary


def store_completed(data: dict[str, Any]) -> set[int]:
    """Indices of the completed trials in a results dict."""
    return {t["index"] for t in data["trials"] if t["status"] == "complete"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _from_json_safe(value: Any) -> Any:
    """Undo :func:`_json_safe`: the strings ``inf``, ``-inf`` and ``nan`` become floats."""
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    if isinstance(value, dict):
        return {k: _from_json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json_safe(v) for v in value]
    return value


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by strings so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def read_results(run_dir: Path) -> dict[str, Any]:
    """``run_dir/results.json`` with its non-finite numbers restored as floats.

    Raises:
        OSError: the file cannot be read; ``ValueError``: it is not JSON.
    """
    return _from_json_safe(json.loads((run_dir / "results.json").read_text(encoding="utf-8")))


def is_results_file(data: Any) -> bool:
    """Whether ``data`` (a parsed ``results.json``) has the outer shape fedsim writes:
    a table whose ``trials`` and ``records`` are arrays."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("trials"), list)
        and isinstance(data.get("records"), list)
    )


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
            "environment": describe_environment(),
            "scenario": scenario_name,
            "started": _now(),
            "finished": None,
            "status": "running",
            "pid": os.getpid(),
            "engine": engine,
            "ground_truth": ground_truth,
            "ground_truth_note": note,
            "client_noise": ENGINE_NOISE[engine],
            "trials": [],
            "records": [],
        }
        self.save()

    @classmethod
    def resume(cls, run_dir: Path) -> ResultsStore:
        """Reopen the results of an interrupted run in ``run_dir`` to finish it.

        Trials that completed are kept with their records; the others (running,
        interrupted or failed) are dropped with their records, to be run again.
        """
        store = cls.__new__(cls)
        store.run_dir = run_dir
        store._lock = threading.Lock()
        data = read_results(run_dir)
        done = store_completed(data)
        data["trials"] = [t for t in data["trials"] if t["index"] in done]
        data["records"] = [r for r in data["records"] if r["trial"] in done]
        data.update(status="running", finished=None, pid=os.getpid())
        data.setdefault("resumed", []).append(_now())
        store.data = data
        store.save()
        return store

    @property
    def completed(self) -> set[int]:
        """Indices of the trials that completed."""
        with self._lock:
            return store_completed(self.data)

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
                    "defences": {},
                    "client_failures": [],
                    "client_sent": [],
                    "started": _now(),
                }
            )
            self.data["trials"].sort(key=lambda t: t["index"])
            self._save()

    def set_accuracy(self, index: int, server_round: int, accuracy: float) -> None:
        with self._lock:
            if self.open:
                self._trial(index)["accuracy"][str(server_round)] = accuracy
                self._save()

    def add_round_defences(
        self,
        index: int,
        server_round: int,
        clients: dict[int, dict[str, float]],
        aggregate: dict[str, float],
    ) -> None:
        """Keep one round's defence measurements (keys ``defence<i>.<name>``).

        ``clients`` are the round's clients' measurements: the store keeps, per
        key, their mean (their maximum for ``epsilon`` and ``delta``, the worst
        case). ``aggregate`` is what the server's aggregate defence reported.
        """
        summary = client_summary(clients)
        if not summary and not aggregate:
            return
        with self._lock:
            if self.open:
                self._trial(index)["defences"][str(server_round)] = {
                    "clients": summary,
                    "aggregate": aggregate,
                }
                self._save()

    def add_client_failures(self, index: int, failures: list[dict[str, Any]]) -> None:
        """Record clients whose round failed (the round went on with the others):
        each ``{"round", "client", "kind": "error" | "timeout", "error"}``."""
        with self._lock:
            if self.open:
                self._trial(index)["client_failures"].extend(failures)
                self._save()

    def add_client_sent(self, index: int, names: set[str]) -> None:
        """Add ``names`` (records and metric keys of clients' train replies) to trial
        ``index``'s ``client_sent``, kept sorted."""
        with self._lock:
            if self.open:
                trial = self._trial(index)
                merged = sorted(set(trial["client_sent"]) | names)
                if merged != trial["client_sent"]:
                    trial["client_sent"] = merged
                    self._save()

    def set_trial_info(self, index: int, key: str, value: Any) -> None:
        """Record ``value`` under ``key`` in trial ``index`` (e.g. an optional metric's status)."""
        with self._lock:
            self._trial(index)[key] = value
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

    def set_plots(self, plots: list[dict[str, str]]) -> None:
        """List the run's PNGs as ``{"path", "title"}`` (paths relative to the run directory)."""
        with self._lock:
            self.data["plots"] = plots
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
                "sok_class": rec.get("threat_model", {}).get("sok_class"),
                "knows": " ".join(rec.get("threat_model", {}).get("knows", [])),
            }
            writer.writerow(row)
        return out.getvalue()
