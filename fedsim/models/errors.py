"""One-line descriptions of errors raised by user code (models, checkpoints)."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message, or its type's name if it has none."""
    lines = (line.strip() for line in str(exc).splitlines())
    return next((line for line in lines if line), type(exc).__name__)
