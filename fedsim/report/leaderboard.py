"""The report's defence leaderboard: the frontier figure and the ranking at matched
accuracy, for a run whose scenario has ``defence_sets``."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.report.embed import Embedder
from fedsim.report.figures import Figure, plots
from fedsim.report.view import Table
from fedsim.results.leaderboard import (
    MATCHED_DROP,
    POSITIONS,
    UNDEFENDED,
    Best,
    Ranked,
    is_leaderboard,
    leaderboard_entries,
    ranking,
)
from fedsim.results.schema import RunResults

HEADERS = ["rank", "defence", "strength", "test accuracy (seeds)", "ε",
           *(f"best at the {p}: PSNR dB (images)" for p in POSITIONS),
           *(f"SSIM at the {p}" for p in POSITIONS)]  # fmt: skip


@dataclass(frozen=True)
class LeaderboardView:
    """What the section shows: the figures, the accuracy a strength had to reach, the
    ranking table."""

    figures: list[Figure]
    target: float
    drop: float
    table: Table


def _best(best: Best | None, digits: int) -> str:
    return "-" if best is None else f"{best.score.text(digits)} {best.attack}"


def _row(row: Ranked) -> list[object]:
    entry = row.entry
    rank = "ref." if row.defence_set == UNDEFENDED else (row.rank or "-")
    if entry is None:
        return [rank, row.defence_set, "no strength within reach", "-", "-",
                *("-" for _ in POSITIONS), *("-" for _ in POSITIONS)]  # fmt: skip
    accuracy = entry.accuracy.text(3) if entry.accuracy else "-"
    epsilon = "-" if entry.epsilon is None else f"{entry.epsilon:.3g}"
    return [
        rank, row.defence_set, entry.strength or "-", accuracy, epsilon,
        *(_best(entry.best.get(p, {}).get("psnr"), 1) for p in POSITIONS),
        *(_best(entry.best.get(p, {}).get("ssim"), 3) for p in POSITIONS),
    ]  # fmt: skip


def leaderboard(embed: Embedder, results: RunResults) -> LeaderboardView | None:
    """The section's data, or ``None`` when the run compares no defence sets."""
    if not is_leaderboard(results):
        return None
    target, rows = ranking(leaderboard_entries(results))
    if target is None:
        return None
    table = Table.of(HEADERS, [_row(r) for r in rows], "numbers")
    return LeaderboardView(plots(embed, results, ("leaderboard.png",)), target, MATCHED_DROP, table)
