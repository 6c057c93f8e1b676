"""Run one trial (sweep point) as a real federation in Flower's simulation engine."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import FLOWER_LOGGER, console_handler

from fedsim.federation.client_app import make_client_app
from fedsim.federation.observer import AttackTap, Progress
from fedsim.federation.server_app import make_server_app
from fedsim.federation.setup import federated_data, model_factory, resolve_device
from fedsim.results.store import ResultsStore
from fedsim.scenario import Scenario, Trial


@dataclass(frozen=True)
class FixedScenario:
    """Scenario source for simulation: the same scenario for every context (picklable)."""

    scenario: Scenario

    def __call__(self, _context: Context) -> Scenario:
        return self.scenario


def backend_config(scenario: Scenario) -> dict[str, Any]:
    """Ray settings: one CPU per client, Ray's own output kept off the console."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": max(1, min(os.cpu_count() or 1, scenario.federation.clients_per_round)),
            "logging_level": logging.ERROR,
            "log_to_driver": False,
            "configure_logging": True,
        },
    }


@contextlib.contextmanager
def flower_logs_to(path: Path) -> Iterator[None]:
    """Send Flower's log to ``path``; keep only its errors on the console."""
    quiet = logging.Filter()
    quiet.filter = lambda record: record.levelno >= logging.ERROR  # type: ignore[method-assign]
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console_handler.addFilter(quiet)
    FLOWER_LOGGER.addHandler(handler)
    try:
        yield
    finally:
        FLOWER_LOGGER.removeHandler(handler)
        console_handler.removeFilter(quiet)
        handler.close()


def run_trial(trial: Trial, store: ResultsStore, run_dir: Path, progress: Progress) -> None:
    """Run ``trial``'s federation; attacks and scores land in ``store`` as rounds finish."""
    from flwr.simulation import run_simulation

    scenario = trial.scenario
    data = federated_data(scenario)
    factory = model_factory(scenario, data)
    tap = AttackTap(trial, data, factory, store, run_dir, resolve_device(scenario.device), progress)

    def on_accuracy(server_round: int, accuracy: float) -> None:
        store.set_accuracy(trial.index, server_round, accuracy)
        if server_round:
            progress(
                f"round {server_round}/{scenario.federation.rounds} done, "
                f"test accuracy {accuracy:.3f}"
            )

    server_app = make_server_app(
        scenario_source=lambda _ctx: scenario,
        tap_source=lambda _ctx: tap,
        on_accuracy=on_accuracy,
        on_failures=lambda rnd, errors: store.add_client_failures(trial.index, rnd, errors),
        share_truth=True,
    )
    with flower_logs_to(run_dir / "flower.log"):
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(FixedScenario(scenario)),
            num_supernodes=scenario.federation.num_clients,
            backend_config=backend_config(scenario),  # type: ignore[arg-type]
        )
