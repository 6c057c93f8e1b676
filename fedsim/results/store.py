"""The results store: append-only records, written atomically after every change.

``results.json`` always parses, whatever moment a run is interrupted at; it
holds the run's status (``running`` until the run ends: a run killed with
SIGKILL stays ``running``, with everything up to its last finished round or
record); its shape is :class:`~fedsim.results.schema.RunResults`. The store
holds those typed models and writes them with
:func:`~fedsim.results.schema.results_json`. ``metrics.csv`` is the records
flattened, one row per record. A run stopped half-way is reopened with :meth:`ResultsStore.resume`,
which keeps the trials that completed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import fedsim
from fedsim.audit.cm import ScenarioAudit
from fedsim.privacy.noise import ENGINE_NOISE, NoiseSource
from fedsim.results.environment import describe_environment
from fedsim.results.schema import (
    SCHEMA_VERSION,
    Environment,
    FailedClient,
    Measured,
    PerceptualInfo,
    Plot,
    Record,
    RoundDefences,
    RunResults,
    TrialResult,
    parse_results,
    results_json,
)

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


WORST_CASE_KEYS = ("epsilon", "delta")
"""Measurement names summarised over a round's clients by their maximum, not their mean."""


def client_summary(clients: dict[int, Measured]) -> Measured:
    """Per defence and measurement, the mean over clients (the max for
    :data:`WORST_CASE_KEYS`)."""
    summary: Measured = {}
    for index in sorted({i for measured in clients.values() for i in measured}):
        per_client = [m[index] for m in clients.values() if index in m]
        for key in sorted({k for values in per_client for k in values}):
            values = [v[key] for v in per_client if key in v]
            worst = key in WORST_CASE_KEYS
            summary.setdefault(index, {})[key] = max(values) if worst else sum(values) / len(values)
    return summary


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_results(run_dir: Path) -> RunResults:
    """``run_dir/results.json`` as :class:`~fedsim.results.schema.RunResults`.

    Raises:
        OSError: the file cannot be read; ``ValueError``: it is not JSON (or not UTF-8);
        ResultsFileError (a ``ValueError``): its schema version is newer than this
        fedsim reads, or it does not have the shape fedsim writes.
    """
    return parse_results(json.loads((run_dir / "results.json").read_text(encoding="utf-8")))


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


TrialInfo = Literal["rel_perceptual_l1", "model_start"]
"""What :meth:`ResultsStore.set_trial_info` records in a trial."""


