"""The deployment engine's ServerApp: every sweep point of the run config's scenario,
written to the same run directory as ``fedsim run`` (see :mod:`fedsim.deployment`)."""

from __future__ import annotations

import io
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedsim.federation.nodes import DeployedNodes
from fedsim.federation.progress import Event
from fedsim.federation.scoring import ScoringMode
from fedsim.federation.server_app import run_federation
from fedsim.results.table import rich_table
from fedsim.run import finish_run, prepare_run, run_trials
from fedsim.scenario import Trial

SCORING: ScoringMode = "on-client"


def _run_config_path(context: Context, key: str) -> Path | None:
    value = context.run_config.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"run config {key!r} must be a string path, got {value!r}")
    return Path(value) if value else None


def _say(message: str) -> None:
    log(INFO, "fedsim: %s", message)


def _progress(event: Event) -> None:
    _say(event.text)


def _main(grid: Grid, context: Context) -> None:
    scenario = _run_config_path(context, "scenario")
    if scenario is None:
        raise ValueError("run config 'scenario' is empty: give the scenario file's path")
    run = prepare_run(scenario, [], _run_config_path(context, "run-dir"), "deployment", SCORING)
    _say(f"run directory {run.run_dir.resolve()}")

    def one(trial: Trial) -> None:
        _say(f"point {trial.index + 1}/{len(run.trials)}: {trial.point or 'no sweep'}")
        fed = trial.scenario.federation
        nodes = DeployedNodes(fed.num_clients, fed.round_timeout)
        run_federation(grid, trial, run.store, run.run_dir, nodes, SCORING, _progress)

    def failed(trial: Trial, error: str) -> None:
        log(ERROR, "fedsim: point %d failed: %s", trial.index + 1, error)

    status, reason = "interrupted", "the ServerApp was stopped"
    try:
        status, reason = run_trials(run, one, failed), ""
    finally:
        rows = finish_run(run, status, reason, _say)
        table = io.StringIO()
        Console(file=table, width=120).print(rich_table(rows, title=f"{status}"))
        _say(f"{status}; results in {run.run_dir.resolve()}\n{table.getvalue()}")


server_app = ServerApp()
server_app.main()(_main)
