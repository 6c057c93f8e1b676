"""Helpers for the tests that run ``fedsim run`` on small scenarios, some in child
processes: a tiny data section, a scenario file from a dict, a child's environment,
the run directory's results, a shipped scenario run in-process, and a run whose
federations are replaced by a fake."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY = {
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "max_samples": 200},
}


def scenario_toml(raw: dict[str, Any]) -> str:
    """A scenario file for ``raw`` (plain tables, one level of nesting, [[attacks]])."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict | list)]
    for section, table in raw.items():
        if isinstance(table, dict):
            lines += [f"[{section}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    for attack in raw.get("attacks", []):
        lines += ["[[attacks]]", *(f"{k} = {value(v)}" for k, v in attack.items())]
    return "\n".join(lines) + "\n"


def child_env(tmp: Path) -> dict[str, str]:
    """The environment of a ``fedsim run`` child: temporary files under ``tmp``, and
    Flower's telemetry off (its thread runs ``file`` on the interpreter, a child process
    that would be counted among the run's own)."""
    return {**os.environ, "TMPDIR": str(tmp), "FLWR_TELEMETRY_ENABLED": "0"}


def read_run(out: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    results = json.loads((out / "results.json").read_text("utf-8"))
    with (out / "metrics.csv").open(encoding="utf-8", newline="") as fh:
        return results, list(csv.DictReader(fh))


SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
"""The shipped scenario files."""


def run_shipped(name: str, out: Path, *overrides: str) -> dict[str, Any]:
    """Run ``scenarios/<name>`` in this process with ``--set`` ``overrides`` into ``out``;
    returns its ``results.json``."""
    from fedsim.cli import main

    args = [a for override in overrides for a in ("--set", override)]
    assert main(["run", str(SCENARIOS / name), "--out", str(out), *args]) == 0
    return dict(json.loads((out / "results.json").read_text("utf-8")))


def accuracy_curve(results: dict[str, Any], trial: int = 0) -> dict[int, float]:
    """A trial's test accuracy by round (0: before round 1)."""
    return {int(r): a for r, a in results["trials"][trial]["accuracy"].items()}


def run_faked(folder: Path, scenario: str, federation: Callable[..., None]) -> tuple[Path, str]:
    """Run the scenario file text ``scenario`` in ``folder`` with ``federation`` in place of
    each trial's Flower federation (``runner.run_trial``'s signature); returns the run
    directory and the run's status."""
    import pytest
    from rich.console import Console

    import fedsim.federation.runner as runner
    from fedsim.run import run_scenario

    source = folder / "scenario.toml"
    source.write_text(scenario, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "run_trial", federation)
        return run_scenario(source, [], folder / "run", Console(quiet=True))
