"""Everything that went wrong in a run, with its reason: the run's status, sweep points
that failed, attacks that failed or did not apply, clients whose round failed, optional
metrics that could not be computed."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fedsim.report.html import Html, join, tag
from fedsim.results.table import short_point

RUN_STATUS = {
    "interrupted": "The run was stopped before it finished; this page shows what finished. "
    "Finish it with: fedsim run SCENARIO --resume RUN_DIR",
    "partial": "Some sweep points failed; the others completed.",
    "running": "The run has not finished (or its process was killed); this page shows what "
    "was saved so far.",
}


def _point(trial_points: dict[int, str], index: int) -> str:
    label = trial_points.get(index, "-")
    return f"point {index + 1}" + (f" ({label})" if label != "-" else "")


def problems(results: dict[str, Any]) -> list[Html]:
    """One line per problem (similar ones grouped, with a count and where they happened)."""
    lines: list[Html] = []
    status = results.get("status", "running")
    if status in RUN_STATUS:
        lines.append(join([tag("b", f"run {status}"), f": {RUN_STATUS[status]}"]))
    points = {t["index"]: short_point(t["point"]) for t in results["trials"]}
    for trial in results["trials"]:
        if trial["status"] not in ("complete", "running"):
            lines.append(
                join(
                    [
                        tag("b", f"{_point(points, trial['index'])} {trial['status']}"),
                        f": {trial['error'] or 'no reason recorded'}",
                    ]
                )
            )
    grouped: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    for r in results["records"]:
        if r["status"] != "ok":
            key = (r["attack"], r["position"], r["status"], r["reason"] or "no reason recorded")
            who = "aggregate" if r["client"] is None else f"client {r['client']}"
            grouped[key].append(f"{_point(points, r['trial'])}, round {r['round']}, {who}")
    for (attack, position, status, reason), where in grouped.items():
        lines.append(
            join(
                [
                    tag("b", f"{attack} ({position}) {status}"),
                    f": {reason} — ",
                    tag("span", _places(where), class_="muted"),
                ]
            )
        )
    lines += _client_failures(results, points)
    for trial in results["trials"]:
        info = trial.get("rel_perceptual_l1")
        if info and info.get("status") == "unavailable":
            lines.append(
                join(
                    [
                        tag("b", "relative-perceptual-L1 unavailable"),
                        f" at {_point(points, trial['index'])}: {info.get('reason')}",
                    ]
                )
            )
    return lines


def _client_failures(results: dict[str, Any], points: dict[int, str]) -> list[Html]:
    """Clients whose round failed (error or timeout), grouped by reason."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for trial in results["trials"]:
        for failure in trial.get("client_failures", []):
            kind = failure.get("kind", "error")
            client = failure.get("client")
            who = f", client {client}" if client is not None else ""
            place = f"{_point(points, trial['index'])}, round {failure['round']}{who}"
            grouped[(kind, failure.get("error") or "no reason recorded")].append(place)
    return [
        join(
            [
                tag("b", f"client {'timed out' if kind == 'timeout' else 'failed'}"),
                f": {error} — ",
                tag("span", _places(where), class_="muted"),
            ]
        )
        for (kind, error), where in grouped.items()
    ]


MAX_PLACES = 6


def _places(where: list[str]) -> str:
    """``3×: a; b; c`` (at most :data:`MAX_PLACES` listed)."""
    shown = "; ".join(where[:MAX_PLACES]) + (
        f"; … {len(where) - MAX_PLACES} more" if len(where) > MAX_PLACES else ""
    )
    return f"{len(where)}×: {shown}" if len(where) > 1 else shown


def problems_section(results: dict[str, Any]) -> Html:
    """The problems as a list, or a line saying there were none."""
    lines = problems(results)
    if not lines:
        return tag(
            "p", "None: every sweep point completed and every attack was scored.", class_="fine"
        )
    return tag("ul", join(tag("li", line) for line in lines), class_="problems")
