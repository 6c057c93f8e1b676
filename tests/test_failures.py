"""Failure behaviour: a client that raises or times out is recorded and the round goes
on; a run stopped with SIGINT or SIGTERM, during any sweep point, writes its results
and report and exits 130 or 143; one killed with SIGKILL leaves a valid run directory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tripwire import fingerprint

from fedsim.cli import main
from fedsim.federation.client_app import training_batch
from fedsim.scenario import expand

pytestmark = pytest.mark.slow

ROUND_TIMEOUT = 6.0
TINY = {
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "max_samples": 200},
}


def scenario_toml(raw: dict[str, Any]) -> str:
    """A scenario file for ``raw`` (plain tables, one level of nesting, [[attacks]])."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict | list)]
    for section, table in raw.items():
        if isinstance(table, dict):
            lines += [f"[{section}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    for attack in raw.get("attacks", []):
        lines += ["[[attacks]]", *(f"{k} = {value(v)}" for k, v in attack.items())]
    return "\n".join(lines) + "\n"


def test_failed_and_timed_out_clients_are_recorded_and_rounds_go_on(tmp_path: Path) -> None:
    federation = {
        "num_clients": 4,
        "clients_per_round": 4,
        "rounds": 2,
        "batch_size": 2,
        "round_timeout": ROUND_TIMEOUT,
    }
    probe = expand({**TINY, "federation": federation}, "probe")[0].scenario
    batch = {p: fingerprint(training_batch(probe, p, 1)[0]) for p in range(4)}
    assert len(set(batch.values())) == 4  # the fingerprints single out one client each
    raw = {
        **TINY,
        # Client 1 raises in round 1; client 2 stalls past the round's timeout.
        "model": {
            "name": "tripwire:Tripwire",
            "kwargs": {"fail_on": [batch[1]], "stall_on": [batch[2]], "stall_seconds": 15.0},
        },
        "federation": federation,
        # Attack client 1 or 3 in round 1: client 1 failed, so client 3.
        "attacks": [{"name": "dlg", "rounds": [1], "clients": [1, 3], "iterations": 2}],
    }
    source = tmp_path / "tripwire.toml"
    source.write_text(scenario_toml(raw), encoding="utf-8")

    assert main(["run", str(source), "--out", str(tmp_path / "run")]) == 0

    results = json.loads((tmp_path / "run" / "results.json").read_text("utf-8"))
    (trial,) = results["trials"]
    assert results["status"] == trial["status"] == "complete"
    assert set(trial["accuracy"]) == {"0", "1", "2"}
    failures = trial["client_failures"]
    assert [(f["round"], f["client"], f["kind"]) for f in failures] == [
        (1, 1, "error"),
        (1, 2, "timeout"),
    ]
    assert failures[0]["error"] == f"tripwire: batch {batch[1]} fails on purpose"
    assert failures[1]["error"] == f"no reply within {ROUND_TIMEOUT:g} s"
    assert [(r["round"], r["client"]) for r in results["records"]] == [(1, 3)]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: Ray's socket paths under it must stay short."""
    with tempfile.TemporaryDirectory(prefix="fs") as folder:
        yield Path(folder)


def child_env(tmp: Path) -> dict[str, str]:
    """The environment of a ``fedsim run`` child: temporary files under ``tmp``, and
    Flower's telemetry off (its thread runs ``file`` on the interpreter, a child process
    that would be counted among the run's own)."""
    return {**os.environ, "TMPDIR": str(tmp), "FLWR_TELEMETRY_ENABLED": "0"}


def start_long_run(
    folder: Path, backend: str
) -> tuple[subprocess.Popen[bytes], Path, list[psutil.Process]]:
    """``fedsim run`` on ``backend`` in a child process, returned once round 2 is
    recorded, with the processes it started (Ray's)."""
    raw = {
        **TINY,
        "model": {"name": "convnet", "layers": [[3, 4, 2]], "activation": "relu"},
        "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 1000},
        "simulation": {"backend": backend},
    }
    source = folder / "long.toml"
    source.write_text(scenario_toml(raw), encoding="utf-8")
    out = folder / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", str(source), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(folder),
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if (
                "2"
                in json.loads((out / "results.json").read_text("utf-8"))["trials"][0]["accuracy"]
            ):
                return child, out, psutil.Process(child.pid).children(recursive=True)
        except (OSError, ValueError, LookupError):  # not written yet, or mid-replace
            pass
        time.sleep(0.2)
    child.kill()
    raise AssertionError("the run did not reach round 2 in time")


def stop_all(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Wait for ``processes`` to end; kill and return those still alive after 30 s."""
    _, alive = psutil.wait_procs(processes, timeout=30)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)
    return alive


def read_run(out: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    results = json.loads((out / "results.json").read_text("utf-8"))
    with (out / "metrics.csv").open(encoding="utf-8", newline="") as fh:
        return results, list(csv.DictReader(fh))


def test_sigterm_ends_the_run_as_interrupted(short_tmp: Path) -> None:
    child, out, ray_processes = start_long_run(short_tmp, "ray")
    assert ray_processes  # Ray's helpers and the client actors

    child.send_signal(signal.SIGTERM)
    code = child.wait(timeout=60)
    leftovers = stop_all(ray_processes)

    results, rows = read_run(out)
    (trial,) = results["trials"]
    assert code == 128 + signal.SIGTERM
    assert results["status"] == trial["status"] == "interrupted"
    assert "SIGTERM" in trial["error"]
    assert results["finished"] is not None
    assert {"0", "1", "2"} <= set(trial["accuracy"])
    assert rows == []  # no attacks configured: the CSV is just its header
    assert leftovers == []  # Ray was shut down with the run
    assert (out / "ray" / "raylet.out").is_file()  # its logs were kept
    assert not list(short_tmp.glob("fedsim-ray-*"))


def test_sigkill_leaves_valid_results_marked_running(short_tmp: Path) -> None:
    child, out, ray_processes = start_long_run(short_tmp, "threads")
    assert ray_processes == []  # the clients run in the process's threads

    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    results, _ = read_run(out)
    # Nothing could be written at the kill: the file parses and holds every round that
    # finished before it; "running" with no process left means the run was killed.
    assert results["status"] == results["trials"][0]["status"] == "running"
    assert results["finished"] is None
    assert results["pid"] == child.pid and not psutil.pid_exists(child.pid)
    assert {"0", "1", "2"} <= set(results["trials"][0]["accuracy"])


SWEEP = {
    **TINY,
    "model": {"name": "convnet", "layers": [[3, 4, 2]], "activation": "tanh"},
    "federation": {"num_clients": 2, "clients_per_round": 1, "rounds": 1},
    "attacks": [{"name": "dlg", "iterations": [1, 2, 3]}],  # three sweep points
}


def wait_for_point(child: subprocess.Popen[bytes], out: Path, index: int, federating: bool) -> None:
    """Return once point ``index`` is running in ``child`` (its federation starting), or
    with ``federating`` its federation under way (the initial model evaluated)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        try:
            trials = json.loads((out / "results.json").read_text("utf-8"))["trials"]
            trial = next(t for t in trials if t["index"] == index)
            if trial["status"] == "running" and (not federating or "0" in trial["accuracy"]):
                return
        except (OSError, ValueError, LookupError, StopIteration):  # not there yet
            pass
        time.sleep(0.05)
    child.kill()
    raise AssertionError(f"point {index + 1} did not start in time")


def test_a_signal_during_any_sweep_point_stops_the_run_cleanly(short_tmp: Path) -> None:
    """SIGINT and SIGTERM during points 1, 2 and 3, each in the process's first or
    second point, as it starts or as it federates (ClientApps in threads, the default):
    the exit status is 128 + the signal, the results say which points completed and
    which was interrupted, the outputs are written, no process is left, and resuming
    goes on from there."""
    source = short_tmp / "sweep.toml"
    source.write_text(scenario_toml(SWEEP), encoding="utf-8")
    out = short_tmp / "run"
    # (point, signal, during its federation?): the first run stops at point 1; each
    # resume runs the interrupted point again, then is stopped during the next.
    steps = [(0, signal.SIGINT, True), (1, signal.SIGTERM, False), (2, signal.SIGTERM, True)]
    for step, (index, signum, federating) in enumerate(steps):
        where = ["--out", str(out)] if step == 0 else ["--resume", str(out)]
        child = subprocess.Popen(
            [sys.executable, "-m", "fedsim.cli", "run", str(source), *where],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(short_tmp),
        )
        wait_for_point(child, out, index, federating)
        assert psutil.Process(child.pid).children(recursive=True) == []
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=120)

        assert child.returncode == 128 + signum, stderr.decode()
        assert b"Traceback" not in stderr and b"Error" not in stderr, stderr.decode()
        results, rows = read_run(out)
        assert results["status"] == "interrupted" and results["finished"] is not None
        assert [(t["index"], t["status"]) for t in results["trials"]] == [
            *((i, "complete") for i in range(index)),
            (index, "interrupted"),
        ]
        name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"
        assert results["trials"][index]["error"] == f"stopped by {name}"
        # every completed point's records and rounds (the stopped one's, if any, besides)
        assert {int(r["trial"]) for r in rows} - {index} == set(range(index))
        with (out / "rounds.csv").open(encoding="utf-8", newline="") as fh:
            assert {int(r["trial"]) for r in csv.DictReader(fh)} - {index} == set(range(index))
        assert (out / "report.html").is_file() and (out / "sweep.csv").is_file()
        assert all((out / plot["path"]).is_file() for plot in results["plots"])
