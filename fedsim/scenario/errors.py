"""Scenario errors: one line naming the file and the key path."""

from __future__ import annotations

import difflib

KeyPath = tuple[str | int, ...]


class ScenarioError(ValueError):
    """An invalid scenario; ``str()`` is one line: ``FILE: KEY.PATH: message``."""

    def __init__(self, source: str, path: KeyPath, message: str) -> None:
        self.source, self.path, self.message = source, path, message
        where = format_path(path)
        super().__init__(f"{source}: {where + ': ' if where else ''}{message}")


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def suggest(key: str, allowed: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``allowed`` to ``key``, else the list."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
