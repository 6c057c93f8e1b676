"""``fedsim run``: from a scenario file to a run directory.

Order of work: validate every sweep point (nothing is written if one is
invalid), check that data and model load, create a fresh run directory, then
run one federation per sweep point while a progress display shows rounds and
attacks. ``results.json`` is rewritten atomically after every record, so an
interrupted run leaves valid results for what finished.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedsim.data.datasets import DataError
from fedsim.federation.setup import federated_data, model_factory
from fedsim.registry import instantiate_defence
from fedsim.results.images import save_grid
from fedsim.results.plots import save_loss_curves
from fedsim.results.store import ResultsStore
from fedsim.results.table import rich_table, short_point, summarise
from fedsim.scenario import ScenarioError, Trial, load

MAX_GRID_ROWS = 40


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
            model = model_factory(scenario, data)()
        except (ValueError, TypeError) as exc:
            raise ScenarioError(source, ("model",), str(exc)) from None
        for i, config in enumerate(scenario.defences):
            reason = instantiate_defence(config.name, config.params).supports(model)
            if reason:
                raise ScenarioError(source, ("defences", i), reason)
        if len(data.test.labels) == 0:
            raise ScenarioError(
                source,
                ("data", "test_fraction"),
                "leaves the test split empty; raise it or use more samples per class",
            )
        fed = scenario.federation
        smallest = min(len(s.labels) for s in data.shards)
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


def run_scenario(
    path: Path, overrides: list[str], out: Path | None, console: Console
) -> tuple[Path, str]:
    """Run the scenario at ``path``; returns the run directory and the final status.

    Raises:
        ScenarioError: invalid scenario, data or model (nothing written).
        RunError: the run directory cannot be created.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    raw, trials = load(path, overrides)
    preflight(trials, str(path))
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

    store = ResultsStore(run_dir, first.name)
    status = "complete"
    started = time.perf_counter()
    total = sum(t.scenario.federation.rounds for t in trials)
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
        try:
            for trial in trials:
                label = f"point {trial.index + 1}/{len(trials)}"
                progress.update(task, description=label, note="starting Flower simulation")
                store.start_trial(trial.index, trial.point)

                def note(message: str) -> None:
                    if message.startswith("round") and "done" in message:
                        progress.advance(task)
                    progress.update(task, note=message)

                try:
                    run_trial(trial, store, run_dir, note)
                    store.finish_trial(trial.index, "complete")
                except Exception as exc:  # a failed federation must not lose the others
                    store.finish_trial(trial.index, "failed", f"{type(exc).__name__}: {exc}")
                    status = "partial"
                    console.print(f"[red]{label} failed:[/] {type(exc).__name__}: {exc}")
        except KeyboardInterrupt:
            status = "interrupted"
            for trial in store.data["trials"]:
                if trial["status"] == "running":
                    store.finish_trial(trial["index"], "interrupted", "stopped by the user")
    store.data["wall_seconds"] = time.perf_counter() - started
    store.close(status)
    save_grid(grid_rows(store.data), run_dir, run_dir / "grid.png")
    save_loss_curves(store.data["records"], run_dir / "loss_curves.png")
    console.print(rich_table(summarise(store.data), title=f"{first.name}: {status}"))
    return run_dir, status
