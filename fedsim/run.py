"""``fedsim run``: from a scenario file to a run directory.

Order of work (:func:`check_scenario`): validate every sweep point (nothing is
written if one is invalid), check that data, model, defences and resources fit,
run the architecture audit when asked; then (:func:`open_run`) create a fresh run
directory, locked for this process (:mod:`fedsim.results.run_lock`), and run one
federation per sweep point while a progress display shows rounds and attacks.
From the directory's creation on, SIGINT and SIGTERM only request a stop
(:mod:`fedsim.stopping`). ``results.json`` is rewritten atomically after every
record, so an interrupted run leaves valid results for what finished, and
``--resume RUN_DIR`` finishes it: points that completed are not run again, and a
scenario that no longer gives the same points, damaged result files or a run
directory another process holds are refused. The run ends with ``sweep.csv``,
the plots, the summary tables and ``report.html`` (a report that cannot be built
is a warning: the results are saved already).

:func:`prepare_run`, :func:`run_trials` and :func:`finish_run` are shared with
the deployment engine's ServerApp (``fedsim.deployment``).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from fedsim.audit.cm import ScenarioAudit
from fedsim.audit.render import print_audit
from fedsim.audit.runner import audit_scenario, audits_json
from fedsim.federation.progress import AttackScored, Event, RoundDone
from fedsim.federation.scoring import GROUND_TRUTH_NOTES, ScoringMode
from fedsim.registry import discover
from fedsim.results.images import save_grid
from fedsim.results.leaderboard import is_leaderboard, leaderboard_csv, leaderboard_entries
from fedsim.results.leaderboard_plots import save_leaderboard_plot
from fedsim.results.plots import save_accuracy_curves, save_loss_curves
from fedsim.results.round_plots import save_round_plots
from fedsim.results.run_lock import RunDirectoryInUse, RunLock
from fedsim.results.schema import NewerSchemaError, ResultsFileError, RunResults, parse_results
from fedsim.results.store import ResultsStore, atomic_write
from fedsim.results.sweep import sweep_csv
from fedsim.results.sweep_plots import save_sweep_plots
from fedsim.results.table import POINT_COLUMNS, point_rows, rich_table, short_point, summarise
from fedsim.scenario import Trial, format_path, load
from fedsim.scenario.preflight import preflight
from fedsim.stopping import deferred, describe

MAX_GRID_ROWS = 40

Engine = Literal["simulation", "deployment"]


class RunError(Exception):
    """The run cannot start; the message is one line for the user."""


def safe_name(name: str) -> str:
    """``name`` as one safe path component: letters, digits, ``_`` and ``-`` are kept,
    every other run of characters (``/``, ``.``, spaces, ...) becomes one ``-``,
    and ``-`` at either end is dropped; ``scenario`` if nothing is left.
    ``"../../escaped"`` → ``"escaped"``, ``"dp sweep v1.2"`` → ``"dp-sweep-v1-2"``."""
    return re.sub(r"[^\w-]+", "-", name).strip("-") or "scenario"


def new_run_dir(out: Path | None, base: Path, name: str) -> Path:
    """Create a new, empty run directory: ``out``, or ``base/<safe_name(name)>-<time>``
    (always inside ``base``); never reuse an existing one.

    Raises:
        RunError: ``out`` exists, or the directory cannot be created.
    """
    try:
        if out is not None:
            if out.exists():
                raise RunError(f"run directory {out} already exists; choose another --out")
            out.mkdir(parents=True)
            return out
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for suffix in ["", *(f"-{i}" for i in range(2, 1000))]:
            candidate = base / f"{safe_name(name)}-{stamp}{suffix}"
            try:
                candidate.mkdir(parents=True)
                return candidate
            except FileExistsError:
                continue
    except OSError as exc:
        where = out if out is not None else base
        raise RunError(
            f"cannot create run directory {exc.filename or where}: {exc.strerror or exc}"
        ) from None
    raise RunError(f"cannot create a new run directory under {base}")


def grid_rows(results: RunResults) -> list[dict[str, Any]]:
    rows = []
    for rec in results.records:
        if rec.status != "ok" or not rec.images or rec.images[0].original_png is None:
            continue
        point = short_point(rec.point)
        who = "agg" if rec.client is None else f"c{rec.client}"
        rows.append(
            {
                "title": f"{point}\n{rec.attack} r{rec.round} {who}".strip(),
                "pairs": [
                    (im.original_png, im.reconstruction_png, f"{im.psnr:.1f} dB")
                    for im in rec.images
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


def _read_json(path: Path) -> Any:
    """The JSON file at ``path`` (of a run directory to resume), or a one-line
    :class:`RunError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunError(f"{path.parent}: cannot read {path.name}: {exc.strerror or exc}") from None
    except ValueError as exc:  # not JSON (a truncated file), or not UTF-8
        raise RunError(
            f"{path.parent}: {path.name} is damaged ({exc}); it cannot be resumed: start a new run"
        ) from None


def _require_run_dir(run_dir: Path) -> None:
    names = ("scenario.resolved.json", "results.json")
    if not all((run_dir / name).is_file() for name in names):
        raise RunError(f"{run_dir}: not a fedsim run directory (no {names[0]} or {names[1]})")


def check_resumable(run_dir: Path, trials: list[Trial], source: str) -> None:
    """Refuse to resume ``run_dir`` unless its files are intact and ``trials`` are
    exactly the points it was made for.

    The output section is not compared (it does not change what a point computes).
    """
    try:
        parse_results(_read_json(run_dir / "results.json"))
    except NewerSchemaError as exc:
        raise RunError(f"{run_dir}: results.json {exc}; it cannot be resumed") from None
    except ResultsFileError as exc:
        raise RunError(
            f"{run_dir}: results.json is not what fedsim wrote ({exc}); it cannot be resumed: "
            "start a new run"
        ) from None
    resolved = _read_json(run_dir / "scenario.resolved.json")
    if not (isinstance(resolved, dict) and isinstance(resolved.get("trials"), list)):
        raise RunError(
            f"{run_dir}: results.json or scenario.resolved.json is not what fedsim wrote; "
            "it cannot be resumed: start a new run"
        )
    stored = resolved["trials"]
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
    if save_loss_curves(store.data.records, run_dir / "loss_curves.png"):
        plots.append({"path": "loss_curves.png", "title": "attack loss curves"})
    if save_accuracy_curves(store.data.trials, run_dir / "accuracy.png"):
        plots.append({"path": "accuracy.png", "title": "test accuracy per round"})
    atomic_write(run_dir / "sweep.csv", sweep_csv(store.data))
    plots += save_sweep_plots(store.data, run_dir)
    if is_leaderboard(store.data):
        atomic_write(run_dir / "leaderboard.csv", leaderboard_csv(store.data))
        if save_leaderboard_plot(leaderboard_entries(store.data), run_dir / "leaderboard.png"):
            plots.append({"path": "leaderboard.png", "title": "defence leaderboard"})
    plots += save_round_plots(store.data, run_dir)
    store.set_plots(plots)


@dataclass
class PreparedRun:
    """A validated scenario with its run directory (locked for this process) and
    results store: a fresh one, or a resumed one whose ``done`` trials are not run
    again."""

    source: Path
    trials: list[Trial]
    run_dir: Path
    store: ResultsStore
    lock: RunLock
    started: float
    done: set[int] = field(default_factory=set)
    audits: list[ScenarioAudit] = field(default_factory=list)

    @property
    def todo(self) -> list[Trial]:
        return [t for t in self.trials if t.index not in self.done]


@dataclass(frozen=True)
class CheckedScenario:
    """A scenario that passed every check of :func:`check_scenario`; nothing written yet."""

    path: Path
    overrides: list[str]
    raw: Any
    trials: list[Trial]
    audits: list[ScenarioAudit]

    @property
    def clashes(self) -> list[str]:
        """One line per plugin the scenario uses whose name another installed
        distribution also declares (the built-in is used; see :mod:`fedsim.registry`)."""
        clashes = discover().clashes
        used = {
            f"fedsim.{kind}:{config.name}"
            for trial in self.trials
            for kind, configs in (
                ("attacks", trial.scenario.attacks),
                ("defences", trial.scenario.defences),
            )
            for config in configs
        }
        return [f"plugin name {key.split(':')[1]!r} is {clashes[key]}" for key in sorted(used)
                if key in clashes]  # fmt: skip


def check_scenario(
    path: Path, overrides: list[str], engine: Engine, resume: Path | None = None
) -> CheckedScenario:
    """Validate the scenario at ``path`` (data, model, defences and, in simulation,
    resources) and, for a new run whose scenario asks, run the ``[audit]``.

    Raises:
        ScenarioError: invalid scenario, data, model, defences or resources.
    """
    raw, trials = load(path, overrides)
    preflight(trials, str(path), engine)
    audited = [t for t in trials if t.scenario.audit is not None]
    audits = audit_scenario(audited, str(path)) if audited and resume is None else []
    return CheckedScenario(path, overrides, raw, trials, audits)


def _lock(run_dir: Path) -> RunLock:
    try:
        return RunLock.acquire(run_dir)
    except RunDirectoryInUse as exc:
        raise RunError(str(exc)) from None
    except OSError as exc:
        raise RunError(f"{run_dir}: cannot lock it: {exc.strerror or exc}") from None


def open_run(
    checked: CheckedScenario,
    out: Path | None,
    engine: Engine,
    scoring: ScoringMode,
    resume: Path | None = None,
) -> PreparedRun:
    """Create the run directory of ``checked`` and its results store, or reopen
    ``resume``'s; either way lock it (:class:`~fedsim.results.run_lock.RunLock`).

    Raises:
        RunError: the run directory cannot be created, is in use by another
            process, or cannot be resumed.
    """
    path, trials = checked.path, checked.trials
    first = trials[0].scenario
    if resume is not None:
        _require_run_dir(resume)
        lock = _lock(resume)
        try:
            check_resumable(resume, trials, str(path))
            store = ResultsStore.resume(resume)
        except BaseException:
            lock.release()
            raise
        return PreparedRun(path, trials, resume, store, lock, time.perf_counter(), store.completed)
    run_dir = new_run_dir(out, first.output.dir, first.name)
    lock = _lock(run_dir)
    _write_scenario(run_dir, path, checked.overrides, checked.raw, trials)
    store = ResultsStore(run_dir, first.name, engine, scoring, GROUND_TRUTH_NOTES[scoring])
    if checked.audits:
        (run_dir / "audit.json").write_text(audits_json(checked.audits), encoding="utf-8")
        store.set_audit(checked.audits)
    started = time.perf_counter()
    return PreparedRun(path, trials, run_dir, store, lock, started, audits=checked.audits)


def prepare_run(
    path: Path,
    overrides: list[str],
    out: Path | None,
    engine: Engine,
    scoring: ScoringMode,
    resume: Path | None = None,
) -> PreparedRun:
    """:func:`check_scenario`, then :func:`open_run`.

    Raises:
        ScenarioError: invalid scenario, data, model, defences or (simulation)
            resources; nothing is written.
        RunError: the run directory cannot be created, is in use, or cannot be resumed.
    """
    return open_run(check_scenario(path, overrides, engine, resume), out, engine, scoring, resume)


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
    or warns), and unlock the run directory; returns the summary table's rows."""
    run.store.add_wall_seconds(time.perf_counter() - run.started)
    run.store.close(status, reason)
    try:
        write_outputs(run.store, run.run_dir)
    finally:
        write_report_or_warn(run.run_dir, say)
        run.lock.release()
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

    From the run directory's creation on, SIGINT and SIGTERM only request a stop
    (:func:`fedsim.stopping.deferred`; ``fedsim.stopping.REQUEST`` says which came):
    the point under way ends ``interrupted`` and the outputs are written for what
    finished. Before that, they interrupt at once (nothing is written).

    Raises:
        ScenarioError: invalid scenario, data, model or defences (nothing written).
        RunError: the run directory cannot be created, is in use, or cannot be resumed.
        KeyboardInterrupt: a signal before the run directory was created.
    """
    checked = check_scenario(path, overrides, "simulation", resume)
    for clash in checked.clashes:
        console.print(f"[bold yellow]warning:[/] {escape(clash)}")
    for audit in checked.audits:
        print_audit(audit, console)
    with deferred() as stop:
        run = open_run(checked, out, "simulation", scoring, resume)
        if run.done:
            console.print(
                f"resuming {escape(str(run.run_dir))}: {len(run.done)} of {len(run.trials)} "
                "points done, skipped"
            )
        try:
            status, reason = _run_points(run, console, scoring), ""
        except KeyboardInterrupt:
            status, reason = "interrupted", f"stopped by {describe(stop.signum)}"
        rows = finish_run(
            run, status, reason, lambda line: console.print(line, markup=False, highlight=False)
        )
        name = run.trials[0].scenario.name
        console.print(rich_table(rows, title=f"{name}: {status}"))
        console.print(
            rich_table(point_rows(run.store.data), title="sweep points", shown=POINT_COLUMNS)
        )
        for message in sorted(unavailable_metrics(run.store.data)):
            console.print(f"[yellow]relative-perceptual-L1 unavailable:[/] {escape(message)}")
        if status == "interrupted":
            command = shlex.join(
                ["fedsim", "run", str(path), *(f"--set={o}" for o in overrides),
                 "--resume", str(run.run_dir)]
            )  # fmt: skip
            console.print(f"finish it with: {command}", markup=False, highlight=False)
    return run.run_dir, status


def _run_points(run: PreparedRun, console: Console, scoring: ScoringMode) -> str:
    """:func:`run_trials` in Flower's simulation engine, behind a progress display, the
    points sharing the engine's backend (with Ray, one Ray runtime); returns
    ``complete`` or ``partial``; ``KeyboardInterrupt`` propagates."""
    from fedsim.federation.runner import run_trial
    from fedsim.federation.runtime import SimulationRuntime

    total = sum(t.scenario.federation.rounds for t in run.todo)
    with (
        SimulationRuntime(run.run_dir) as runtime,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} rounds"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("federation", total=total, note="starting")
        note = round_bar(progress, task)

        def one(trial: Trial) -> None:
            label = f"point {trial.index + 1}/{len(run.trials)}"
            heading = f"{label} {short_point(trial.point)}" if trial.point else label
            progress.update(
                task, description=label, heading=heading, note="starting Flower simulation"
            )
            run_trial(trial, run.store, run.run_dir, note, scoring, runtime)

        def failed(trial: Trial, error: str) -> None:
            label = f"point {trial.index + 1}/{len(run.trials)}"
            console.print(f"[red]{label} failed:[/] {escape(error)}")

        return run_trials(run, one, failed)


def round_bar(progress: Progress, task: TaskID) -> Callable[[Event], None]:
    """Where the federation's events go on ``progress``: ``task``'s bar advances by one
    round on each :class:`~fedsim.federation.progress.RoundDone` (and on nothing else),
    and every event's text becomes the task's note. Each
    :class:`~fedsim.federation.progress.AttackScored` is also printed as a line of its
    own above the bar, as it comes, after the task's ``heading`` field (the point)."""

    def show(event: Event) -> None:
        if isinstance(event, RoundDone):
            progress.advance(task)
        if isinstance(event, AttackScored):
            (shown,) = (t for t in progress.tasks if t.id == task)
            heading = shown.fields.get("heading", shown.description)
            progress.console.print(f"{heading}: {event.text}", markup=False, highlight=False)
        progress.update(task, note=event.text)

    return show


def unavailable_metrics(results: RunResults) -> set[str]:
    """Why the trials' optional relative-perceptual-L1 could not be computed (if asked for)."""
    infos = [t.rel_perceptual_l1 for t in results.trials]
    return {i.reason or "" for i in infos if i is not None and i.status == "unavailable"}
