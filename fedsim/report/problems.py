"""Everything that went wrong in a run, with its reason: the run's status, sweep points
that failed, attacks that failed or did not apply, clients whose round failed, optional
metrics that could not be computed."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from fedsim.results.schema import RunResults
from fedsim.results.table import short_point

RUN_STATUS = {
    "interrupted": "The run was stopped before it finished; this page shows what finished. "
    "Finish it with: fedsim run SCENARIO --resume RUN_DIR",
    "partial": "Some sweep points failed; the others completed.",
    "running": "The run has not finished (or its process was killed); this page shows what "
    "was saved so far.",
}


@dataclass(frozen=True)
class Problem:
    """One line of the problems list: what went wrong (``head``, in bold), the rest of the
    sentence (``rest``, from its leading punctuation) and where it happened (``where``,
    muted; ``""`` when it is not about places)."""

    head: str
    rest: str
    where: str = ""


def _point(trial_points: dict[int, str], index: int) -> str:
    label = trial_points.get(index, "-")
    return f"point {index + 1}" + (f" ({label})" if label != "-" else "")


def problems(results: RunResults, refused: list[str]) -> list[Problem]:
    """One line per problem (similar ones grouped, with a count and where they happened);
    ``refused`` lists the images the page did not embed (see :mod:`fedsim.report.embed`)."""
    lines: list[Problem] = []
    status = results.status
    if status in RUN_STATUS:
        lines.append(Problem(f"run {status}", f": {RUN_STATUS[status]}"))
    points = {t.index: short_point(t.point) for t in results.trials}
    for trial in results.trials:
        if trial.status not in ("complete", "running"):
            lines.append(
                Problem(
                    f"{_point(points, trial.index)} {trial.status}",
                    f": {trial.error or 'no reason recorded'}",
                )
            )
    grouped: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    for r in results.records:
        if r.status != "ok":
            key = (r.attack, r.position, r.status, r.reason or "no reason recorded")
            who = "aggregate" if r.client is None else f"client {r.client}"
            grouped[key].append(f"{_point(points, r.trial)}, round {r.round}, {who}")
    for (attack, position, status, reason), where in grouped.items():
        lines.append(Problem(f"{attack} ({position}) {status}", f": {reason}", _places(where)))
    lines += _client_failures(results, points)
    for trial in results.trials:
        info = trial.rel_perceptual_l1
        if info is not None and info.status == "unavailable":
            lines.append(
                Problem(
                    "relative-perceptual-L1 unavailable",
                    f" at {_point(points, trial.index)}: {info.reason}",
                )
            )
    if refused:
        lines.append(Problem("image not embedded", f": {_places(refused)}"))
    return lines


def _client_failures(results: RunResults, points: dict[int, str]) -> list[Problem]:
    """Clients whose round failed (error or timeout), grouped by reason."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for trial in results.trials:
        for failure in trial.client_failures:
            who = f", client {failure.client}" if failure.client is not None else ""
            place = f"{_point(points, trial.index)}, round {failure.round}{who}"
            grouped[(failure.kind, failure.error or "no reason recorded")].append(place)
    return [
        Problem(
            f"client {'timed out' if kind == 'timeout' else 'failed'}", f": {error}", _places(where)
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
