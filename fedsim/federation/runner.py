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
import tempfile
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


def backend_config(scenario: Scenario, temp_dir: str) -> dict[str, Any]:
    """Ray settings from ``[simulation]``; Ray's files under ``temp_dir``, its
    workers' output off the console."""
    sim = scenario.simulation
    return {
        "client_resources": {"num_cpus": sim.client_cpus, "num_gpus": sim.client_gpus},
        "init_args": {
            "num_cpus": ray_cpus(scenario),
            "log_to_driver": False,
            "configure_logging": False,
            "_temp_dir": temp_dir,
        },
    }


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
def ray_session(run_dir: Path, trial: int) -> Iterator[str]:
    """A short-lived directory for Ray's session (its socket paths must be short);
    afterwards Ray is shut down and its logs are copied to ``run_dir/ray/trial<i>``."""
    import ray

    temp = tempfile.mkdtemp(prefix="fedsim-ray-")
    try:
        with logs_to(logging.getLogger("ray"), run_dir / "ray.log"):
            yield temp
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

    with logs_to(FLOWER_LOGGER, run_dir / "flower.log"), ray_session(run_dir, trial.index) as temp:
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(simulated=True),
            num_supernodes=scenario.federation.clients_per_round,
            backend_config=backend_config(scenario, temp),  # type: ignore[arg-type]
        )
