"""A run directory as the report reads it: ``results.json`` and the scenario files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    results: dict[str, Any]
    scenario_text: str | None
    resolved: dict[str, Any] | None

    @property
    def first_scenario(self) -> dict[str, Any]:
        """The resolved scenario of the first sweep point (``{}`` if unknown)."""
        trials = (self.resolved or {}).get("trials") or [{}]
        return trials[0].get("scenario", {})


def _optional_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def load_run(run_dir: Path) -> RunFiles:
    """Read ``run_dir``.

    Raises:
        ReportError: not a directory, no ``results.json``, or unreadable JSON.
    """
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    if not (run_dir / "results.json").is_file():
        raise ReportError(f"{run_dir}: not a fedsim run directory (no results.json)")
    try:
        results = read_results(run_dir)
        resolved_text = _optional_text(run_dir / "scenario.resolved.json")
        resolved = json.loads(resolved_text) if resolved_text is not None else None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{run_dir}: cannot read the results: {exc}") from None
    if not isinstance(results, dict) or not {"trials", "records"} <= results.keys():
        raise ReportError(f"{run_dir}: results.json is not a fedsim results file")
    return RunFiles(run_dir, results, _optional_text(run_dir / "scenario.toml"), resolved)
