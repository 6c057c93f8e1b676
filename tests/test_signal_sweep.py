"""A real ``fedsim run`` in a child process stopped by SIGINT and SIGTERM during each of
its sweep points, as a point starts or as it federates: the exit status, the results of
the completed and the interrupted points, the outputs, no process left, and a resume
that goes on from there."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from run_helpers import TINY, child_env, read_run, scenario_toml

pytestmark = pytest.mark.slow

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
