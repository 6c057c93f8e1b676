"""Run one trial (sweep point) as a real federation in Flower's simulation engine.

The engine gets one node per client of a round (``clients_per_round``): nodes
are stand-ins, and each message names the client (partition) to act as, so a
scenario with many clients costs no more memory or start-up than a small one.
Ray runs the ClientApps with the resources of ``[simulation]``; Flower's log
goes to ``flower.log`` and Ray's to ``ray.log`` and ``ray/trial<i>/`` in the
run directory, keeping the console to fedsim's own progress display.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp import Grid, ServerApp

from fedsim.federation.client_app import make_client_app
from fedsim.federation.nodes import SimulatedNodes
from fedsim.federation.observer import Progress
from fedsim.federation.scoring import ScoringMode
from fedsim.federation.server_app import run_federation
from fedsim.results.store import ResultsStore
from fedsim.scenario import Scenario, ScenarioError, Trial


def ray_cpus(scenario: Scenario) -> int:
    """CPU cores Ray may use: ``simulation.cpus``, else all cores but no more
    than the round's clients can use at once."""
    sim = scenario.simulation
    if sim.cpus is not None:
        return sim.cpus
    wanted = math.ceil(scenario.federation.clients_per_round * sim.client_cpus)
    return max(1, min(os.cpu_count() or 1, wanted))


def check_resources(scenario: Scenario, source: str) -> None:
    """Raise a one-line :class:`ScenarioError` if no client could be scheduled."""
    sim = scenario.simulation
    if sim.client_cpus > ray_cpus(scenario):
        raise ScenarioError(
            source,
            ("simulation", "client_cpus"),
            f"{sim.client_cpus:g} exceeds the {ray_cpus(scenario)} CPU cores Ray may use",
        )
    gpus = torch.cuda.device_count()
    if sim.client_gpus > gpus:
        raise ScenarioError(
            source,
            ("simulation", "client_gpus"),
            f"{sim.client_gpus:g} GPUs per client, but {gpus} CUDA GPUs are visible",
        )


def backend_config(scenario: Scenario) -> dict[str, Any]:
    """Flower's backend config: each client's resources from ``[simulation]``."""
    sim = scenario.simulation
    return {"client_resources": {"num_cpus": sim.client_cpus, "num_gpus": sim.client_gpus}}


@contextlib.contextmanager
def logs_to(logger: logging.Logger, path: Path) -> Iterator[None]:
    """Send ``logger``'s records (INFO and above) to ``path`` instead of its own
    handlers (the console, for Flower and Ray), then restore them."""
    handler = logging.FileHandler(path, encoding="utf-8")
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


@contextlib.contextmanager
def ray_session(scenario: Scenario, run_dir: Path, trial: int) -> Iterator[None]:
    """Start Ray for one trial (Flower's backend then uses it): ``ray_cpus`` cores,
    workers' output off the console, its files in a short-lived directory (socket
    paths must be short). Afterwards Ray is shut down and its logs are copied to
    ``run_dir/ray/trial<i>``.

    Ray replaces the process's SIGTERM handler with one that aborts; the previous
    handler is put back, so that SIGTERM still ends a run cleanly.
    """
    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's future default
    temp = tempfile.mkdtemp(prefix="fedsim-ray-")
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with logs_to(logging.getLogger("ray"), run_dir / "ray.log"):
            ray.init(
                num_cpus=ray_cpus(scenario),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                # Ray's workers import what this process can (a model given by import path).
                runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
                _temp_dir=temp,
            )
            if sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, sigterm)
            yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for logs in Path(temp).glob("session_2*/logs"):
            shutil.copytree(logs, run_dir / "ray" / f"trial{trial}", dirs_exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)


def run_trial(
    trial: Trial, store: ResultsStore, run_dir: Path, progress: Progress, scoring: ScoringMode
) -> None:
    """Run ``trial``'s federation; attacks and scores land in ``store`` as rounds finish."""
    from flwr.simulation import run_simulation

    scenario = trial.scenario
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, _context: Context) -> None:
        nodes = SimulatedNodes(scenario.federation.round_timeout)
        run_federation(grid, trial, store, run_dir, nodes, scoring, progress)

    with (
        logs_to(FLOWER_LOGGER, run_dir / "flower.log"),
        ray_session(scenario, run_dir, trial.index),
    ):
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(simulated=True),
            num_supernodes=scenario.federation.clients_per_round,
            backend_config=backend_config(scenario),  # type: ignore[arg-type]
        )
