"""``fedsim run``: from a scenario file to a run directory.

Order of work: validate every sweep point (nothing is written if one is
invalid), check that data, model and defences fit, create a fresh run
directory, then run one federation per sweep point while a progress display
shows rounds and attacks. ``results.json`` is rewritten atomically after every
record, so an interrupted run leaves valid results for what finished, and
``--resume RUN_DIR`` finishes it: points that completed are not run again,
and a scenario that no longer gives the same points is refused. The run ends
with ``sweep.csv``, the sweep plots, the summary tables and ``report.html``
(a report that cannot be built is a warning: the results are already saved).
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

from fedsim.audit.render import print_audit
from fedsim.audit.runner import audit_scenario, audits_json
from fedsim.data.datasets import DataError
from fedsim.federation.setup import federated_data, model_factory
from fedsim.registry import instantiate_defence
from fedsim.results.images import save_grid
from fedsim.results.plots import save_accuracy_curves, save_loss_curves
from fedsim.results.store import ResultsStore, atomic_write
from fedsim.results.sweep import sweep_csv
from fedsim.results.sweep_plots import save_sweep_plots
from fedsim.results.table import POINT_COLUMNS, point_rows, rich_table, short_point, summarise
from fedsim.scenario import ScenarioError, Trial, format_path, load

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
    """The PNGs, ``sweep.csv`` and the ``plots`` list of ``results.json``."""
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
    store.set_plots(plots)


def write_report_or_warn(run_dir: Path, console: Console) -> None:
    """Write ``report.html``; if that fails, say so and go on: the results are saved."""
    from fedsim.report import write_report

    try:
        path = write_report(run_dir)
    except Exception as exc:  # the page is derived from saved results; never lose a run for it
        console.print(
            f"[yellow]warning:[/] report.html not written ({type(exc).__name__}: {exc}); the "
            f"results are saved; retry with: fedsim report {run_dir}",
            highlight=False,
        )
        return
    console.print(f"report: {path}", highlight=False)


def run_scenario(
    path: Path,
    overrides: list[str],
    out: Path | None,
    console: Console,
    resume: Path | None = None,
) -> tuple[Path, str]:
    """Run the scenario at ``path``; returns the run directory and the final status.

    With ``resume``, finish the interrupted run in that directory instead of
    starting a new one: its completed points are kept, the others are run.

    Raises:
        ScenarioError: invalid scenario, data, model or defences (nothing written).
        RunError: the run directory cannot be created, or cannot be resumed.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    raw, trials = load(path, overrides)
    preflight(trials, str(path))
    first = trials[0].scenario
    if resume is not None:
        check_resumable(resume, trials, str(path))
        run_dir, store = resume, ResultsStore.resume(resume)
    else:
        audited = [t for t in trials if t.scenario.audit is not None]
        audits = audit_scenario(audited, str(path)) if audited else []
        run_dir = new_run_dir(out, first.output.dir, first.name)
        _write_scenario(run_dir, path, overrides, raw, trials)
        store = ResultsStore(run_dir, first.name)
        if audits:
            (run_dir / "audit.json").write_text(audits_json(audits), encoding="utf-8")
            for audit in audits:
                print_audit(audit, console)
            store.data["audit"] = [a.to_json() for a in audits]
    done = store.completed
    if done:
        console.print(f"resuming {run_dir}: {len(done)} of {len(trials)} points done, skipped")
    status = "complete"
    started = time.perf_counter()
    todo = [t for t in trials if t.index not in done]
    total = sum(t.scenario.federation.rounds for t in todo)
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
            for trial in todo:
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
    store.data["wall_seconds"] = store.data.get("wall_seconds", 0.0) + time.perf_counter() - started
    store.close(status)
    try:
        write_outputs(store, run_dir)
    finally:
        write_report_or_warn(run_dir, console)
    console.print(rich_table(summarise(store.data), title=f"{first.name}: {status}"))
    console.print(rich_table(point_rows(store.data), title="sweep points", shown=POINT_COLUMNS))
    for reason in sorted(unavailable_metrics(store.data)):
        console.print(f"[yellow]relative-perceptual-L1 unavailable:[/] {reason}")
    if status == "interrupted":
        console.print(f"finish it with: fedsim run {path} --resume {run_dir}")
    return run_dir, status


def unavailable_metrics(results: dict[str, Any]) -> set[str]:
    """Why the trials' optional relative-perceptual-L1 could not be computed (if asked for)."""
    infos = [t.get("rel_perceptual_l1") for t in results["trials"]]
    return {i["reason"] for i in infos if i is not None and i["status"] == "unavailable"}
