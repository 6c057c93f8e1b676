"""Where a run's ClientApps execute in Flower's simulation engine, shared by its points.

Flower's engine hands each message to a *backend*. ``[simulation] backend`` picks one:

- ``threads`` (:func:`_thread_backend`): the ClientApp runs in a worker thread of this
  process, ``floor(cores / client_cpus)`` at a time. Nothing starts, nothing imports
  PyTorch again, no memory beyond the clients' models and batches.
- ``ray``: Flower's Ray actors, one process per running client. Left to itself, Flower
  starts Ray and a pool of actors in every ``run_simulation`` and shuts both down at its
  end: ~10 s and every actor importing PyTorch again, per sweep point. Here they are
  started once (:class:`_Session`), for the first point that needs them; later points
  build their backend on them (:func:`_ray_backend`) and leave them running. They are
  closed (the actors ended, Ray shut down, its logs copied to ``run_dir/ray/``) when the
  run ends, when a point needs other resources, and as soon as a point does not
  complete (a stop or a failure may leave an actor busy): the next point starts afresh.

Flower 1.42 offers no public way to hand ``run_simulation`` a backend: while a point
runs, the backend class its engine instantiates is this module's (it looks up
``flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend`` at each start).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsim.scenario import Scenario


def _ray() -> Any:
    """Ray, imported with its crash handler off: it takes SIGTERM (aborting the process)
    and leaves it at the default (killing the process) when Ray shuts down; fedsim
    handles signals itself (:mod:`fedsim.stopping`). Ray reads the switch when it is
    first imported, so this must come before any import of Ray, Flower's included."""
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's future default
    import ray

    return ray


@contextlib.contextmanager
def logs_to(logger: logging.Logger, path: Path) -> Iterator[None]:
    """Send ``logger``'s records (INFO and above) to ``path`` instead of its own
    handlers (the console, for Flower and Ray), then restore them."""
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # no record, no file
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], level, logger.propagate = saved
        logger.setLevel(level)
        handler.close()


