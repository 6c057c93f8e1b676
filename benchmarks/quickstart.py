"""Wall time, peak memory and where the time goes, for the quickstart scenario end to end.

Usage: ``python benchmarks/quickstart.py [SCENARIO]`` (default: scenarios/quickstart.toml).
Peak memory is sampled every 0.2 s over fedsim's process and all its
descendants (Ray's, with ``[simulation] backend = "ray"``), and reported with the main
process's own peak.

The profile times, in this process, the scenario's checks (data, model, defences,
resources), each start of Ray and its client actors, the attacks with their scoring
(each record's ``attack_seconds``), the federations' remaining time (Flower's engine
starting and stopping, the clients' training, the server's evaluation, the messages)
and the outputs (tables, CSVs, plots, ``report.html``); "first result" is when the
first attack's score was stored (and printed), counted from the start.
"""

from __future__ import annotations

import functools
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from process_tree import TreeMonitor
from rich.console import Console
from rich.table import Table

import fedsim.run
from fedsim.federation import runtime
from fedsim.results.store import ResultsStore, read_results

ROOT = Path(__file__).resolve().parents[1]
RAY = "Ray and client actors start"


class Stopwatch:
    """Seconds spent in the functions it wraps and their calls, by label, and when the
    first call of each label began (from the stopwatch's creation)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.first: dict[str, float] = {}

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            self.first.setdefault(label, began - self.start)
            self.calls[label] = self.calls.get(label, 0) + 1
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - began

        return timed


def main() -> None:
    scenario = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "scenarios" / "quickstart.toml"
    watch = Stopwatch()
    with (
        tempfile.TemporaryDirectory() as tmp,
        pytest.MonkeyPatch.context() as patch,
        TreeMonitor() as tree,
    ):
        for owner, name, label in (
            (fedsim.run, "check_scenario", "checks"),
            (fedsim.run, "_run_points", "points"),
            (fedsim.run, "finish_run", "outputs and report"),
            (runtime._Session, "__init__", RAY),
            (ResultsStore, "add", "first result"),
        ):
            patch.setattr(owner, name, watch.wrap(label, getattr(owner, name)))
        start = time.perf_counter()
        run_dir, status = fedsim.run.run_scenario(
            scenario, [], Path(tmp) / "run", Console(stderr=True)
        )
        wall = time.perf_counter() - start
        results = read_results(run_dir)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    attacks = sum(r.attack_seconds for r in results.records)
    ray = watch.seconds.get(RAY, 0.0)
    federation = watch.seconds["points"] - attacks - ray
    rows = [
        ("scenario checks (data, model, defences)", watch.seconds["checks"]),
        (f"Ray and client actors start ({watch.calls.get(RAY, 0)}×)", ray),
        ("Flower's engine, clients' training, evaluation", federation),
        (f"attacks and scoring ({len(results.records)} records)", attacks),
        ("outputs (tables, CSVs, plots, report.html)", watch.seconds["outputs and report"]),
    ]
    rows.append(("other (imports, run directory)", wall - sum(s for _, s in rows)))
    table = Table(title=f"{scenario.name} ({status}): where the time goes")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for stage, seconds in rows:
        table.add_row(stage, f"{seconds:.1f}", f"{100 * seconds / wall:.0f} %")
    Console().print(table)
    print(f"wall time           {wall:.1f} s")
    print(f"first result        {watch.first.get('first result', float('nan')):.1f} s")
    print(f"peak memory (tree)  {tree.peak_mib:.0f} MiB  (fedsim and any Ray processes)")
    print(f"peak memory (main)  {own:.0f} MiB")


if __name__ == "__main__":
    main()
