"""``fedsim run``: from a scenario file to a run directory.

Order of work: validate every sweep point (nothing is written if one is
invalid), check that data and model load, create a fresh run directory, then
run one federation per sweep point while a progress display shows rounds and
attacks. ``results.json`` is rewritten atomically after every record, so an
interrupted run leaves valid results for what finished.

:func:`prepare_run`, :func:`run_trials` and :func:`finish_run` are shared with
the deployment engine's ServerApp (``fedsim.federation.deployment``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedsim.data.datasets import DataError
from fedsim.federation.scoring import GROUND_TRUTH_NOTES, ScoringMode
from fedsim.federation.setup import federated_data, model_factory
from fedsim.results.images import save_grid
from fedsim.results.plots import save_loss_curves
from fedsim.results.store import ResultsStore
from fedsim.results.table import rich_table, short_point, summarise
from fedsim.scenario import ScenarioError, Trial, load

MAX_GRID_ROWS = 40

Engine = Literal["simulation", "deployment"]


class RunError(Exception):
    """The run cannot start; the message is one line for the user."""


def preflight(trials: list[Trial], source: str) -> None:
    """Load each distinct data split and build the model once, so that errors come
    before any directory is created."""
    seen: set[str] = set()
    for trial in trials:
        scenario = trial.scenario
        key = (
            scenario.data.model_dump_json()
            + scenario.model.model_dump_json()
            + str((scenario.federation.num_clients, scenario.seed))
        )
        if key in seen:
            continue
        seen.add(key)
        try:
            data = federated_data(scenario)
        except (DataError, ValueError) as exc:
            raise ScenarioError(source, ("data",), str(exc)) from None
        try:
            model_factory(scenario, data)()
        except (ValueError, TypeError) as exc:
            raise ScenarioError(source, ("model",), str(exc)) from None
        if len(data.test.labels) == 0:
            raise ScenarioError(
                source,
                ("data", "test_fraction"),
                "leaves the test split empty; raise it or use more samples per class",
            )
        fed = scenario.federation
        smallest = min(data.shards.sizes())
        if fed.protocol == "fedsgd" and fed.batch_size > smallest:
            raise ScenarioError(
                source,
                ("federation", "batch_size"),
                f"{fed.batch_size} exceeds the smallest client shard ({smallest} samples)",
            )


def new_run_dir(out: Path | None, base: Path, name: str) -> Path:
    """Create a new, empty run directory; never reuse an existing one."""
    if out is not None:
        if out.exists():
            raise RunError(f"run directory {out} already exists; choose another --out")
        out.mkdir(parents=True)
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(2, 1000))]:
        candidate = base / f"{name}-{stamp}{suffix}"
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise RunError(f"cannot create a new run directory under {base}")


def grid_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for rec in results["records"]:
        if rec["status"] != "ok" or not rec["images"] or rec["images"][0]["original_png"] is None:
            continue
        point = short_point(rec["point"])
        who = "agg" if rec["client"] is None else f"c{rec['client']}"
        rows.append(
            {
                "title": f"{point}\n{rec['attack']} r{rec['round']} {who}".strip(),
                "pairs": [
                    (im["original_png"], im["reconstruction_png"], f"{im['psnr']:.1f} dB")
                    for im in rec["images"]
                ],
            }
        )
    return rows[:MAX_GRID_ROWS]


@dataclass
class PreparedRun:
    """A validated scenario with its fresh run directory and results store."""

    source: Path
    trials: list[Trial]
    run_dir: Path
    store: ResultsStore
    started: float


def prepare_run(
    path: Path,
    overrides: list[str],
    out: Path | None,
    engine: Engine,
    scoring: ScoringMode,
) -> PreparedRun:
    """Validate the scenario at ``path``, create its run directory and results store.

    Raises:
        ScenarioError: invalid scenario, data, model or (simulation) resources;
            nothing is written.
        RunError: the run directory cannot be created.
    """
    raw, trials = load(path, overrides)
    preflight(trials, str(path))
    if engine == "simulation":
        from fedsim.federation.runner import check_resources

        for trial in trials:
            check_resources(trial.scenario, str(path))
    first = trials[0].scenario
    run_dir = new_run_dir(out, first.output.dir, first.name)
    (run_dir / "scenario.toml").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (run_dir / "scenario.resolved.json").write_text(
        json.dumps(
            {
                "source": str(path),
                "overrides": overrides,
                "raw": raw,
                "trials": [
                    {
                        "index": t.index,
                        "point": t.point,
                        "scenario": t.scenario.model_dump(mode="json"),
                    }
                    for t in trials
                ],
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    store = ResultsStore(run_dir, first.name, engine, scoring, GROUND_TRUTH_NOTES[scoring])
    return PreparedRun(path, trials, run_dir, store, time.perf_counter())


def run_trials(
    run: PreparedRun,
    run_trial: Callable[[Trial], None],
    on_failure: Callable[[Trial, str], None],
) -> str:
    """Run every trial; one that raises is recorded as failed and the others go on.

    Returns ``complete`` or ``partial``. ``KeyboardInterrupt`` propagates.
    """
    status = "complete"
    for trial in run.trials:
        run.store.start_trial(trial.index, trial.point)
        try:
            run_trial(trial)
            run.store.finish_trial(trial.index, "complete")
        except Exception as exc:  # a failed federation must not lose the others
            error = f"{type(exc).__name__}: {exc}"
            run.store.finish_trial(trial.index, "failed", error)
            status = "partial"
            on_failure(trial, error)
    return status


def finish_run(run: PreparedRun, status: str, reason: str = "") -> list[dict[str, Any]]:
    """Close the store with ``status``, draw ``grid.png`` and the loss curves;
    returns the summary table's rows."""
    run.store.data["wall_seconds"] = time.perf_counter() - run.started
    run.store.close(status, reason)
    save_grid(grid_rows(run.store.data), run.run_dir, run.run_dir / "grid.png")
    save_loss_curves(run.store.data["records"], run.run_dir / "loss_curves.png")
    return summarise(run.store.data)


def run_scenario(
    path: Path,
    overrides: list[str],
    out: Path | None,
    console: Console,
    scoring: ScoringMode = "shared-truth",
) -> tuple[Path, str]:
    """Run the scenario at ``path`` in Flower's simulation engine; returns the run
    directory and the final status (``complete``, ``partial`` or ``interrupted``).

    Raises:
        ScenarioError: invalid scenario, data or model (nothing written).
        RunError: the run directory cannot be created.
    """
    run = prepare_run(path, overrides, out, "simulation", scoring)
    total = sum(t.scenario.federation.rounds for t in run.trials)
    from fedsim.federation.runner import run_trial

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    ) as progress:
        task = progress.add_task("federation", total=total, note="starting")

        def note(message: str) -> None:
            if message.startswith("round") and "done" in message:
                progress.advance(task)
            progress.update(task, note=message)

        def one(trial: Trial) -> None:
            label = f"point {trial.index + 1}/{len(run.trials)}"
            progress.update(task, description=label, note="starting Flower simulation")
            run_trial(trial, run.store, run.run_dir, note, scoring)

        def failed(trial: Trial, error: str) -> None:
            console.print(f"[red]point {trial.index + 1}/{len(run.trials)} failed:[/] {error}")

        try:
            status = run_trials(run, one, failed)
            reason = ""
        except KeyboardInterrupt:
            status, reason = "interrupted", "stopped by the user (Ctrl-C or SIGTERM)"
    rows = finish_run(run, status, reason)
    console.print(rich_table(rows, title=f"{run.trials[0].scenario.name}: {status}"))
    return run.run_dir, status
