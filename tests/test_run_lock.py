"""One process per run directory: a run holds its directory's lock while it is open,
so ``--resume`` of a live run, or a second resume, is refused with one line; the
lock goes with its process, however that ends.

The federation is replaced by a stand-in (``runner.run_trial``) so that a "live"
run is this test's own call stack.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import fedsim.federation.runner as runner
from fedsim.cli import main
from fedsim.results.run_lock import LOCK_FILE, RunDirectoryInUse, RunLock
from fedsim.run import RunError, run_scenario
from fedsim.scenario import Trial

SCENARIO = """\
name = "lock"
[data]
dataset = "digits"
image_size = 8
max_samples = 200
[model]
name = "convnet"
layers = [[3, 4, 2]]
[federation]
num_clients = 2
rounds = [1, 2]
"""


def in_use(run_dir: Path, pid: int) -> str:
    return f"run directory {run_dir} is in use by another fedsim process (pid {pid})"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "lock.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


def run(source: Path, **kw: Any) -> tuple[Path, str]:
    return run_scenario(source, [], kw.pop("out", None), Console(quiet=True), **kw)


def interrupted_run(source: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run directory whose second point was stopped (as by Ctrl-C)."""

    def stop_at_second(trial: Trial, *_args: Any) -> None:
        if trial.index == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_trial", stop_at_second)
    run_dir, status = run(source, out=out)
    assert status == "interrupted"
    return run_dir


def test_resume_of_a_live_run_is_refused(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original run, and a resume, each hold the lock while their points run."""
    refusals: list[str] = []

    def resume_meanwhile(trial: Trial, store: Any, run_dir: Path, *_args: Any) -> None:
        with pytest.raises(RunError) as refused:
            run(source, resume=run_dir)
        refusals.append(str(refused.value))

    monkeypatch.setattr(runner, "run_trial", resume_meanwhile)
    run_dir, status = run(source, out=tmp_path / "run")  # each point tries a resume
    assert status == "complete"
    assert refusals == [in_use(run_dir, os.getpid())] * 2

    stopped = interrupted_run(source, tmp_path / "stopped", monkeypatch)
    monkeypatch.setattr(runner, "run_trial", resume_meanwhile)
    assert run(source, resume=stopped) == (stopped, "complete")  # a resume holds it too
    assert refusals[2:] == [in_use(stopped, os.getpid())]


def test_the_refusal_is_one_line_and_exit_2(
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = interrupted_run(source, tmp_path / "run", monkeypatch)
    before = (run_dir / "results.json").read_bytes()
    holder = RunLock.acquire(run_dir)
    try:
        assert main(["run", str(source), "--resume", str(run_dir)]) == 2
    finally:
        holder.release()
    assert capsys.readouterr().err == f"fedsim: {in_use(run_dir, os.getpid())}\n"
    assert (run_dir / "results.json").read_bytes() == before  # left as it was

    monkeypatch.setattr(runner, "run_trial", lambda *_args: None)
    assert run(source, resume=run_dir) == (run_dir, "complete")  # released: it resumes


def test_the_lock_goes_with_its_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from fedsim.results.run_lock import RunLock;"
         "lock = RunLock.acquire(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)",
         str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"

    with pytest.raises(RunDirectoryInUse) as refused:
        RunLock.acquire(tmp_path)
    assert str(refused.value) == in_use(tmp_path, holder.pid)

    holder.send_signal(signal.SIGKILL)  # no chance to unlock: the system does
    holder.wait(timeout=30)
    RunLock.acquire(tmp_path).release()
    assert (tmp_path / LOCK_FILE).read_text(encoding="utf-8") == f"{os.getpid()}\n"
