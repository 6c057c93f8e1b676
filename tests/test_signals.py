"""How a stop request reaches a federation, without Ray: the federation runs in a
thread of its own and stops at its next step; the waiting thread gives up on it
after a second signal; the ServerApp's grid stops a wait for replies.

(A real ``fedsim run`` stopped by SIGINT and SIGTERM during each sweep point is in
``test_signal_sweep.py``.)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import fedsim.federation.runner as runner
from fedsim.federation.progress import Event, Note
from fedsim.federation.runner import FederationStopped, StoppableGrid, run_trial
from fedsim.results.store import ResultsStore
from fedsim.scenario import Trial, expand
from fedsim.stopping import Interrupted, StopRequest

TRIAL = expand({"federation": {"num_clients": 2}}, "t.toml")[0]


def signal_soon(stop: StopRequest, *signums: int, after: float = 0.2) -> None:
    """Deliver ``signums`` to ``stop`` as its handler would, ``after`` seconds apart."""

    def deliver() -> None:
        for signum in signums:
            time.sleep(after)
            stop(signum)

    threading.Thread(target=deliver, daemon=True).start()


def trial_run(stop: StopRequest, notes: list[Event] | None = None) -> None:
    """``run_trial`` of a stand-in federation (which ignores the store and directory)."""
    store = cast(ResultsStore, None)
    run_trial(TRIAL, store, Path("."), (notes if notes is not None else []).append,
              "shared-truth", stop=stop)  # fmt: skip


def test_a_federation_stops_at_its_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def federation(trial: Trial, store: Any, run_dir: Path, progress: Any, scoring: str,
                   stop: StopRequest, *_: object) -> None:  # fmt: skip
        seen.append(threading.current_thread().name)
        while not stop.requested:  # a ServerApp between steps (see StoppableGrid)
            time.sleep(0.01)
        raise FederationStopped("stop requested")

    monkeypatch.setattr(runner, "_federate", federation)
    stop, notes = StopRequest(), list[Event]()
    signal_soon(stop, signal.SIGTERM)

    with pytest.raises(Interrupted) as interrupted:
        trial_run(stop, notes)

    assert interrupted.value.signum == signal.SIGTERM
    assert seen == [f"fedsim-trial{TRIAL.index}"]  # not the thread that handles signals
    assert notes == [Note(runner.STOPPING_NOTE.format(signal="SIGTERM"))]


def test_a_second_signal_stops_waiting_for_the_federation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()

    def stuck(*_args: Any) -> None:  # e.g. a client that never answers
        release.wait(60)

    monkeypatch.setattr(runner, "_federate", stuck)
    stop = StopRequest()
    signal_soon(stop, signal.SIGINT, signal.SIGINT)
    began = time.monotonic()

    with pytest.raises(Interrupted) as interrupted:
        trial_run(stop)

    assert interrupted.value.signum == signal.SIGINT and stop.abandoned
    assert time.monotonic() - began < 10
    release.set()


def test_a_trial_that_completed_is_not_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    stop = StopRequest()
    monkeypatch.setattr(runner, "_federate", lambda *_args: stop(signal.SIGINT))

    trial_run(stop)  # the signal came as the federation ended: the trial completed

    with pytest.raises(Interrupted):  # ... and the next one does not start
        trial_run(stop)


class SilentGrid(runner.Grid):
    """A grid whose nodes never reply."""

    def __init__(self) -> None:
        self.pulls = 0

    def set_run(self, run: Any) -> None: ...

    @property
    def run(self) -> Any: ...

    def create_message(self, *args: Any, **kwargs: Any) -> Any: ...

    def get_node_ids(self) -> Iterable[int]:
        return [1]

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        self.pulls += 1
        return []

    def send_and_receive(self, *args: Any, **kwargs: Any) -> Iterable[Any]:
        raise AssertionError("the wrapper waits itself, through pull_messages")


def test_a_wait_for_replies_ends_once_a_stop_is_requested() -> None:
    silent, stop = SilentGrid(), StopRequest()
    grid = StoppableGrid(silent, stop)
    signal_soon(stop, signal.SIGTERM)

    with pytest.raises(FederationStopped):
        grid.send_and_receive([SimpleNamespace()], timeout=None)  # would wait forever
    assert silent.pulls > 0


def test_replies_come_back_as_they_arrive() -> None:
    class Replying(SilentGrid):
        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
            self.pulls += 1
            arrived = {1: ["m1"], 2: ["m0"]}.get(self.pulls, [])
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m))
                    for m in arrived if m in set(message_ids)]  # fmt: skip

    grid = StoppableGrid(Replying(), StopRequest())
    replies = grid.send_and_receive([SimpleNamespace(), SimpleNamespace()], timeout=5)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m1", "m0"]

    late = StoppableGrid(Replying(), StopRequest())
    late_replies = late.send_and_receive([SimpleNamespace(), SimpleNamespace()], timeout=0)
    assert [r.metadata.reply_to_message_id for r in late_replies] == ["m1"]  # then it timed out
