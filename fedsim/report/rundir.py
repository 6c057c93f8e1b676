"""A run directory as the report reads it: ``results.json`` and the scenario files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.results.schema import NewerSchemaError, ResultsFileError, RunResults
from fedsim.results.store import read_results


class ReportError(Exception):
    """The report cannot be built; the message is one line for the user."""


@dataclass(frozen=True)
class RunFiles:
    """What a finished, interrupted or failed run left in its directory.

    ``scenario_text`` is ``scenario.toml`` as the user wrote it and ``resolved``
    ``scenario.resolved.json`` (source, overrides, and every trial's point and full
    scenario); either is ``None`` when missing.
    """

    path: Path
    results: RunResults
    scenario_text: str | None
    resolved: dict[str, Any] | None

    @property
    def first_scenario(self) -> dict[str, Any]:
        """The resolved scenario of the first sweep point (``{}`` if unknown)."""
        trials = (self.resolved or {}).get("trials") or [{}]
        return trials[0].get("scenario", {})


READ_FILES = ("results.json", "scenario.toml", "scenario.resolved.json")
"""The files the report reads; each must lie inside the run directory."""


def _optional_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def load_run(run_dir: Path) -> RunFiles:
    """Read ``run_dir``.

    Raises:
        ReportError: not a directory, no ``results.json``, a file of
            :data:`READ_FILES` that links outside the run directory, unreadable files,
            or a ``results.json`` that is not one this fedsim reads (a newer schema
            version, or not the shape fedsim writes).
    """
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    if not (run_dir / "results.json").is_file():
        raise ReportError(f"{run_dir}: not a fedsim run directory (no results.json)")
    root = run_dir.resolve()
    for name in READ_FILES:
        if (run_dir / name).exists() and not (run_dir / name).resolve().is_relative_to(root):
            raise ReportError(f"{run_dir}: {name} links to a file outside the run directory")
    try:
        results = read_results(run_dir)
        resolved_text = _optional_text(run_dir / "scenario.resolved.json")
        resolved = json.loads(resolved_text) if resolved_text is not None else None
        scenario_text = _optional_text(run_dir / "scenario.toml")
    except NewerSchemaError as exc:
        raise ReportError(f"{run_dir}: results.json {exc}") from None
    except ResultsFileError as exc:
        raise ReportError(f"{run_dir}: results.json is not a fedsim results file ({exc})") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{run_dir}: cannot read the results: {exc}") from None
    return RunFiles(run_dir, results, scenario_text, resolved)