class _NoMainThreadWarning(logging.Filter):
    """Drops Ray's warning that, started outside the main thread, it set no SIGTERM
    handler: fedsim starts it there on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "not the main thread" not in record.getMessage()


@dataclass(frozen=True)
class _Resources:
    """The engine's cores and each running client's resources."""

    cpus: int
    client: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, scenario: Scenario) -> _Resources:
        sim = scenario.simulation
        return cls(
            scenario.engine_cpus(),
            (("num_cpus", sim.client_cpus), ("num_gpus", sim.client_gpus)),
        )

    @property
    def clients_at_once(self) -> int:
        """How many clients fit the cores (at least one)."""
        return max(1, math.floor(self.cpus / dict(self.client)["num_cpus"]))


class _Session:
    """A running Ray and its pool of client actors, hosted by a thread of their own.

    Ray starts its GCS and raylet with ``PR_SET_PDEATHSIG``: the kernel kills them when
    the *thread* that started them ends. The first point's federation thread ends with
    that point, so Ray is started, and shut down, by a thread that lives as long as the
    session (not the main thread either: ``ray.init`` there would take SIGTERM from
    fedsim's own handlers).
    """

    def __init__(self, resources: _Resources, run_dir: Path) -> None:
        self.resources = resources
        self.run_dir = run_dir
        self.temp = tempfile.mkdtemp(prefix="fedsim-ray-")  # socket paths must be short
        self.pool: Any = None
        self._ready = threading.Event()
        self._end = threading.Event()
        self._failure: list[BaseException] = []
        self._host = threading.Thread(target=self._run, name="fedsim-ray", daemon=True)
        self._host.start()
        self._ready.wait()
        if self._failure:
            self._host.join()
            raise self._failure[0]

    def _run(self) -> None:
        """The host thread: start Ray and the actors, wait for :meth:`close`, end them."""
        try:
            self._start()
        except BaseException as exc:  # handed to the thread that asked for the session
            self._failure.append(exc)
            self._end.set()
        finally:
            self._ready.set()
            self._end.wait()
            self._stop()

    def _start(self) -> None:
        from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

        ray = _ray()
        quiet = _NoMainThreadWarning()
        worker_log = logging.getLogger("ray._private.worker")
        worker_log.addFilter(quiet)
        try:
            with logs_to(logging.getLogger("ray"), self.run_dir / "ray.log"):
                ray.init(
                    num_cpus=self.resources.cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    # The actors import what this process can (a model given by import path).
                    runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
                    _temp_dir=self.temp,
                )
                self.pool = BasicActorPool(ClientAppActor, dict(self.resources.client), {})
                self.pool.add_actors_to_pool(self.pool.actors_capacity)
        finally:
            worker_log.removeFilter(quiet)

    def _stop(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            ray.shutdown()
        for logs in Path(self.temp).glob("session_2*/logs"):
            shutil.copytree(logs, self.run_dir / "ray", dirs_exist_ok=True)
        shutil.rmtree(self.temp, ignore_errors=True)

    def close(self) -> None:
        """End the actors and Ray (in the host thread); keep Ray's logs in ``run_dir/ray``."""
        self._end.set()
        self._host.join()


_FLOWER_BACKEND = "RayBackend"
"""The name Flower's simulation runtime looks its backend class up by, in
``flwr.server.superlink.fleet.vce.backend.raybackend``, each time it starts."""


def _thread_backend(workers: int) -> type[Any]:
    """A Flower backend running the ClientApp in the engine's worker threads, ``workers``
    (≥ 1) messages at a time, as Flower's Ray actors do in theirs (same errors: a
    :class:`ClientAppException` for what the app raises)."""
    from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
    from flwr.server.superlink.fleet.vce.backend import Backend

    class _ThreadBackend(Backend):
        def __init__(self, backend_config: dict[str, Any]) -> None:
            self.app_fn: Callable[[], ClientApp] | None = None

        def build(self, app_fn: Callable[[], ClientApp]) -> None:
            self.app_fn = app_fn

        @property
        def num_workers(self) -> int:
            return workers

        def is_worker_idle(self) -> bool:
            return True  # each of the engine's worker threads is one

        def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
            if self.app_fn is None:
                raise RuntimeError("process_message before build")
            try:
                return self.app_fn()(message=message, context=context), context
            except LoadClientAppError:
                raise
            except Exception as exc:
                raise ClientAppException(str(exc)) from exc

        def terminate(self) -> None:
            """Nothing to end: the threads are the engine's."""

    return _ThreadBackend


def _ray_backend(session: _Session) -> type[Any]:
    """Flower's Ray backend class, bound to ``session``: no Ray start, ``session``'s
    actors, nothing ended when Flower terminates it."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    class _RuntimeBackend(RayBackend):
        def __init__(self, backend_config: dict[str, Any]) -> None:
            self.client_resources = dict(session.resources.client)
            self.actor_kwargs: dict[str, Any] = {}
            self.pool = None
            self.app_fn: Callable[[], ClientApp] | None = None

        def build(self, app_fn: Callable[[], ClientApp]) -> None:
            self.pool = session.pool
            self.app_fn = app_fn

        def terminate(self) -> None:
            """The session outlives the point: nothing to end."""

    return _RuntimeBackend


class SimulationRuntime:
    """The backend of Flower's simulation engine, shared by the sweep points of one run
    (see the module).

    Use as a context manager around the run; :meth:`point` around each
    ``run_simulation``. Not thread-safe: one point at a time.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._session: _Session | None = None

    def __enter__(self) -> SimulationRuntime:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextlib.contextmanager
    def point(self, scenario: Scenario) -> Iterator[None]:
        """Run one point's ``run_simulation`` inside, on ``scenario``'s backend: threads,
        or Ray and the actors for ``scenario``'s resources (started now if they are not
        running, or were for other resources). If the body raises, Ray is closed."""
        _ray()  # before Flower's backend module imports Ray, whichever backend runs
        from flwr.server.superlink.fleet.vce.backend import raybackend

        if scenario.simulation.backend == "threads":
            backend = _thread_backend(_Resources.of(scenario).clients_at_once)
        else:
            backend = _ray_backend(self._ray_session(_Resources.of(scenario)))
        flowers = getattr(raybackend, _FLOWER_BACKEND)
        setattr(raybackend, _FLOWER_BACKEND, backend)
        try:
            with logs_to(logging.getLogger("ray"), self.run_dir / "ray.log"):
                yield
        except BaseException:
            self.close()
            raise
        finally:
            setattr(raybackend, _FLOWER_BACKEND, flowers)

    def _ray_session(self, wanted: _Resources) -> _Session:
        if self._session is not None and self._session.resources != wanted:
            self.close()
        if self._session is None:
            self._session = _Session(wanted, self.run_dir)
        return self._session

    def close(self) -> None:
        """End the actors and Ray, if running; their logs go to ``run_dir/ray``."""
        session, self._session = self._session, None
        if session is not None:
            session.close()
