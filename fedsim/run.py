"""``fedsim run``: from a scenario file to a run directory.

Order of work: validate every sweep point (nothing is written if one is
invalid), check that data, model, defences and resources fit, run the
architecture audit when asked, create a fresh run directory, then run one
federation per sweep point while a progress display shows rounds and attacks.
``results.json`` is rewritten atomically after every record, so an
interrupted run leaves valid results for what finished, and ``--resume
RUN_DIR`` finishes it: points that completed are not run again, and a
scenario that no longer gives the same points is refused. The run ends with
``sweep.csv``, the plots, the summary tables and ``report.html`` (a report
that cannot be built is a warning: the results are saved already).

:func:`prepare_run`, :func:`run_trials` and :func:`finish_run` are shared with
the deployment engine's ServerApp (``fedsim.federation.deployment``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from fedsim.audit.render import print_audit
from fedsim.audit.runner import ScenarioAudit, audit_scenario, audits_json
from fedsim.data.datasets import DataError
from fedsim.federation.scoring import GROUND_TRUTH_NOTES, ScoringMode
from fedsim.federation.setup import federated_data, model_factory
from fedsim.models.start import CheckpointError, load_checkpoint
from fedsim.registry import instantiate_defence
from fedsim.results.images import save_grid
from fedsim.results.plots import save_accuracy_curves, save_loss_curves
from fedsim.results.round_plots import save_round_plots
from fedsim.results.store import ResultsStore, atomic_write
from fedsim.results.sweep import sweep_csv
from fedsim.results.sweep_plots import save_sweep_plots
from fedsim.results.table import POINT_COLUMNS, point_rows, rich_table, short_point, summarise
from fedsim.scenario import Scenario, ScenarioError, Trial, format_path, load
from fedsim.training.racecar import UnsupportedModel, check_racecar_model, layer_weights

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
            + scenario.federation.training
            + scenario.federation.racecar.model_dump_json()
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
        if scenario.model.checkpoint is not None:
            try:
                load_checkpoint(model, scenario.model.checkpoint.expanduser())
            except CheckpointError as exc:
                raise ScenarioError(source, ("model", "checkpoint"), str(exc)) from None
        _check_training(scenario, model, data.input_shape, source)
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
        smallest = min(data.shards.sizes())
        if fed.protocol == "fedsgd" and fed.batch_size > smallest:
            raise ScenarioError(
                source,
                ("federation", "batch_size"),
                f"{fed.batch_size} exceeds the smallest client shard ({smallest} samples)",
            )


def _check_training(
    scenario: Scenario, model: nn.Module, input_shape: tuple[int, int, int], source: str
) -> None:
    """Racecar training needs a conv/linear chain and one λ per layer (or a single one)."""
    fed = scenario.federation
    if fed.training != "racecar":
        return
    try:
        layers = check_racecar_model(model, input_shape)
    except UnsupportedModel as exc:
        raise ScenarioError(source, ("model",), f"racecar training: {exc}") from None
    try:
        layer_weights(fed.racecar.lambdas, layers)
    except ValueError as exc:
        raise ScenarioError(source, ("federation", "racecar", "lambdas"), str(exc)) from None


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


def resolved_trials(trials: list[Trial]) -> list[dict[str, Any]]:
    """The trials as ``scenario.resolved.json`` stores them (JSON values)."""
    return json.loads(
        json.dumps(
            [
                {"index": t.index, "point": t.point, "scenario": t.scenario.model_dump(mode="json")}
                for t in trials
            ]
        )
    )


def first_difference(old: Any, new: Any, path: tuple[str | int, ...] = ()) -> str | None:
    """``"key.path: old → new"`` for the first place two JSON values differ, else ``None``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = first_difference(old.get(key), new.get(key), (*path, key))
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, (*path, i))
            if found:
                return found
        return None
    return None if old == new else f"{format_path(path) or 'value'}: {old!r} → {new!r}"


