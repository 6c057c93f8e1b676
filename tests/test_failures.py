"""Failure behaviour: a client that raises or times out is recorded and the round goes
on; a run stopped with SIGTERM writes its results and exits 143, Ray shut down with it;
one killed with SIGKILL leaves a valid run directory. (SIGINT and SIGTERM during each
sweep point: ``test_signal_sweep.py``.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from run_helpers import TINY, child_env, read_run, scenario_toml
from tripwire import fingerprint

from fedsim.cli import main
from fedsim.federation.client_app import training_batch
from fedsim.scenario import expand

pytestmark = pytest.mark.slow

ROUND_TIMEOUT = 6.0


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
