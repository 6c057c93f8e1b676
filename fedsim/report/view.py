"""Plain data the page's templates render: table cells and tables (no HTML here)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    """One table cell: its ``text``, a CSS class, and a hover ``title`` (shown around the
    text when given)."""

    text: object
    css: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Table:
    """A table with one header row; ``rows`` of :class:`Cell`."""

    headers: list[str]
    rows: list[list[Cell]]
    css: str | None = None

    @classmethod
    def of(
        cls, headers: Sequence[str], rows: Iterable[Sequence[object]], css: str | None = None
    ) -> Table:
        """A table from plain values (each a cell's text) and ready :class:`Cell` s."""
        return cls(
            list(headers),
            [[c if isinstance(c, Cell) else Cell(c) for c in row] for row in rows],
            css,
        )