def check_resumable(run_dir: Path, trials: list[Trial], source: str) -> None:
    """Refuse to resume ``run_dir`` unless ``trials`` are exactly the points it was made for.

    The output section is not compared (it does not change what a point computes).
    """
    resolved, results = run_dir / "scenario.resolved.json", run_dir / "results.json"
    if not resolved.is_file() or not results.is_file():
        raise RunError(
            f"{run_dir}: not a fedsim run directory (no {resolved.name} or results.json)"
        )
    stored = json.loads(resolved.read_text(encoding="utf-8"))["trials"]
    current = resolved_trials(trials)
    if len(stored) != len(current):
        raise RunError(
            f"{run_dir} was made for {len(stored)} sweep points, {source} now gives "
            f"{len(current)}: the scenario changed; restore it or start a new run"
        )
    for old, new in zip(stored, current, strict=True):
        old["scenario"].pop("output", None)
        new["scenario"].pop("output", None)
        change = first_difference(old, new)
        if change:
            raise RunError(
                f"{run_dir}: the scenario changed since the run started (point "
                f"{old['index'] + 1}, {short_point(old['point'])}): {change}; "
                "restore it or start a new run"
            )


def _write_scenario(run_dir: Path, path: Path, overrides: list[str], raw: Any,
                    trials: list[Trial]) -> None:  # fmt: skip
    (run_dir / "scenario.toml").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (run_dir / "scenario.resolved.json").write_text(
        json.dumps(
            {"source": str(path), "overrides": overrides, "raw": raw,
             "trials": resolved_trials(trials)},
            indent=1,
        ),
        encoding="utf-8",
    )  # fmt: skip


def write_outputs(store: ResultsStore, run_dir: Path) -> None:
    """The PNGs, ``sweep.csv``, ``rounds.csv`` and the ``plots`` list of ``results.json``."""
    plots = []
    save_grid(grid_rows(store.data), run_dir, run_dir / "grid.png")
    if (run_dir / "grid.png").is_file():
        plots.append({"path": "grid.png", "title": "originals beside reconstructions"})
    if save_loss_curves(store.data["records"], run_dir / "loss_curves.png"):
        plots.append({"path": "loss_curves.png", "title": "attack loss curves"})
    if save_accuracy_curves(store.data["trials"], run_dir / "accuracy.png"):
        plots.append({"path": "accuracy.png", "title": "test accuracy per round"})
    atomic_write(run_dir / "sweep.csv", sweep_csv(store.data))
    plots += save_sweep_plots(store.data, run_dir)
    plots += save_round_plots(store.data, run_dir)
    store.set_plots(plots)


@dataclass
class PreparedRun:
    """A validated scenario with its run directory and results store: a fresh
    one, or a resumed one whose ``done`` trials are not run again."""

    source: Path
    trials: list[Trial]
    run_dir: Path
    store: ResultsStore
    started: float
    done: set[int] = field(default_factory=set)
    audits: list[ScenarioAudit] = field(default_factory=list)

    @property
    def todo(self) -> list[Trial]:
        return [t for t in self.trials if t.index not in self.done]


def prepare_run(
    path: Path,
    overrides: list[str],
    out: Path | None,
    engine: Engine,
    scoring: ScoringMode,
    resume: Path | None = None,
) -> PreparedRun:
    """Validate the scenario at ``path``, create its run directory and results
    store (or reopen ``resume``'s), and run the ``[audit]`` when the scenario asks.

    Raises:
        ScenarioError: invalid scenario, data, model, defences or (simulation)
            resources; nothing is written.
        RunError: the run directory cannot be created, or cannot be resumed.
    """
    raw, trials = load(path, overrides)
    preflight(trials, str(path))
    if engine == "simulation":
        from fedsim.federation.runner import check_resources

        for trial in trials:
            check_resources(trial.scenario, str(path))
    first = trials[0].scenario
    if resume is not None:
        check_resumable(resume, trials, str(path))
        store = ResultsStore.resume(resume)
        return PreparedRun(path, trials, resume, store, time.perf_counter(), store.completed)
    audited = [t for t in trials if t.scenario.audit is not None]
    audits = audit_scenario(audited, str(path)) if audited else []
    run_dir = new_run_dir(out, first.output.dir, first.name)
    _write_scenario(run_dir, path, overrides, raw, trials)
    store = ResultsStore(run_dir, first.name, engine, scoring, GROUND_TRUTH_NOTES[scoring])
    if audits:
        (run_dir / "audit.json").write_text(audits_json(audits), encoding="utf-8")
        store.data["audit"] = [a.to_json() for a in audits]
        store.save()
    return PreparedRun(path, trials, run_dir, store, time.perf_counter(), audits=audits)