class ResultsStore:
    """Thread-safe store of one run's results in ``run_dir`` (``data``: the whole
    ``results.json``)."""

    def __init__(
        self, run_dir: Path, scenario_name: str, engine: str, ground_truth: str, note: str
    ) -> None:
        """``engine``: ``simulation`` or ``deployment``; ``ground_truth``: the scoring
        mode (``shared-truth`` or ``on-client``), explained by ``note``."""
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self.data = RunResults(
            schema_version=SCHEMA_VERSION,
            fedsim_version=fedsim.__version__,
            environment=Environment.model_validate(describe_environment()),
            scenario=scenario_name,
            started=_now(),
            finished=None,
            status="running",
            pid=os.getpid(),
            engine=engine,
            ground_truth=ground_truth,
            ground_truth_note=note,
            client_noise=ENGINE_NOISE[engine],
            trials=[],
            records=[],
        )
        self.save()

    @classmethod
    def resume(cls, run_dir: Path) -> ResultsStore:
        """Reopen the results of an interrupted run in ``run_dir`` to finish it.

        Trials that completed are kept with their records; the others (running,
        interrupted or failed) are dropped with their records, to be run again. The
        file is rewritten in this fedsim's :data:`~fedsim.results.schema.SCHEMA_VERSION`.

        Raises:
            OSError, ValueError: as :func:`read_results`.
        """
        store = cls.__new__(cls)
        store.run_dir = run_dir
        store._lock = threading.Lock()
        data = read_results(run_dir)
        done = data.completed
        data.trials = [t for t in data.trials if t.index in done]
        data.records = [r for r in data.records if r.trial in done]
        data.schema_version = SCHEMA_VERSION
        data.status, data.finished, data.pid = "running", None, os.getpid()
        data.resumed = [*(data.resumed or []), _now()]
        store.data = data
        store.save()
        return store

    @property
    def completed(self) -> set[int]:
        """Indices of the trials that completed."""
        with self._lock:
            return self.data.completed

    @property
    def client_noise(self) -> NoiseSource:
        """Where the run's defences draw their noise from (for a file of a fedsim that
        did not record it, its engine's: ``simulation`` if that is unrecorded too)."""
        return self.data.client_noise or ENGINE_NOISE[self.data.engine or "simulation"]

    @property
    def open(self) -> bool:
        return self.data.status == "running"

    def _trial(self, index: int) -> TrialResult:
        return next(t for t in self.data.trials if t.index == index)

    def start_trial(self, index: int, point: dict[str, Any]) -> None:
        with self._lock:
            self.data.trials.append(
                TrialResult(
                    index=index,
                    point=point,
                    status="running",
                    error="",
                    accuracy={},
                    defences={},
                    client_failures=[],
                    client_sent=[],
                    started=_now(),
                )
            )
            self.data.trials.sort(key=lambda t: t.index)
            self._save()

    def set_accuracy(self, index: int, server_round: int, accuracy: float) -> None:
        with self._lock:
            if self.open:
                self._trial(index).accuracy[server_round] = accuracy
                self._save()

    def add_round_defences(
        self,
        index: int,
        server_round: int,
        clients: dict[int, Measured],
        aggregate: Measured,
    ) -> None:
        """Keep one round's defence measurements.

        ``clients`` are the round's clients' measurements: the store keeps, per
        key, their mean (their maximum for ``epsilon`` and ``delta``, the worst
        case). ``aggregate`` is what the server's aggregate defence reported.
        Written to disk with the round's accuracy, which the server records next (one
        write per round: each rewrites the whole results.json), or with whatever the
        trial records next.
        """
        summary = client_summary(clients)
        if not summary and not aggregate:
            return
        with self._lock:
            if self.open:
                self._trial(index).defences[server_round] = RoundDefences(
                    clients=summary, aggregate=aggregate
                )

    def add_client_failures(self, index: int, failures: Sequence[FailedClient]) -> None:
        """Record clients whose round failed (the round went on with the others)."""
        with self._lock:
            if self.open:
                self._trial(index).client_failures.extend(failures)
                self._save()

    def add_client_sent(self, index: int, names: set[str]) -> None:
        """Add ``names`` (records and metric keys of clients' train replies) to trial
        ``index``'s ``client_sent``, kept sorted."""
        with self._lock:
            if self.open:
                trial = self._trial(index)
                merged = sorted(set(trial.client_sent or []) | names)
                if merged != trial.client_sent:
                    trial.client_sent = merged
                    self._save()

    def set_trial_info(self, index: int, key: TrialInfo, value: dict[str, Any]) -> None:
        """Record ``value`` under ``key`` in trial ``index``: ``rel_perceptual_l1``
        (:class:`~fedsim.results.schema.PerceptualInfo`) or ``model_start`` (how the
        global model started)."""
        with self._lock:
            trial = self._trial(index)
            if key == "rel_perceptual_l1":
                trial.rel_perceptual_l1 = PerceptualInfo.model_validate(value)
            else:
                trial.model_start = value
            self._save()

    def finish_trial(self, index: int, status: str, error: str = "") -> None:
        with self._lock:
            trial = self._trial(index)
            trial.status, trial.error, trial.finished = status, error, _now()
            self._save()

    def add(self, record: Record) -> None:
        """Append ``record``; ignored once the store is closed (a run stopping)."""
        with self._lock:
            if self.open:
                self.data.records.append(record)
                self._save()

    def set_audit(self, audits: Sequence[ScenarioAudit]) -> None:
        """Keep the c(M) audits of the run's models."""
        with self._lock:
            self.data.audit = list(audits)
            self._save()

    def set_plots(self, plots: Sequence[Mapping[str, str]]) -> None:
        """List the run's PNGs as ``{"path", "title"}`` (paths relative to the run directory)."""
        listed = [Plot.model_validate(p) for p in plots]
        with self._lock:
            self.data.plots = listed
            self._save()

    def add_wall_seconds(self, seconds: float) -> None:
        """Add ``seconds`` to the run's wall time (a resumed run's adds up)."""
        with self._lock:
            self.data.wall_seconds = (self.data.wall_seconds or 0.0) + seconds

    def close(self, status: str, reason: str = "") -> None:
        """End the run with ``status``; trials still running end ``interrupted``
        with ``reason``. Later changes are ignored (a federation thread may outlive
        an interrupted run)."""
        with self._lock:
            for trial in self.data.trials:
                if trial.status == "running":
                    trial.status, trial.error, trial.finished = "interrupted", reason, _now()
            self.data.status, self.data.finished = status, _now()
            self._save()

    @property
    def records(self) -> list[Record]:
        with self._lock:
            return list(self.data.records)

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        atomic_write(self.run_dir / "results.json", results_json(self.data))
        atomic_write(self.run_dir / "metrics.csv", self._csv())

    def _csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for rec in self.data.records:
            threat = rec.threat_model
            row = {
                **rec.model_dump(),
                **rec.metrics,
                "point": json.dumps(rec.point),
                "iterations": rec.diagnostics.get("iterations"),
                "sok_class": threat.sok_class if threat else None,
                "knows": " ".join(threat.knows) if threat else "",
            }
            writer.writerow(row)
        return out.getvalue()
