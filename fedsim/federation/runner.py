"""Run one trial (sweep point) as a real federation in Flower's simulation engine.

The engine gets one node per client of a round (``clients_per_round``): nodes
are stand-ins, and each message names the client (partition) to act as, so a
scenario with many clients costs no more memory or start-up than a small one.
The ClientApps run on ``[simulation]``'s backend (threads of this process, or Ray's
actors started once for a run's points: :mod:`fedsim.federation.runtime`); Flower's
log goes to ``flower.log`` and Ray's, if used, to ``ray.log`` and ``ray/`` in the run
directory, keeping the console to fedsim's own progress display.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.logger import FLOWER_LOGGER
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid, ServerApp

from fedsim.federation.client_app import make_client_app
from fedsim.federation.nodes import PULL_INTERVAL, DelegatingGrid, SimulatedNodes
from fedsim.federation.progress import Event, Note, Progress
from fedsim.federation.runtime import SimulationRuntime, logs_to
from fedsim.federation.scoring import ScoringMode
from fedsim.federation.server_app import run_federation
from fedsim.results.store import ResultsStore
from fedsim.scenario import Trial
from fedsim.stopping import REQUEST, StopRequest, describe


class FederationStopped(Exception):
    """Raised in the ServerApp once a stop is requested: Flower then ends the
    simulation in order (its workers stop, then Ray is shut down)."""


def _check(stop: StopRequest) -> None:
    if stop.requested:
        raise FederationStopped(f"stop requested ({describe(stop.signum)})")


class StoppableGrid(DelegatingGrid):
    """The ServerApp's ``grid``, raising :class:`FederationStopped` at every call that
    looks for nodes or replies once ``stop`` is requested, so that a ServerApp
    waiting for its clients stops within :data:`~fedsim.federation.nodes.PULL_INTERVAL`
    seconds. Otherwise it is ``grid``."""

    def __init__(self, grid: Grid, stop: StopRequest) -> None:
        super().__init__(grid)
        self._stop = stop

    def get_node_ids(self) -> Iterable[int]:
        _check(self._stop)
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        _check(self._stop)
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        _check(self._stop)
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        _check(self._stop)
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's contract: the replies in the order they arrive, once all have
        or ``timeout`` seconds have passed (``None``: no limit)."""
        pending = set(self.push_messages(messages))
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            arrived = list(self.pull_messages(pending))
            replies += arrived
            pending -= {m.metadata.reply_to_message_id for m in arrived}
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(PULL_INTERVAL)
        return replies


def _federate(
    trial: Trial,
    store: ResultsStore,
    run_dir: Path,
    progress: Progress,
    scoring: ScoringMode,
    stop: StopRequest,
    runtime: SimulationRuntime,
) -> None:
    """Run ``trial``'s federation in Flower's simulation engine on ``runtime``, in this
    thread (where Ray starts, if it does: not the main thread, whose signal handlers
    stay fedsim's)."""
    from flwr.simulation import run_simulation

    scenario = trial.scenario
    server_app = ServerApp()

    def note(event: Event) -> None:
        _check(stop)
        progress(event)

    @server_app.main()
    def main(grid: Grid, _context: Context) -> None:
        nodes = SimulatedNodes(scenario.federation.round_timeout)
        run_federation(StoppableGrid(grid, stop), trial, store, run_dir, nodes, scoring, note)

    with logs_to(FLOWER_LOGGER, run_dir / "flower.log"), runtime.point(scenario):
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(simulated=True),
            num_supernodes=scenario.federation.clients_per_round,
        )


JOIN_INTERVAL = 0.1
"""Seconds between the waiting thread's checks for a second signal."""
STOPPING_NOTE = (
    "{signal}: stopping once the current step ends (Ray is shut down in order); "
    "signal again to stop at once"
)


def run_trial(
    trial: Trial,
    store: ResultsStore,
    run_dir: Path,
    progress: Progress,
    scoring: ScoringMode,
    runtime: SimulationRuntime | None = None,
    stop: StopRequest = REQUEST,
) -> None:
    """Run ``trial``'s federation; attacks and scores land in ``store`` as rounds finish.

    The engine's backend is ``runtime``'s, shared with the run's other points
    (:mod:`fedsim.federation.runtime`); without one it is set up for this trial and
    closed after it.

    The federation (Flower's engine, the ServerApp, Ray if used) runs in a thread of
    its own: the calling thread, where signal handlers run, only waits, so a
    signal never lands inside Ray or Flower. Once ``stop`` is requested the
    ServerApp stops at its next step (a poll for replies, a progress note; an
    attack or a client's training under way finishes first), Flower stops its
    workers in order, and :class:`~fedsim.stopping.Interrupted` is raised.
    If ``stop`` is abandoned (a second signal) it is raised at once, and the
    federation's thread is left running (the process must end with ``os._exit``).

    Raises:
        Interrupted: a stop was requested before the trial completed.
        Exception: what ended the federation otherwise (the trial failed).
    """
    if stop.requested:
        raise stop.interrupted()
    failure: list[BaseException] = []

    def federate() -> None:
        try:
            with contextlib.ExitStack() as own:
                shared = runtime or own.enter_context(SimulationRuntime(run_dir))
                _federate(trial, store, run_dir, progress, scoring, stop, shared)
        except BaseException as exc:  # handed over to the waiting thread
            failure.append(exc)

    thread = threading.Thread(target=federate, name=f"fedsim-trial{trial.index}", daemon=True)
    thread.start()
    told = False
    while thread.is_alive() and not stop.abandoned:
        thread.join(JOIN_INTERVAL)
        if stop.requested and not told:
            progress(Note(STOPPING_NOTE.format(signal=describe(stop.signum))))
            told = True
    if stop.requested and (failure or thread.is_alive()):
        raise stop.interrupted()
    if failure:
        raise failure[0]