def run_trials(
    run: PreparedRun,
    run_trial: Callable[[Trial], None],
    on_failure: Callable[[Trial, str], None],
) -> str:
    """Run every trial not done yet; one that raises is recorded as failed and
    the others go on.

    Returns ``complete`` or ``partial``. ``KeyboardInterrupt`` propagates.
    """
    status = "complete"
    for trial in run.todo:
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


def write_report_or_warn(run_dir: Path, say: Callable[[str], None]) -> None:
    """Write ``report.html`` and ``say`` where; if that fails, ``say`` a warning and go on:
    the page is derived from the saved results, which are never lost for it."""
    from fedsim.report import write_report

    try:
        path = write_report(run_dir)
    except Exception as exc:
        say(
            f"warning: report.html not written ({type(exc).__name__}: {exc}); the results are "
            f"saved; retry with: fedsim report {run_dir}"
        )
        return
    say(f"report: {path}")


def finish_run(
    run: PreparedRun, status: str, reason: str, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Close the store with ``status`` (wall time added to a resumed run's), write
    the PNGs, ``sweep.csv``, the plots list and ``report.html`` (``say`` tells where,
    or warns); returns the summary table's rows."""
    data = run.store.data
    data["wall_seconds"] = data.get("wall_seconds", 0.0) + time.perf_counter() - run.started
    run.store.close(status, reason)
    try:
        write_outputs(run.store, run.run_dir)
    finally:
        write_report_or_warn(run.run_dir, say)
    return summarise(run.store.data)


def run_scenario(
    path: Path,
    overrides: list[str],
    out: Path | None,
    console: Console,
    scoring: ScoringMode = "shared-truth",
    resume: Path | None = None,
) -> tuple[Path, str]:
    """Run the scenario at ``path`` in Flower's simulation engine; returns the run
    directory and the final status (``complete``, ``partial`` or ``interrupted``).

    Raises:
        ScenarioError: invalid scenario, data, model or defences (nothing written).
        RunError: the run directory cannot be created, or cannot be resumed.
    """
    run = prepare_run(path, overrides, out, "simulation", scoring, resume)
    for audit in run.audits:
        print_audit(audit, console)
    if run.done:
        console.print(
            f"resuming {run.run_dir}: {len(run.done)} of {len(run.trials)} points done, skipped"
        )
    total = sum(t.scenario.federation.rounds for t in run.todo)
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
    rows = finish_run(run, status, reason, lambda line: console.print(line, highlight=False))
    name = run.trials[0].scenario.name
    console.print(rich_table(rows, title=f"{name}: {status}"))
    console.print(rich_table(point_rows(run.store.data), title="sweep points", shown=POINT_COLUMNS))
    for message in sorted(unavailable_metrics(run.store.data)):
        console.print(f"[yellow]relative-perceptual-L1 unavailable:[/] {message}")
    if status == "interrupted":
        console.print(f"finish it with: fedsim run {path} --resume {run.run_dir}")
    return run.run_dir, status


def unavailable_metrics(results: dict[str, Any]) -> set[str]:
    """Why the trials' optional relative-perceptual-L1 could not be computed (if asked for)."""
    infos = [t.get("rel_perceptual_l1") for t in results["trials"]]
    return {i["reason"] for i in infos if i is not None and i["status"] == "unavailable"}
